"""The caption's column name, and the one place that knows its old one.

Every output calls the caption `caption`, as img2dataset and clip-retrieval do: pairs/, the shard parquet and
{key}.json, embeddings/metadata, index/ids.parquet, search results and the report. A shard's tar holds it as
{key}.txt, and the LAION-column dataset/ as TEXT. Outputs of earlier clipcrawl versions called it `text`
(LEGACY_CAPTION); readers take their tables and records through these functions, so those stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

CAPTION = "caption"
LEGACY_CAPTION = "text"  # pairs/, shards, {key}.json, metadata and ids.parquet written by earlier versions

Tabular = TypeVar("Tabular", pa.Table, pa.RecordBatch)


def caption_column(names: Iterable[str]) -> str | None:
    """The caption's column among `names`: caption, else the old name text; None when it has neither."""
    names = set(names)
    return next((c for c in (CAPTION, LEGACY_CAPTION) if c in names), None)


def file_columns(names: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The columns to read from a file with columns `names` for `wanted`: caption read under the name the file
    has it by (text in older outputs; left as caption, so the read fails naming it, when it has neither)."""
    found = caption_column(names) or CAPTION
    return [found if c == CAPTION else c for c in wanted]


def with_caption(table: Tabular) -> Tabular:
    """`table` (a Table or a RecordBatch) with its caption column named caption: an older output's text
    renamed; as it is otherwise (a table with caption, or with neither)."""
    names = table.schema.names
    if caption_column(names) != LEGACY_CAPTION:
        return table
    return table.rename_columns([CAPTION if c == LEGACY_CAPTION else c for c in names])


def read_columns(parquet: pq.ParquetFile, columns: Iterable[str]) -> pa.Table:
    """The `columns` of a parquet file, its caption under caption (read as text from an older output)."""
    return with_caption(parquet.read(columns=file_columns(parquet.schema_arrow.names, columns)))
