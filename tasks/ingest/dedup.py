"""Exact (url, text) dedup across every file of a run, by a hash-partitioned pass.

Each file's extraction leaves a sorted list of its pair uids (64-bit hashes). The uid
space is cut into buckets; one task per bucket reads that uid range from every file
(parquet row groups prune the rest), and marks each uid seen in more than one file as
a loser everywhere but in the first file of the run's order. Memory per bucket task is
the bucket's share of uids, so the pass scales with the bucket count, not with one set.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcrawl.tasks.core.uri import atomic_write, open_uri

ROW_GROUP = 65536
UID_SPACE = 1 << 64
LOSERS_SCHEMA = pa.schema([("file", pa.uint32()), ("uid", pa.uint64())])


def bucket_count(total_uids: int, rows_per_bucket: int) -> int:
    """Enough buckets that each holds about `rows_per_bucket` uids (at most 4096)."""
    return max(1, min(4096, math.ceil(total_uids / rows_per_bucket)))


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


def find_losers(uid_uris: list[str], bucket: int, buckets: int, out_uri: str) -> dict:
    """Write (file index, uid) of every cross-file duplicate in this bucket, sorted by file.

    The file index is the position in `uid_uris`: the earliest file keeps a pair.
    """
    lo, hi = bucket_bounds(bucket, buckets)
    parts = [read_uid_range(uri, lo, hi) for uri in uid_uris]
    uids = np.concatenate(parts) if parts else np.empty(0, np.uint64)
    files = np.repeat(np.arange(len(parts), dtype=np.uint32), [len(p) for p in parts])
    order = np.lexsort((files, uids))  # by uid, then by file: the first of each run wins
    uids, files = uids[order], files[order]
    repeated = np.empty(len(uids), dtype=bool)
    repeated[:1] = False
    repeated[1:] = uids[1:] == uids[:-1]
    losers_uid, losers_file = uids[repeated], files[repeated]
    by_file = np.argsort(losers_file, kind="stable")
    table = pa.table(
        {"file": pa.array(losers_file[by_file], pa.uint32()), "uid": pa.array(losers_uid[by_file], pa.uint64())},
        schema=LOSERS_SCHEMA,
    )
    with atomic_write(out_uri) as f:
        pq.write_table(table, f, row_group_size=ROW_GROUP)
    return {"bucket": bucket, "uids": int(len(uids)), "duplicates": int(repeated.sum()), "uri": out_uri}


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
