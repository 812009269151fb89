"""index/ids.parquet: index id -> sample, readable one row group at a time.

Row i describes the vector with id i in both index/image.index and index/text.index.
Row groups hold a fixed IDS_ROW_GROUP rows, so looking up a few ids reads only
the row groups that hold them, whatever the size of the index.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcrawl.tasks.core.caption import file_columns, with_caption
from clipcrawl.tasks.core.uri import atomic_write, open_uri

IDS_ROW_GROUP = 65_536
IDS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the sample's key in its webdataset shard
        ("shard", pa.string()),  # shard stem: images/{shard}.tar, embeddings/*_{shard}.npy
        ("row", pa.int64()),  # row in the shard's embeddings and metadata
        ("url", pa.string()),
        ("caption", pa.string()),
        ("similarity", pa.float32()),  # image-text cosine similarity
        ("duplicate_group", pa.int64()),  # id of the first sample of its near-duplicate group (itself if unique)
    ]
)


def write_ids(uri: str, tables: Iterable[pa.Table]) -> int:
    """Write the id table from tables in id order (atomically); returns the row count."""
    rows = 0
    pending: list[pa.Table] = []
    with atomic_write(uri) as f, pq.ParquetWriter(f, IDS_SCHEMA, compression="zstd") as writer:
        buffered = 0
        for table in tables:
            pending.append(table.select(IDS_SCHEMA.names).cast(IDS_SCHEMA))
            buffered += len(table)
            while buffered >= IDS_ROW_GROUP:
                merged = pa.concat_tables(pending).combine_chunks()
                writer.write_table(merged.slice(0, IDS_ROW_GROUP), row_group_size=IDS_ROW_GROUP)
                pending, buffered = [merged.slice(IDS_ROW_GROUP)], buffered - IDS_ROW_GROUP
                rows += IDS_ROW_GROUP
        if buffered:
            writer.write_table(pa.concat_tables(pending), row_group_size=IDS_ROW_GROUP)
            rows += buffered
    return rows


class IdTable:
    """Random access to index/ids.parquet by id, reading only the row groups needed (the caption under caption,
    also in an ids.parquet of an earlier version)."""

    def __init__(self, uri: str):
        self._file = pq.ParquetFile(open_uri(uri))
        self.count = self._file.metadata.num_rows
        self._groups: dict[int, pa.Table] = {}

    def _group(self, g: int) -> pa.Table:
        if g not in self._groups:
            if len(self._groups) >= 64:  # bounded cache: a long-running server reads the whole table otherwise
                self._groups.pop(next(iter(self._groups)))
            self._groups[g] = with_caption(self._file.read_row_group(g))
        return self._groups[g]

    def lookup(self, ids: Iterable[int]) -> list[dict]:
        """Rows for `ids` (each 0 <= id < count), in the order given, each with its "id"."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.count:
                raise IndexError(f"index id {i} out of range (the index holds {self.count} vectors)")
            row = self._group(i // IDS_ROW_GROUP).slice(i % IDS_ROW_GROUP, 1).to_pylist()[0]
            out.append({"id": i, **row})
        return out

    def column(self, name: str) -> np.ndarray:
        """One column of every row, in id order (reads that column only)."""
        (column,) = file_columns(self._file.schema_arrow.names, [name])
        return self._file.read(columns=[column])[column].to_numpy(zero_copy_only=False)

    def column_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """One column of the ids start..stop-1, reading only the row groups that hold them."""
        if not 0 <= start <= stop <= self.count:
            raise IndexError(f"ids {start}..{stop} out of range (the index holds {self.count} vectors)")
        if start == stop:
            return pa.array([], IDS_SCHEMA.field(name).type).to_numpy(zero_copy_only=False)
        first, last = start // IDS_ROW_GROUP, (stop - 1) // IDS_ROW_GROUP
        (column,) = file_columns(self._file.schema_arrow.names, [name])
        table = self._file.read_row_groups(range(first, last + 1), columns=[column])
        offset = start - first * IDS_ROW_GROUP
        return table[column].slice(offset, stop - start).to_numpy(zero_copy_only=False)

    def tables(self) -> Iterable[pa.Table]:
        """The whole table, a row group at a time."""
        for g in range(self._file.num_row_groups):
            yield with_caption(self._file.read_row_group(g))
