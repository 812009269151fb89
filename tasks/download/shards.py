"""Pairs parquet files -> shards of `shard_size` samples, and the writer of one shard's outputs.

A shard's outputs follow img2dataset's layout, so trainers read them unchanged:
OUT/images/{shard:05d}.tar (webdataset: {key}.jpg, {key}.txt, {key}.json per success; output formats files
and parquet: tasks/download/sinks.py), {shard:05d}.parquet (one row per sample, failures included) and
{shard:05d}_stats.json, the completion marker, published last.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from clipcrawl.tasks.core.caption import CAPTION
from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.layout import (
    SHARD_SUFFIXES,
    images_dir,
    pairs_dir,
    shard_in_format,
    shard_name,
    shard_parquet,
    shard_stats,
)
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.core.uri import filesystem, listdir, open_uri, write_json
from clipcrawl.tasks.download.images import ImageResult
from clipcrawl.tasks.download.inputs import check_urls, input_columns, stage_inputs, url_column
from clipcrawl.tasks.download.sinks import IMAGE_TYPES, open_sink
from clipcrawl.tasks.ingest.stage import PAIRS_SCHEMA

# The columns of images/{shard}.parquet every shard has, whatever its rows; the pairs' other
# columns (page_url, source, language, ...) follow as passthrough.
IMAGES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.uint64()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("http_status", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
    ]
)
PASSTHROUGH_TYPES = {f.name: f.type for f in PAIRS_SCHEMA if f.name not in IMAGES_SCHEMA.names}
# Optional columns the download task may add: typed here so that a shard where they are all null
# has the same schema as the others. Any other extra column's type is inferred (null -> string).
OPTIONAL_TYPES = {"final_url": pa.string(), "attempts": pa.int32()}
T = TypeVar("T")
_IMAGE_FIELDS = ("status", "error_message", "width", "height", "original_width", "original_height", "sha256")


# img2dataset's stats split the failures in two: its resizer's (the image does not decode or pass its checks)
# and the download's (everything else). Its aggregation scripts read these keys of every _stats.json.
RESIZE_FAILURES = frozenset(
    {
        DownloadStatus.DECODE_ERROR,
        DownloadStatus.NOT_AN_IMAGE,
        DownloadStatus.TOO_SMALL_PIXELS,
        DownloadStatus.TOO_MANY_PIXELS,
        DownloadStatus.BAD_ASPECT_RATIO,
    }
)


def img2dataset_counts(status: dict[str, int]) -> dict:
    """img2dataset's failed_to_download, failed_to_resize and status_dict, from samples per status. Its status_dict
    counts error messages; ours counts the closed status vocabulary ("success" included), which sums the same."""
    successes = status.get(DownloadStatus.SUCCESS, 0)
    resize = sum(n for name, n in status.items() if name in RESIZE_FAILURES)
    return {
        "failed_to_download": sum(status.values()) - successes - resize,
        "failed_to_resize": resize,
        "status_dict": dict(status),
    }


@dataclass(frozen=True)
class ShardSpec:
    """One shard's rows: (pairs parquet URI, row_start, row_end) slices, in order."""

    shard: int
    slices: tuple[tuple[str, int, int], ...]

    @property
    def num_rows(self) -> int:
        return sum(end - start for _, start, end in self.slices)


def pairs_files(pairs: str) -> list[str]:
    """The parquet files to download from: `pairs` itself (a .parquet) or those directly in the folder `pairs`."""
    files = [pairs] if pairs.endswith(".parquet") else listdir(pairs, ".parquet")
    if not files:
        raise InputError(f"no pairs in {pairs}: looked for *.parquet (a run folder's pairs are in {pairs_dir(pairs)}/)")
    return files


def plan_download(
    pairs: str, shard_size: int, settings: DownloadSettings | None = None, staging: str | None = None
) -> tuple[list[str], list[ShardSpec]]:
    """The input files of `pairs` (any of img2dataset's formats, tasks/download/inputs.py; those not parquet are
    converted into `staging`) and their shards; InputError when they hold no pair at all."""
    settings = settings or DownloadSettings()
    files = stage_inputs(pairs, settings, staging)
    specs = plan_shards(files, shard_size, settings)
    if not specs:
        raise InputError(f"no pairs in {pairs}: its {len(files)} file(s) hold no rows")
    return files, specs


def plan_shards(pairs_uris: list[str], shard_size: int, settings: DownloadSettings | None = None) -> list[ShardSpec]:
    """Cut the rows of `pairs_uris` (file order, then row order) into the fewest shards of at most
    `shard_size`, balanced: their sizes differ by one at most, so no worker is left with a small last
    shard while the others idle (12,000 rows at 10,000 make two shards of 6,000, not 10,000 and 2,000).

    Reads the parquet footers, and each file's URL column up to its first URL; empty files are skipped. A file
    without the columns `settings` name (inputs.input_columns) or without a single URL raises InputError, before
    any shard is downloaded.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    settings = settings or DownloadSettings()
    counts = []
    for uri in pairs_uris:
        with open_uri(uri) as f:
            pf = pq.ParquetFile(f)
            columns = input_columns(uri, pf.schema_arrow.names, settings)
            check_urls(uri, pf, url_column(columns))
        counts.append((uri, pf.metadata.num_rows))
    total = sum(n for _, n in counts)
    shards = -(-total // shard_size)
    sizes = [total // shards + (i < total % shards) for i in range(shards)] if shards else []
    specs: list[ShardSpec] = []
    current: list[tuple[str, int, int]] = []
    filled = 0
    for uri, num_rows in counts:
        start = 0
        while start < num_rows:
            take = min(sizes[len(specs)] - filled, num_rows - start)
            current.append((uri, start, start + take))
            filled += take
            start += take
            if filled == sizes[len(specs)]:
                specs.append(ShardSpec(len(specs), tuple(current)))
                current, filled = [], 0
    return specs


def read_shard_rows(
    spec: ShardSpec, columns: list[str] | None = None, settings: DownloadSettings | None = None
) -> pa.Table:
    """The rows of one shard, reading only the row groups that hold them and only the input columns `settings`
    name (inputs.input_columns), under the shard's names (url, caption, ...); `columns` picks among those."""
    settings = settings or DownloadSettings()
    tables = []
    for uri, start, end in spec.slices:
        with open_uri(uri) as f:
            pf = pq.ParquetFile(f)
            mapping = input_columns(uri, pf.schema_arrow.names, settings)
            if columns is not None:
                mapping = {k: v for k, v in mapping.items() if v in columns}
            groups, first, offset = [], None, 0
            for i in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if offset < end and offset + n > start:
                    groups.append(i)
                    first = offset if first is None else first
                offset += n
            if offset < end:
                raise ValueError(f"{uri} has {offset} rows, shard {spec.shard} wants rows {start}-{end}")
            table = pf.read_row_groups(groups, columns=list(mapping))
        table = table.rename_columns([mapping[c] for c in table.column_names])
        if CAPTION not in table.column_names and (columns is None or CAPTION in columns):  # no captions
            table = table.append_column(CAPTION, pa.nulls(table.num_rows, pa.string()))
        tables.append(table.slice(start - first, end - start))
    if not tables:
        schema = PAIRS_SCHEMA if columns is None else pa.schema([PAIRS_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def sample_key(shard: int, index: int, shard_size: int = 10_000) -> str:
    """img2dataset's key: the shard number (5 digits) then the index in the shard (digits of shard_size - 1, min 4)."""
    width = max(4, len(str(shard_size - 1)))
    return f"{shard:05d}{index:0{width}d}"


class ShardWriter:
    """Writes one shard: its images go to the sink of settings.output_format (tasks/download/sinks.py: a tar,
    a folder of files, or a parquet bytes column) as samples come, rows (no image bytes) stay in memory.

    Use as a context manager: leaving it normally publishes the images, the parquet and the stats
    (last), each atomically; leaving it with an exception publishes nothing and removes the
    temporary files.
    """

    def __init__(self, out: str, shard: int, settings):
        self.out = out
        self.shard = shard
        self.ext = settings.encode_format
        self.output_format = settings.output_format
        self._images, self._stem = images, stem = images_dir(out), shard_name(shard)
        self.parquet_uri = shard_parquet(images, stem)
        self.shard_uri = shard_in_format(images, stem, self.output_format)  # as layout.published_shards names it
        self.stats_uri = shard_stats(images, stem)
        self._rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._image_bytes = 0
        self._blocklisted: dict[str, int] = {}  # samples per list
        self._started = time.time()
        self._closed = False
        self._sink = open_sink(settings.output_format, images, stem, self.ext, self._started)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort(exc_type, exc, tb)
        elif not self._closed:
            self.close()
        return False

    def add(self, row: dict, image: ImageResult | None) -> None:
        """One sample: `row` has key, uid, url, caption, passthrough columns and, for samples that
        failed before image processing, status / error_message / http_status; a bytes column
        (downloaded size) when known. `image` (when given) decides the status and the sizes."""
        if self._closed:
            raise RuntimeError(f"shard {self.shard}: add() after close()")
        record = dict(row)
        listed_on = record.pop("blocklist", None)  # counted in the stats, not a column
        key = record.get("key")
        if not key:
            raise ValueError(f"shard {self.shard}: row without a key: {row.get('url')!r}")
        if key in self._keys:
            raise ValueError(f"shard {self.shard}: duplicate key {key}")
        if image is not None:
            record.update({f: getattr(image, f) for f in _IMAGE_FIELDS})
        try:
            record["status"] = DownloadStatus(record.get("status")).value  # the closed vocabulary only
        except ValueError:
            raise ValueError(f"shard {self.shard}: {key} has no valid status: {record.get('status')!r}") from None
        if record["status"] == DownloadStatus.BLOCKLISTED:  # nothing of a listed image: no digest, no size
            record.update(dict.fromkeys((*_IMAGE_FIELDS[2:], "bytes")))
        for column in IMAGES_SCHEMA.names:
            record.setdefault(column, None)
        self._keys.add(key)
        self._rows.append(record)
        if record["status"] == DownloadStatus.BLOCKLISTED:
            name = listed_on or "unknown"
            self._blocklisted[name] = self._blocklisted.get(name, 0) + 1
        if record["status"] == DownloadStatus.SUCCESS:
            if image is None or image.data is None:
                raise ValueError(f"shard {self.shard}: {key} is a success without image data")
            self._sink.add(key, image.data, record.get(CAPTION), record)  # no caption: no .txt, as in img2dataset
            self._image_bytes += len(image.data)

    def table(self) -> pa.Table:
        """The shard's rows sorted by key: core columns with fixed types, then the passthrough ones."""
        rows = sorted(self._rows, key=lambda r: r["key"])
        extra = list(PASSTHROUGH_TYPES) + sorted(
            {c for r in rows for c in r} - set(IMAGES_SCHEMA.names) - set(PASSTHROUGH_TYPES)
        )
        fields = list(IMAGES_SCHEMA)
        for name in extra:
            kind = PASSTHROUGH_TYPES.get(name) or OPTIONAL_TYPES.get(name)
            if kind is None:
                kind = pa.array([r.get(name) for r in rows]).type
                kind = pa.string() if pa.types.is_null(kind) else kind
            fields.append(pa.field(name, kind))
        schema = pa.schema(fields)
        return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}, schema=schema)

    def stats(self, duration: float) -> dict:
        statuses: dict[str, int] = {}
        for r in self._rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        successes = statuses.get(DownloadStatus.SUCCESS.value, 0)
        return {
            "shard": self.shard,
            "count": len(self._rows),
            "successes": successes,
            "failures": len(self._rows) - successes,
            "status": dict(sorted(statuses.items())),  # samples per status
            **img2dataset_counts(dict(sorted(statuses.items()))),
            "duration": duration,
            "throughput": successes / duration if duration > 0 else 0.0,  # images written per second
            "bytes": sum(r["bytes"] or 0 for r in self._rows),  # downloaded
            "image_bytes": self._image_bytes,  # encoded, in the tar (folder, parquet)
            "blocklisted_by_list": dict(sorted(self._blocklisted.items())),  # samples per known-bad list
            "start_time": self._started,
            "end_time": self._started + duration,
            "output_format": self.output_format,  # where the images are (layout.published_shards)
        }

    def close(self) -> dict:
        """Publish the images and the parquet (the sink), then the stats; returns the stats."""
        if self._closed:
            raise RuntimeError(f"shard {self.shard}: closed twice")
        self._closed = True
        try:
            self._sink.publish(self.table())
            self._drop_other_formats()
            stats = self.stats(time.time() - self._started)
            write_json(self.stats_uri, stats)
        except BaseException as exc:
            self._sink.abort(type(exc), exc, exc.__traceback__)
            raise
        return stats

    def _drop_other_formats(self) -> None:
        """The images an earlier run wrote of this shard in another output format (its tar, its folder) go, its
        stats first (the shard stops being published until this run's stats are written). The parquet stays:
        every format writes the shard's rows there, and this run has just written them."""
        stale = []
        for output_format in SHARD_SUFFIXES.keys() - {self.output_format, "parquet"}:
            fs, path = filesystem(shard_in_format(self._images, self._stem, output_format))
            if fs.exists(path):
                stale.append((fs, path))
        if stale:
            fs, stats = filesystem(self.stats_uri)
            if fs.exists(stats):
                fs.rm(stats)
        for fs, path in stale:
            fs.rm(path, recursive=True)

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        """Drop everything written so far; nothing is published."""
        self._closed = True
        self._rows.clear()
        if exc_type is None:
            exc_type, exc = RuntimeError, RuntimeError(f"shard {self.shard} aborted")
        self._sink.abort(exc_type, exc, tb)


def member_key(name: str) -> tuple[str, str] | None:
    """webdataset's split of a tar member's name into (key, extension): the key is the path up to the FIRST dot of
    the basename, the extension all after it, lower-cased ('d/a.b.JPG' -> ('d/a', 'b.jpg')); None for a basename
    that does not start with a name then a dot (webdataset skips those)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def image_members(entries: Iterable[tuple[str, T]]) -> Iterator[tuple[str, str, T]]:
    """(key, extension, entry) of the image members among (member name, entry) pairs (a tar's members, a folder's
    files), in order: files whose whole extension is an image type, the fields a webdataset reader asks for (`jpg`,
    `png`, ...). A key's first image member is its image. Lazy: a tar read as a stream (mode "r|") gives its next
    member only after the data of this one is read."""
    seen: set[str] = set()
    for name, entry in entries:
        split = member_key(name)
        if split is not None and split[1] in IMAGE_TYPES and split[0] not in seen:
            seen.add(split[0])
            yield split[0], split[1], entry


def tar_images(tar: tarfile.TarFile) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """image_members of a tar: (key, extension, member)."""
    return image_members((info.name, info) for info in tar if info.isfile())


def tar_members(tar_uri: str) -> dict[str, tuple[int, int, str]]:
    """{key: (data offset, size, extension)} of a shard tar's image members (tar_images), for reading one image
    without reading the tar (random access: reads the 512-byte headers and seeks over the data)."""
    try:
        with open_uri(tar_uri) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            return {key: (info.offset_data, info.size, ext) for key, ext, info in tar_images(tar)}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise OSError(f"{tar_uri}: cannot read the shard's tar: {exc}") from exc


def read_member(tar_uri: str, key: str, member: tuple[int, int, str]) -> bytes:
    """The bytes of one image member found by tar_members."""
    offset, size, ext = member
    with open_uri(tar_uri) as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{tar_uri}: member {key}.{ext} is cut short ({len(data)} of {size} bytes)")
    return data
