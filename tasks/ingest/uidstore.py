"""The uid store: which pair uids are already published, and by which file, for incremental and cross-crawl dedup.

A folder (local or any fsspec URI) holding
  store.json              {"version": 1, "partitions": P}, fixed when the store is created
  part-{p:05d}.parquet    uid (uint64, sorted, unique), file (uint64: the key of the published file that won it)
  files.parquet           the committed files: key, pairs (their pairs folder as pairs_name names it), name,
                          uri, rows, digest
Partition p holds the uids of dedup.bucket_bounds(p, P): uids are hashes, so the partitions are even, and a
dedup task reads one partition and the same uid range of the new files' uid lists: its memory is one
partition's share, whatever the store holds.

While a run dedups, `_next/` beside them holds each partition's next contents and the run's new files; a run
commits them (part by part, each atomically) only once the new files are published, then files.parquet.
A store row names its file, so a row whose file is not committed (a run stopped between the two commits) or is
being ingested again is dropped before a run merges: the next run finds the same winners. One run at a time
writes a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import atomic_write, exists, filesystem, is_local, open_uri, write_json

VERSION = 1
ROW_GROUP = 65536
PARTITION_SCHEMA = pa.schema([("uid", pa.uint64()), ("file", pa.uint64())])
FILES_SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("pairs", pa.string()),
        ("name", pa.string()),
        ("uri", pa.string()),
        ("rows", pa.int64()),
        ("digest", pa.string()),
    ]
)
NEW_SCHEMA = pa.schema([("key", pa.uint64()), ("uids", pa.string())])


class StoreError(InputError):
    """A uid store that this version cannot use (another format version, an unreadable store.json)."""


# ---- keys


def absolute(uri: str) -> str:
    """A folder's URI with local paths made absolute."""
    if is_local(uri):
        return os.path.abspath(uri.removeprefix("file://"))
    return uri.rstrip("/")


def path_of(uri: str) -> str:
    """A folder's path without its scheme (s3:// and s3a:// name the same folder), local paths made absolute."""
    return absolute(uri) if is_local(uri) else absolute(uri).split("://", 1)[1]


def pairs_name(store: str, pairs: str) -> str:
    """How the store names a pairs folder: its path relative to the store's parent folder when it lies under it
    ("" for the crawl's own store pairs/_uids, "<crawl>/pairs" for a store OUT/_uids that crawls share), so the
    keys hold when OUT moves or is reached by another scheme or working directory. A pairs folder outside the
    store's parent is named by its absolute URI: such a layout must not move."""
    parent, folder = posixpath.dirname(path_of(store)), path_of(pairs)
    if folder == parent:
        return ""
    if folder.startswith(parent.rstrip("/") + "/"):
        return folder[len(parent.rstrip("/")) + 1 :]
    return absolute(pairs)


def file_key(folder: str, name: str) -> int:
    """The 64-bit key of published file <name> of the pairs folder that the store names `folder` (pairs_name):
    unique across the crawls that share a store."""
    path = posixpath.join(folder, name)
    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big")


def settings_digest(settings) -> str:
    """Names the extract settings a file was published with (a file is ingested again when they change);
    batch_rows, a row-group size, leaves the pairs as they are."""
    blob = json.dumps(settings.model_dump(mode="json", exclude={"batch_rows"}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- the store


def open_store(store: str, partitions: int) -> int:
    """The store's partition count, creating the store with `partitions` when there is none yet."""
    if not exists(layout.store_config(store)):
        write_json(layout.store_config(store), {"version": VERSION, "partitions": partitions})
    return partition_count(store)


def partition_count(store: str) -> int:
    """P, from store.json."""
    uri = layout.store_config(store)
    try:
        with open_uri(uri, "r") as f:
            config = json.load(f)
        version, count = config["version"], int(config["partitions"])
    except FileNotFoundError as exc:
        raise StoreError(f"{uri}: no uid store at {store}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{uri}: not a uid store's store.json ({exc})") from exc
    if version != VERSION:
        raise StoreError(f"{uri}: uid store format version {version}, this clipcrawl reads version {VERSION}")
    return count


def read_files(store: str) -> pa.Table:
    """The committed files (empty when none is)."""
    uri = layout.store_files(store)
    if not exists(uri):
        return FILES_SCHEMA.empty_table()
    with open_uri(uri) as f:
        return pq.read_table(f).cast(FILES_SCHEMA)


def write_files(store: str, table: pa.Table) -> None:
    with atomic_write(layout.store_files(store)) as f:
        pq.write_table(table.cast(FILES_SCHEMA), f, compression="zstd")


def read_partition(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(uids, file keys) of a partition file, sorted by uid; none when it does not exist. Rows blanked by a
    takedown (null uid) are left out."""
    if not exists(uri):
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    with open_uri(uri) as f:
        table = pq.read_table(f).filter(pc.is_valid(pc.field("uid")))
    return table.column("uid").to_numpy(), table.column("file").to_numpy()


def write_partition(uri: str, uids: np.ndarray, files: np.ndarray) -> None:
    table = pa.table({"uid": pa.array(uids, pa.uint64()), "file": pa.array(files, pa.uint64())}, PARTITION_SCHEMA)
    with atomic_write(uri) as f:
        pq.write_table(table, f, row_group_size=ROW_GROUP, compression="zstd")


def write_new_files(store: str, keys: list[int], uid_uris: list[str]) -> None:
    """The run's new files, in run order, for the partition tasks."""
    table = pa.table({"key": pa.array(keys, pa.uint64()), "uids": pa.array(uid_uris, pa.string())}, NEW_SCHEMA)
    with atomic_write(layout.store_new_files(store)) as f:
        pq.write_table(table, f)


def read_new_files(store: str) -> tuple[np.ndarray, list[str]]:
    with open_uri(layout.store_new_files(store)) as f:
        table = pq.read_table(f)
    return table.column("key").to_numpy(), table.column("uids").to_pylist()


def commit_partition(store: str, p: int) -> bool:
    """Replace partition p by its next contents (atomically); False when there are none (already committed)."""
    src, dst = layout.store_next_partition(store, p), layout.store_partition(store, p)
    fs, src_path = filesystem(src)
    if not fs.exists(src_path):
        return False
    if is_local(store):
        os.replace(src_path, filesystem(dst)[1])
        return True
    with open_uri(src) as f, atomic_write(dst) as out:  # an object store commits the object on upload
        out.write(f.read())
    fs.rm(src_path)
    return True


def remove(uris: list[str]) -> None:
    """Delete files and folders (in one request per filesystem: an object store deletes in batches)."""
    by_fs: dict[int, tuple] = {}
    for uri in uris:
        fs, path = filesystem(uri)
        by_fs.setdefault(id(fs), (fs, []))[1].append(path)
    for fs, paths in by_fs.values():
        fs.rm(paths, recursive=True)
