"""Exact (url, text) dedup of a run's new files against the uids already published (the uid store), by a
hash-partitioned pass.

Each file's extraction leaves a sorted list of its pair uids (64-bit hashes). The uid space is cut into the
store's partitions; one task per partition reads the store's partition and that uid range of every new file
(parquet row groups prune the rest), marks a new file's uid a loser when the store holds it under another file or
an earlier new file of the run's order has it, and writes the partition's next contents (the rows that stand
plus the new winners). Memory per task is one partition's share of uids, so the pass scales with the partition
count, not with the store.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.uri import atomic_write, open_uri
from clipcrawl.tasks.ingest import uidstore

ROW_GROUP = 65536
UID_SPACE = 1 << 64
LOSERS_SCHEMA = pa.schema([("file", pa.uint32()), ("uid", pa.uint64())])


def bucket_bounds(bucket: int, buckets: int) -> tuple[int, int | None]:
    """[lo, hi) of the uid range of `bucket`; hi is None for the last bucket."""
    width = UID_SPACE // buckets
    lo = bucket * width
    return lo, (None if bucket == buckets - 1 else lo + width)


def write_uids(uri: str, uids: np.ndarray) -> None:
    """Publish the sorted unique uids of one file."""
    table = pa.table({"uid": pa.array(np.unique(uids.astype(np.uint64)), pa.uint64())})
    with atomic_write(uri) as f:
        pq.write_table(table, f, row_group_size=ROW_GROUP)


def read_uid_range(uri: str, lo: int, hi: int | None) -> np.ndarray:
    """The uids of one file's sidecar within [lo, hi)."""
    uid = pc.field("uid")
    filters = uid >= pa.scalar(lo, pa.uint64())
    if hi is not None:
        filters &= uid < pa.scalar(hi, pa.uint64())
    with open_uri(uri) as f:
        table = pq.read_table(f, filters=filters)
    return table.column("uid").to_numpy()


def in_range(uids: np.ndarray, lo: int, hi: int | None) -> np.ndarray:
    """The part of sorted `uids` in [lo, hi) (a view)."""
    start = np.searchsorted(uids, np.uint64(lo))
    return uids[start : len(uids) if hi is None else np.searchsorted(uids, np.uint64(hi))]


def merge_range(
    stored_uids: np.ndarray,
    stored_files: np.ndarray,
    live: np.ndarray,
    new_uids: list[np.ndarray],
    new_keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One uid range of the dedup of new files against the store.

    stored_uids/stored_files: the store's rows of the range, sorted by uid; only those whose file is in `live`
    (committed, and not ingested again now) stand. new_uids[i]: the range's uids of the run's i-th new file,
    whose key is new_keys[i]. A new file's uid loses when a standing row holds it or an earlier new file has it.

    Returns (loser file indexes, loser uids) sorted by file, and the range's next rows (uids, files), sorted.
    """
    standing = np.isin(stored_files, live)
    held_uids, held_files = stored_uids[standing], stored_files[standing]
    uids = np.concatenate(new_uids) if new_uids else np.empty(0, np.uint64)
    index = np.repeat(np.arange(len(new_uids), dtype=np.uint32), [len(u) for u in new_uids])
    order = np.lexsort((index, uids))  # by uid, then by run order: the first new file of each uid comes first
    uids, index = uids[order], index[order]
    first = np.ones(len(uids), dtype=bool)
    first[1:] = uids[1:] != uids[:-1]
    at = np.searchsorted(held_uids, uids)
    held = np.zeros(len(uids), dtype=bool)
    if len(held_uids):
        held = held_uids[np.minimum(at, len(held_uids) - 1)] == uids
    wins = first & ~held
    by_file = np.argsort(index[~wins], kind="stable")
    losers_file, losers_uid = index[~wins][by_file], uids[~wins][by_file]
    next_uids = np.concatenate([held_uids, uids[wins]])
    next_files = np.concatenate([held_files, new_keys[index[wins]].astype(np.uint64)])
    merged = np.argsort(next_uids, kind="stable")
    return losers_file, losers_uid, next_uids[merged], next_files[merged]


def task_ranges(partitions: int, new_uids: int, rows_per_task: int) -> list[tuple[int, int]]:
    """The partitions [first, last) of each dedup task: enough tasks that each reads about `rows_per_task` of the
    new uids (every task reads its uid range of every new file, so fewer tasks read less), at most one per
    partition."""
    tasks = max(1, min(partitions, math.ceil(new_uids / rows_per_task)))
    edges = [partitions * t // tasks for t in range(tasks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def dedup_partitions(store: str, first: int, last: int, losers_uri: str) -> dict:
    """Dedup the run's new files (uidstore.write_new_files) against partitions [first, last) of the store: write
    the new files' losers of that uid range to `losers_uri` and each partition's next contents to the store's
    _next/. Reads the range of each new file's uid list once, and the store one partition at a time."""
    partitions = uidstore.partition_count(store)
    keys, uid_uris = uidstore.read_new_files(store)
    live = np.setdiff1d(uidstore.read_files(store).column("key").to_numpy(), keys)
    new_uids = [
        read_uid_range(uri, bucket_bounds(first, partitions)[0], bucket_bounds(last - 1, partitions)[1])
        for uri in uid_uris
    ]
    losers_files, losers_uids, counts = [], [], {"stored": 0, "new": 0, "rows": 0}
    for p in range(first, last):
        mine = [in_range(u, *bucket_bounds(p, partitions)) for u in new_uids]
        stored_uids, stored_files = uidstore.read_partition(layout.store_partition(store, p))
        loser_file, loser_uid, next_uids, next_files = merge_range(stored_uids, stored_files, live, mine, keys)
        uidstore.write_partition(layout.store_next_partition(store, p), next_uids, next_files)
        losers_files.append(loser_file)
        losers_uids.append(loser_uid)
        counts["stored"] += len(stored_uids)
        counts["new"] += sum(len(u) for u in mine)
        counts["rows"] += len(next_uids)
    loser_file, loser_uid = np.concatenate(losers_files), np.concatenate(losers_uids)
    by_file = np.argsort(loser_file, kind="stable")
    table = pa.table(
        {"file": pa.array(loser_file[by_file], pa.uint32()), "uid": pa.array(loser_uid[by_file], pa.uint64())},
        schema=LOSERS_SCHEMA,
    )
    with atomic_write(losers_uri) as f:
        pq.write_table(table, f, row_group_size=ROW_GROUP)
    return {"partitions": [first, last], "duplicates": int(len(loser_uid)), "uri": losers_uri} | counts


def losers_of(loser_uris: list[str], file_index: int) -> pa.Array:
    """The uids that file `file_index` must drop, from every bucket's loser list."""
    chunks = []
    for uri in loser_uris:
        with open_uri(uri) as f:
            chunks.append(
                pq.read_table(f, filters=pc.field("file") == pa.scalar(file_index, pa.uint32())).column("uid")
            )
    if not chunks:
        return pa.array([], pa.uint64())
    return pa.chunked_array(chunks, pa.uint64()).combine_chunks()


def drop_losers(batch: pa.RecordBatch, losers: pa.Array) -> pa.RecordBatch:
    """The rows of `batch` whose uid is not among `losers`."""
    if len(losers) == 0:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch.column("uid"), value_set=losers)))
