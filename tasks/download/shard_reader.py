"""Reading a shard's images and per-sample files whatever its output format (tasks/download/sinks.py), as
layout.published_shards names the shard: images/{stem}.tar (webdataset), the folder images/{stem} (files), or
images/{stem}.parquet (parquet: the image bytes in a binary column named by its encode format, `jpg`, as
img2dataset's ParquetSampleWriter writes it). Shards img2dataset wrote read the same.

    for key, data in shard_images(shard, keys): ...        # streaming, the shard's order (embed)
    refs = image_index(shard); read_image(shard, key, refs[key])   # one image at a time (thumbnails)
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcrawl.tasks.core.layout import shard_format
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.core.uri import filesystem, name_of, open_uri
from clipcrawl.tasks.download.shards import IMAGE_TYPES, image_members, member_key, read_member, tar_images, tar_members


class ImageRef(NamedTuple):
    """Where one image of a shard is: (data offset, size, extension) in a tar, (file URI, size, extension) in a
    folder, ((row group, row), -1, the image column) in a parquet. The extension names the MIME type (IMAGE_TYPES)."""

    where: object
    size: int
    ext: str


def image_column(names: list[str], types: list[pa.DataType] | None = None) -> str | None:
    """A parquet shard's image column: the first binary column named by an image type (jpg, webp, png, jpeg)."""
    for i, name in enumerate(names):
        if name in IMAGE_TYPES and (
            types is None or pa.types.is_binary(types[i]) or pa.types.is_large_binary(types[i])
        ):
            return name
    return None


def folder_files(folder: str) -> list[tuple[str, int]]:
    """(URI, size) of the files of a files shard's folder, sorted by name."""
    fs, path = filesystem(folder)
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, OSError) as exc:
        raise OSError(f"{folder}: cannot list the shard's folder: {exc}") from exc
    files = sorted((e["name"], int(e.get("size") or 0)) for e in entries if e.get("type") == "file")
    return [(p if "://" not in folder else fs.unstrip_protocol(p), size) for p, size in files]


def members(
    shard: str, read: Callable[[str, str], bool] = lambda key, ext: True
) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, data) of the per-sample files of a webdataset or files shard, in the shard's order; data
    only where read(key, extension), else None. A tar is read as a stream; OSError naming the shard when it
    cannot be read. A parquet shard has no such files: nothing."""
    fmt = shard_format(shard)
    if fmt == "parquet":
        return
    if fmt == "files":
        for uri, _ in folder_files(shard):
            split = member_key(name_of(uri))
            if split is None:
                continue
            data = None
            if read(*split):
                try:
                    with open_uri(uri) as f:
                        data = f.read()
                except OSError as exc:
                    raise OSError(f"{shard}: cannot read {name_of(uri)}: {exc}") from exc
            yield (*split, data)
        return
    try:
        with open_uri(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                split = member_key(info.name) if info.isfile() else None
                if split is not None:
                    yield (*split, tar.extractfile(info).read() if read(*split) else None)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise OSError(f"{shard}: cannot read the shard's tar: {exc}") from exc


def shard_images(shard: str, keys: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(key, image bytes) of the shard's samples whose key is in `keys` (None: all), in the shard's order,
    streaming: a key's image member (shards.image_members: webdataset, files), or its row's bytes (parquet; null:
    no image)."""
    fmt = shard_format(shard)
    if fmt == "files":
        for key, ext, (uri, _) in image_members((name_of(uri), (uri, size)) for uri, size in folder_files(shard)):
            if keys is None or key in keys:
                try:
                    with open_uri(uri) as f:
                        data = f.read()
                except OSError as exc:
                    raise OSError(f"{shard}: cannot read {key}.{ext}: {exc}") from exc
                yield key, data
        return
    if fmt == "webdataset":
        try:
            with open_uri(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for key, _, info in tar_images(tar):
                    if keys is None or key in keys:
                        yield key, tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise OSError(f"{shard}: cannot read the shard's tar: {exc}") from exc
        return
    try:
        with open_uri(shard) as f:
            pf = pq.ParquetFile(f)
            column = image_column(pf.schema_arrow.names, pf.schema_arrow.types)
            if column is None:
                if keys:
                    raise OSError(f"{shard}: no image column ({'/'.join(IMAGE_TYPES)}), no tar or folder beside it")
                return
            for batch in pf.iter_batches(batch_size=64, columns=["key", column]):
                for key, data in zip(batch["key"].to_pylist(), batch[column].to_pylist()):
                    if data is not None and (keys is None or key in keys):
                        yield key, data
    except (pa.ArrowException, OSError) as exc:
        raise OSError(f"{shard}: cannot read the shard's parquet: {exc}") from exc


def captions_and_fields(shard: str) -> tuple[dict[str, str], dict[str, dict]]:
    """The shard's {key}.txt captions, and its samples: {key: the fields of {key}.json} for each key with an image,
    in the shard's order (img2dataset writes {key}.json beside each image; without one the sample has no fields).
    A parquet shard has neither: its captions and fields are its columns."""
    texts: dict[str, str] = {}
    fields: dict[str, dict] = {}
    images: dict[str, None] = {}
    for key, ext, data in members(shard, lambda key, ext: ext in ("txt", "json")):
        if ext == "txt":
            texts[key] = data.decode("utf-8", errors="replace")
        elif ext == "json":
            try:
                record = json.loads(data)
            except ValueError:
                continue
            fields[key] = record if isinstance(record, dict) else {}
        elif ext in IMAGE_TYPES:
            images.setdefault(key)
    return texts, {key: fields.get(key, {}) for key in images}


def image_index(shard: str) -> dict[str, ImageRef]:
    """{key: ImageRef} of the shard's images, for reading one without reading the shard: a tar's member headers,
    a folder's listing, a parquet's key column (rows with status success, where it has a status)."""
    fmt = shard_format(shard)
    if fmt == "webdataset":
        return {key: ImageRef(*member) for key, member in tar_members(shard).items()}
    if fmt == "files":
        files = ((name_of(uri), (uri, size)) for uri, size in folder_files(shard))
        return {key: ImageRef(uri, size, ext) for key, ext, (uri, size) in image_members(files)}
    try:
        with open_uri(shard) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            column = image_column(names, pf.schema_arrow.types)
            if column is None:
                return {}
            wanted = ["key", "status"] if "status" in names else ["key"]
            index = {}
            for group in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(group, columns=wanted)
                ok = pc.is_valid(table["key"])
                if "status" in wanted:
                    ok = pc.and_(ok, pc.fill_null(pc.equal(table["status"], DownloadStatus.SUCCESS.value), False))
                rows = pc.indices_nonzero(ok)
                for row, key in zip(rows.to_pylist(), table["key"].take(rows).to_pylist(), strict=True):
                    index.setdefault(key, ImageRef((group, row), -1, column))
            return index
    except (pa.ArrowException, OSError) as exc:
        raise OSError(f"{shard}: cannot read the shard's parquet: {exc}") from exc


def read_image(shard: str, key: str, ref: ImageRef) -> bytes:
    """The bytes of one image found by image_index; OSError when they are not there (anymore)."""
    fmt = shard_format(shard)
    if fmt == "webdataset":
        return read_member(shard, key, tuple(ref))
    if fmt == "files":
        try:
            with open_uri(ref.where) as f:
                return f.read()
        except OSError as exc:
            raise OSError(f"{shard}: cannot read {key}.{ref.ext}: {exc}") from exc
    group, row = ref.where
    try:
        with open_uri(shard) as f:
            data = pq.ParquetFile(f).read_row_group(group, columns=[ref.ext])[ref.ext][row].as_py()
    except (pa.ArrowException, OSError, IndexError) as exc:
        raise OSError(f"{shard}: cannot read the image of {key}: {exc}") from exc
    if data is None:
        raise OSError(f"{shard}: {key} has no image bytes")
    return data
