"""The download stage's inputs, as img2dataset reads them: txt (one URL a line), csv, tsv (.gz), json (an array of
objects), jsonl and parquet files, local or remote, one file or a folder of them.

Parquet files are sliced where they are. The others are converted once, batch by batch, into parquet under
OUT/_inputs/ (a file is never read whole, json arrays excepted: see JSON_MAX_BYTES), so every input reaches the
shard planner in one shape. Columns keep their names; `input_columns` says which are read and what they become.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import re
from collections.abc import Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clipcrawl.tasks.core.caption import CAPTION, LEGACY_CAPTION, caption_column
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import atomic_write, filesystem, join, listdir, name_of, open_uri
from clipcrawl.tasks.download.sinks import IMAGE_TYPES
from clipcrawl.tasks.ingest.stage import PAIRS_SCHEMA

FORMATS = ("parquet", "txt", "csv", "csv.gz", "tsv", "tsv.gz", "json", "jsonl")  # a folder's auto: parquet first
BLOCK_BYTES = 4 << 20  # csv/tsv/txt bytes per batch
JSONL_LINES = 50_000  # jsonl/json objects per batch
JSON_MAX_BYTES = 256 << 20  # a json array is parsed whole (no streaming parser in the lock): larger ones -> jsonl
# Columns every shard writes itself: an input column may not be carried under these names (img2dataset's rule).
RESERVED = frozenset(
    {"key", "uid", "url", CAPTION, LEGACY_CAPTION, "status", "error_message", "http_status", "width", "height"}
    | {"original_width", "original_height", "sha256", "bytes", "final_url", "attempts"}
    | IMAGE_TYPES.keys()  # the parquet output format's image column (jpg, ...)
)


def format_of(uri: str) -> str | None:
    """The input format a file's suffix names (the longest that matches), None for another suffix."""
    name = name_of(uri).lower()
    return next((f for f in sorted(FORMATS, key=len, reverse=True) if name.endswith("." + f)), None)


def input_files(source: str, input_format: str = "auto") -> list[tuple[str, str]]:
    """(file, format) of `source`: the file itself, or the files directly in the folder with the format's suffix
    (auto: its *.parquet if any, else the one other format it holds; names starting with _ or . are skipped)."""
    wanted = FORMATS if input_format == "auto" else (input_format,)
    fs, path = filesystem(source)
    if format_of(source) is not None:
        if not fs.exists(path):
            raise InputError(f"no such input: {source}")
        return [(source, format_of(source) if input_format == "auto" else input_format)]
    if input_format != "auto" and not fs.isdir(path) and fs.exists(path):  # a file without the suffix
        return [(source, input_format)]
    found: dict[str, list[str]] = {}
    names = [f for f in listdir(source) if not name_of(f).startswith(("_", "."))]  # one listing for every format
    for fmt in wanted:
        files = [f for f in names if format_of(f) == fmt]
        if files:
            found[fmt] = files
        if fmt == "parquet" and files:
            break
    if not found:
        looked = ", ".join(f"*.{f}" for f in wanted)
        raise InputError(f"no pairs in {source}: looked for {looked} (a run folder's pairs are in {source}/pairs/)")
    if len(found) > 1:
        raise InputError(f"{source} holds {' and '.join(found)} files: choose one with --input-format")
    ((fmt, files),) = found.items()
    return [(f, fmt) for f in files]


def input_columns(uri: str, names: list[str], settings) -> dict[str, str]:
    """{input column: shard column}, in the file's order, for a file with columns `names`: its URL column -> url,
    its caption column -> caption, clipcrawl's pair columns it has (uid, page_url, ...) and save_additional_columns
    as they are.

    The URL/TEXT rule: with url_col and caption_col left at their defaults (url, caption), a file without url but
    with URL (LAION's metadata, clipcrawl's dataset/) is read by URL and TEXT; a file without caption, by text
    (the pairs of earlier clipcrawl versions). A column it lacks raises InputError naming the file and the column."""
    url, caption = settings.url_col, settings.caption_col
    if url == "url" and "url" not in names and "URL" in names:
        url, caption = "URL", ("TEXT" if caption == CAPTION else caption)
    if caption == CAPTION:
        caption = caption_column(names) or CAPTION
    carried = list(dict.fromkeys(settings.save_additional_columns))
    reserved = sorted(RESERVED & set(carried))
    if reserved:
        raise InputError(f"save_additional_columns cannot carry {', '.join(reserved)}: shards write these themselves")
    wanted = [url, *([caption] if caption is not None else []), *carried]
    missing = [c for c in wanted if c not in names]
    if missing:
        hint = "; --caption-col none reads no captions" if caption in missing else ""
        raise InputError(f"{uri}: missing column {', '.join(missing)} (has {', '.join(names) or 'no columns'}{hint})")
    mapping = {url: "url"} | ({caption: CAPTION} if caption is not None else {})
    for name in [*(n for n in PAIRS_SCHEMA.names if n in names and n != CAPTION), *carried]:  # caption: caption_col
        mapping.setdefault(name, name)
    return {n: mapping[n] for n in names if n in mapping}  # in the file's order


def url_column(mapping: dict[str, str]) -> str:
    """The input column input_columns reads as url."""
    return next(k for k, v in mapping.items() if v == "url")


def has_url(urls: pa.Array | pa.ChunkedArray) -> bool:
    urls = pc.drop_null(urls.cast(pa.string()))
    return len(urls) > 0 and pc.max(pc.utf8_length(urls)).as_py() > 0


def check_urls(uri: str, pf: pq.ParquetFile, column: str) -> None:
    """InputError when a file with rows has not one URL in `column` (read batch by batch, up to the first)."""
    if pf.metadata.num_rows == 0:
        return
    if not any(has_url(b.column(0)) for b in pf.iter_batches(batch_size=65_536, columns=[column])):
        raise InputError(f"{uri}: column {column} is empty ({pf.metadata.num_rows} rows, not one URL)")


def staged_file(staging: str, uri: str) -> str:
    """Where the parquet of a converted input goes: a digest of its URI, then its name."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return join(staging, f"{digest}-{re.sub(r'[^A-Za-z0-9._-]', '_', name_of(uri))}.parquet")


def stage_inputs(source: str, settings, staging: str | None) -> list[str]:
    """The parquet files holding `source`'s rows, in order: parquet inputs as they are, the others converted into
    `staging` (each written atomically, so an interrupted conversion leaves nothing half-written)."""
    files = []
    for uri, fmt in input_files(source, settings.input_format):
        if fmt == "parquet":
            files.append(uri)
            continue
        if staging is None:
            raise InputError(f"{uri}: a {fmt} input needs a folder to convert it into (the run's OUT)")
        files.append(convert(uri, fmt, staged_file(staging, uri), settings))
    return files


def convert(uri: str, fmt: str, dest: str, settings) -> str:
    """Write `uri` (format `fmt`) as parquet to `dest` batch by batch; returns dest."""
    batches = _batches(uri, fmt, settings)
    rows, url = 0, None
    with atomic_write(dest) as f:
        writer = None
        try:
            for table in batches:
                if writer is None:  # the columns, checked on the input before its rows are read on
                    url = url_column(input_columns(uri, table.column_names, settings))
                    writer = pq.ParquetWriter(f, table.schema, compression="zstd")
                writer.write_table(table)
                rows += table.num_rows
                url = url if url is None or not has_url(table[url]) else None  # None: a URL was seen
            if writer is None:  # a file with a header and no rows
                raise InputError(f"{uri}: holds no rows")
            if rows and url is not None:
                raise InputError(f"{uri}: column {url} is empty ({rows} rows, not one URL)")
        finally:
            if writer is not None:
                writer.close()
    return dest


@contextlib.contextmanager
def _open(uri: str, fmt: str) -> Iterator:
    with open_uri(uri) as raw:
        if fmt.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw) as f:
                yield f
        else:
            yield raw


def _batches(uri: str, fmt: str, settings) -> Iterator[pa.Table]:
    if fmt in ("json", "jsonl"):
        yield from _json_batches(uri, fmt)
    else:
        yield from _csv_batches(uri, fmt, settings)


def _csv_batches(uri: str, fmt: str, settings) -> Iterator[pa.Table]:
    """csv/tsv (their columns read as text) and txt (one URL a line: column url_col, no caption) in blocks."""
    if fmt == "txt":  # no delimiter, no quoting: a line is a URL, commas included
        parse, names = pacsv.ParseOptions(delimiter="\x1f", quote_char=False), [settings.url_col]
    else:
        parse, names = pacsv.ParseOptions(delimiter="\t" if fmt.startswith("tsv") else ","), None
    try:
        if names is None:  # the header, from the first block: every column is then read as text
            with _open(uri, fmt) as f:
                names = pacsv.open_csv(f, parse_options=parse).schema.names
            options = pacsv.ReadOptions(block_size=BLOCK_BYTES)
        else:
            options = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=names)
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True)
        with _open(uri, fmt) as f:
            for batch in pacsv.open_csv(f, read_options=options, parse_options=parse, convert_options=convert):
                table = pa.Table.from_batches([batch])
                if fmt == "txt" and settings.caption_col not in (None, settings.url_col):  # captions: none
                    table = table.append_column(settings.caption_col, pa.nulls(table.num_rows, pa.string()))
                yield table
    except pa.ArrowInvalid as exc:
        why = "empty file" if "Empty CSV file" in str(exc) else str(exc).splitlines()[0]
        raise InputError(f"{uri}: cannot read it as {fmt}: {why}") from None


def _json_batches(uri: str, fmt: str) -> Iterator[pa.Table]:
    """jsonl (one object a line) or json (an array of objects) in batches of JSONL_LINES objects; the first batch's
    columns and types are the file's (a column of nulls is text)."""
    if fmt == "json":
        fs, path = filesystem(uri)
        size = fs.size(path)
        if size is not None and size > JSON_MAX_BYTES:
            raise InputError(
                f"{uri}: a json array over {JSON_MAX_BYTES >> 20} MiB: give it as jsonl (one object a line)"
            )
        with open_uri(uri) as f:
            try:
                objects = orjson.loads(f.read())
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{uri}: not json: {exc}") from None
        if not isinstance(objects, list):
            raise InputError(f"{uri}: json input must be an array of objects, got a {type(objects).__name__}")
        numbered = enumerate(objects, 1)
    else:
        numbered = _jsonl_objects(uri)
    schema = None
    while chunk := list(itertools.islice(numbered, JSONL_LINES)):
        for number, obj in chunk:
            if not isinstance(obj, dict):
                raise InputError(f"{uri}: item {number} is a {type(obj).__name__}, not an object")
        rows = [obj for _, obj in chunk]
        try:
            if schema is None:
                schema = pa.Table.from_pylist(rows).schema
                schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema])
            yield pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"{uri}: items {chunk[0][0]}-{chunk[-1][0]}: {exc}") from None


def _jsonl_objects(uri: str) -> Iterator[tuple[int, object]]:
    with open_uri(uri) as raw, gzip.GzipFile(fileobj=raw) if uri.endswith(".gz") else contextlib.nullcontext(raw) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"{uri}: line {number} is not json: {exc}") from None
