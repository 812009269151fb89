"""index/metadata/: the index's metadata where `clip-retrieval back` reads it.

clip-retrieval's back end loads INDEX/image.index, INDEX/text.index and INDEX/metadata/*.parquet, whose rows,
concatenated in file-name order, are the samples of ids 0, 1, 2, ... (its ParquetMetadataProvider). ids.parquet is
exactly that table (row i = id i; url, caption, key, similarity, plus shard, row and duplicate_group, which
clip-retrieval returns only when asked for them by --columns_to_return), so metadata/ holds ids.parquet itself
under metadata/ids.parquet: a hard link on a local disk (one file on disk, no second copy), a copy in an object
store, which has no links. Every writer of ids.parquet (the index stage, a takedown) publishes it again after
writing, so metadata/ never holds a sample that ids.parquet no longer holds; `clipcrawl index` publishes it again
when metadata/ids.parquet is not ids.parquet (missing, or left stale by an interrupted takedown or a copied index).

An ids.parquet of an earlier version names the caption `text`, which clip back does not read: metadata/ then holds
a copy with the column renamed caption, which records the ids.parquet it was made from.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid

import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.caption import LEGACY_CAPTION, caption_column, with_caption
from clipcrawl.tasks.core.uri import atomic_write, exists, filesystem, is_local, makedirs, open_uri

SOURCE = b"clipcrawl.ids_parquet"  # a renamed copy's key-value metadata: the fingerprint of the ids.parquet it copies


def fingerprint(uri: str) -> str:
    """A parquet file's size and the hash of its footer (row groups' offsets, sizes and statistics): two files
    with the same fingerprint hold the same table."""
    fs, path = filesystem(uri)
    size = fs.size(path)
    with fs.open(path, "rb") as f:
        f.seek(max(size - 8, 0))
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little") if tail[4:] == b"PAR1" else 0
        f.seek(max(size - 8 - length, 0))
        footer = f.read(length)
    return f"{size}:{hashlib.sha256(footer).hexdigest()}"


def is_published(index_dir: str) -> bool:
    """Whether index/metadata/ids.parquet is the current ids.parquet (its link, or a copy of it)."""
    source, target = layout.ids_file(index_dir), layout.clip_metadata_file(index_dir)
    if not exists(target):
        return False
    if is_local(source) and os.path.samefile(filesystem(source)[1], filesystem(target)[1]):
        return True  # its link
    try:
        with open_uri(target) as f:
            recorded = (pq.read_schema(f).metadata or {}).get(SOURCE, b"").decode()
    except (OSError, ValueError):  # not a parquet file (pyarrow's ArrowInvalid is a ValueError)
        return False
    current = fingerprint(source)
    if recorded:  # a renamed copy
        return recorded == current
    return not is_local(source) and fingerprint(target) == current  # a copy in an object store (locally: a link)


def _publish_renamed(source: str, target: str) -> None:
    """metadata/ids.parquet as a copy of an older ids.parquet with its `text` column named caption."""
    origin = fingerprint(source)
    with open_uri(source) as f:
        ids = pq.ParquetFile(f)
        schema = with_caption(ids.schema_arrow.empty_table()).schema.with_metadata({SOURCE: origin.encode()})
        with atomic_write(target) as out, pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for group in range(ids.num_row_groups):
                table = with_caption(ids.read_row_group(group))
                writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=len(table))


def publish_clip_metadata(index_dir: str) -> str:
    """Make index/metadata/ids.parquet the current ids.parquet (atomically: a reader sees the old or the new
    one); its URI."""
    source, target = layout.ids_file(index_dir), layout.clip_metadata_file(index_dir)
    fs, src = filesystem(source)
    dst = filesystem(target)[1]
    makedirs(layout.clip_metadata_dir(index_dir))
    with open_uri(source) as f:
        legacy = caption_column(pq.read_schema(f).names) == LEGACY_CAPTION
    if legacy:
        _publish_renamed(source, target)
        return target
    if not is_local(source):
        fs.copy(src, dst)  # an object store commits the object whole
        return target
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return target  # linked already (a rename onto a link of the same file would leave the temporary name)
    tmp = f"{dst}.tmp-{uuid.uuid4().hex}"  # not *.parquet: clip-retrieval never reads it
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a filesystem without hard links (or src on another device): a copy
            fs.copy(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return target


def ensure_clip_metadata(index_dir: str) -> None:
    """index/metadata/ids.parquet published again when it is not the index's ids.parquet: missing (an index of an
    earlier version), or stale (a takedown interrupted between the two writes, an index copied then changed)."""
    if exists(layout.ids_file(index_dir)) and not is_published(index_dir):
        publish_clip_metadata(index_dir)
