"""Where a shard's images go: one sink per output format, as img2dataset's sample writers (img2dataset/writer.py).

    webdataset  images/{stem}.tar: {key}.{ext}, {key}.txt, {key}.json per success (WebDatasetSampleWriter)
    files       images/{stem}/{key}.{ext}, {key}.txt, {key}.json per success (FilesSampleWriter)
    parquet     images/{stem}.parquet: the shard's rows with the image bytes in a last binary column named by the
                encode format (`jpg`), null for failures, one row per sample (ParquetSampleWriter)

In webdataset and files the rows (no image bytes) go to images/{stem}.parquet beside the images. A sink takes the
successes as they come (`add`), then `publish(table)` writes its images and the rows, each atomically; the shard
writer (tasks/download/shards.py) publishes the stats, the completion marker, after. `abort` leaves nothing.

Atomicity of a files shard: its files are written in a temporary folder, on a local disk beside the final one
(renamed into place on publish; a killed writer's folder is removed by the next writer of the shard), for an object
store on the local disk (uploaded on publish, as TarSink's tar: no upload on the download's event loop per sample).
Object stores have no folder rename: the shard counts as done only once its stats exist
(layout.published_shards); a shard written again first drops its stats, then its old folder.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.layout import shard_folder, shard_parquet, shard_stats, shard_tar
from clipcrawl.tasks.core.uri import atomic_write, filesystem, is_local

OUTPUT_FORMATS = get_args(DownloadSettings.model_fields["output_format"].annotation)
# The image types by member extension (webdataset, files) or image column name (parquet), with their MIME types.
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
ROWS_PER_GROUP = 100  # parquet format: a thumbnail reads one row group's images (img2dataset writes 100 a group)


def sample_files(key: str, ext: str, data: bytes, caption: str | None, record: dict) -> list[tuple[str, bytes]]:
    """A success's files in webdataset and files: the image, the caption (none without captions, as img2dataset),
    and the row as JSON."""
    files = [(f"{key}.{ext}", data)]
    if caption is not None:
        files.append((f"{key}.txt", caption.encode()))
    if record.get("uid") is not None:  # a uint64: as a number, half of them overflow int64 JSON readers (pyarrow,
        record = record | {"uid": str(record["uid"])}  # Hugging Face datasets) and JavaScript rounds past 2**53
    files.append((f"{key}.json", json.dumps(record, indent=4, ensure_ascii=False, default=str).encode()))
    return files


def image_parquet_writer(f, schema: pa.Schema, image: str) -> pq.ParquetWriter:
    """The parquet format's writer of a shard with `schema`, its image bytes in the column `image`: the rows'
    columns zstd-compressed with dictionaries, the (already encoded) image bytes stored as they are. Write
    ROWS_PER_GROUP rows at a time (ParquetSink; a takedown's rewrite keeps the same groups)."""
    rows = [name for name in schema.names if name != image]
    return pq.ParquetWriter(f, schema, compression={**dict.fromkeys(rows, "zstd"), image: "none"}, use_dictionary=rows)


def write_rows(uri: str, table: pa.Table) -> None:
    with atomic_write(uri) as f:
        pq.write_table(table, f, compression="zstd")


class TarSink:
    """webdataset: the tar streams to disk as samples come (object stores: spooled locally, uploaded on publish,
    so a failed upload commits nothing)."""

    def __init__(self, images: str, stem: str, ext: str, mtime: float):
        self.ext, self.mtime = ext, int(mtime)
        self.tar_uri, self.parquet_uri = shard_tar(images, stem), shard_parquet(images, stem)
        self._stack = contextlib.ExitStack()
        try:
            if is_local(self.tar_uri):  # the temporary file beside the tar becomes the tar
                self._file = self._stack.enter_context(atomic_write(self.tar_uri))
            else:
                self._file = self._stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
            self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        except BaseException:
            self._stack.close()
            raise

    def add(self, key: str, data: bytes, caption: str | None, record: dict) -> None:
        for name, body in sample_files(key, self.ext, data, caption, record):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(body), self.mtime, 0o444
            self._tar.addfile(info, io.BytesIO(body))

    def publish(self, table: pa.Table) -> None:
        try:
            self._tar.close()
            if not is_local(self.tar_uri):
                self._file.seek(0)
                with atomic_write(self.tar_uri) as dst:
                    while chunk := self._file.read(8 << 20):
                        dst.write(chunk)
            self._stack.close()  # local: fsync + rename of the tar
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        write_rows(self.parquet_uri, table)

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        self._stack.__exit__(exc_type, exc, tb)


class FolderSink:
    """files: a file per image, caption and row in images/{stem}/ (module docstring: how it is published)."""

    def __init__(self, images: str, stem: str, ext: str, mtime: float):
        self.ext = ext
        self.folder_uri, self.parquet_uri = shard_folder(images, stem), shard_parquet(images, stem)
        self.stats_uri = shard_stats(images, stem)
        self._fs, self._final = filesystem(self.folder_uri)
        self._local = is_local(self.folder_uri)
        self._uploading = False  # object store: the earlier shard was retracted, this one's uploads began
        if self._local:
            for stale in glob.glob(f"{glob.escape(self._final)}.tmp-*"):  # a killed writer's folder
                shutil.rmtree(stale, ignore_errors=True)
            self._path = f"{self._final}.tmp-{uuid.uuid4().hex}"
            os.makedirs(self._path)
        else:
            self._path = tempfile.mkdtemp(prefix=f"clipcrawl-{stem}-")

    def _retract(self) -> None:
        """An earlier run's shard stops being published (its stats go), then its folder goes."""
        fs, stats = filesystem(self.stats_uri)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(stats)
        if self._fs.exists(self._final):
            self._fs.rm(self._final, recursive=True)

    def add(self, key: str, data: bytes, caption: str | None, record: dict) -> None:
        for name, body in sample_files(key, self.ext, data, caption, record):
            with open(os.path.join(self._path, name), "wb") as f:
                f.write(body)

    def publish(self, table: pa.Table) -> None:
        names = sorted(os.listdir(self._path))
        if self._local:
            for name in names:  # durable before the rename makes them the shard's
                fd = os.open(os.path.join(self._path, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if os.path.exists(self._final):
                self._retract()
            os.replace(self._path, self._final)
        else:
            self._retract()
            self._uploading = True
            if names:  # one batch of uploads (s3fs: concurrent), then the spool goes
                self._fs.put([os.path.join(self._path, n) for n in names], [f"{self._final}/{n}" for n in names])
            shutil.rmtree(self._path, ignore_errors=True)
        write_rows(self.parquet_uri, table)

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        shutil.rmtree(self._path, ignore_errors=True)
        if self._uploading:  # uploads of a failed publish (before it, an earlier run's shard is left as it is)
            with contextlib.suppress(Exception):
                self._fs.rm(self._final, recursive=True)


class ParquetSink:
    """parquet: the images are spooled to a local temporary file as they come and joined to the rows on publish,
    ROWS_PER_GROUP rows at a time (memory holds one row group's images, not the shard's)."""

    def __init__(self, images: str, stem: str, ext: str, mtime: float):
        self.ext = ext
        self.parquet_uri = shard_parquet(images, stem)
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by publish or abort
        self._spans: dict[str, tuple[int, int]] = {}

    def add(self, key: str, data: bytes, caption: str | None, record: dict) -> None:
        self._spans[key] = (self._spool.tell(), len(data))
        self._spool.write(data)

    def _image(self, key: str) -> bytes | None:
        span = self._spans.get(key)
        if span is None:
            return None
        self._spool.seek(span[0])
        return self._spool.read(span[1])

    def publish(self, table: pa.Table) -> None:
        image = pa.field(self.ext, pa.binary())
        schema = table.schema.append(image)
        try:
            with atomic_write(self.parquet_uri) as f, image_parquet_writer(f, schema, self.ext) as writer:
                for start in range(0, table.num_rows, ROWS_PER_GROUP):
                    part = table.slice(start, ROWS_PER_GROUP)
                    data = pa.array([self._image(key) for key in part["key"].to_pylist()], pa.binary())
                    writer.write_table(part.append_column(image, data))
        finally:
            self._spool.close()

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        self._spool.close()


SINKS = {"webdataset": TarSink, "files": FolderSink, "parquet": ParquetSink}


def open_sink(output_format: str, images: str, stem: str, ext: str, mtime: float):
    """The sink of `output_format` (one of OUTPUT_FORMATS, DownloadSettings.output_format's values) for shard `stem`
    of IMAGES, its images encoded as `ext`."""
    return SINKS[output_format](images, stem, ext, mtime)
