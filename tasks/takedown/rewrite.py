"""Rewrite the files of OUT that hold matched samples, each atomically; files without a match are not touched.

    removed = rewrite_shards(out, matched)       # images/ tars, parquets, _stats.json
    removed |= rewrite_embeddings(out, matched)  # embeddings/ npy + metadata (rows kept aligned), dataset stats
    removed |= rewrite_index(out, matched)       # both faiss indices, ids.parquet, near-duplicate groups, infos
    removed |= rewrite_parquets(out, matched, marks)   # dataset/, pairs/ (with their stats) and any other parquet

Each returns {file URI: rows (or members) removed}.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import asdict, replace

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.caption import with_caption
from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import (
    atomic_write,
    exists,
    filesystem,
    is_local,
    listdir,
    name_of,
    open_uri,
    read_json,
    write_json,
)
from clipcrawl.tasks.download.shard_reader import folder_files, image_column
from clipcrawl.tasks.download.shards import IMAGE_TYPES, img2dataset_counts, member_key
from clipcrawl.tasks.download.sinks import ROWS_PER_GROUP, image_parquet_writer
from clipcrawl.tasks.index.choice import index_memory
from clipcrawl.tasks.index.clip_metadata import publish_clip_metadata
from clipcrawl.tasks.index.ids import write_ids
from clipcrawl.tasks.index.stage import Shard, absolute
from clipcrawl.tasks.index.train import build, read_index, write_index
from clipcrawl.tasks.index.vectors import Part
from clipcrawl.tasks.takedown.log import TAKEN_DOWN as TAKEN_DOWN_MESSAGE
from clipcrawl.tasks.takedown.match import Matched, is_keyed, parquet_files

TAKEN_DOWN = "taken_down"  # the count each rewritten stats file gains, and a taken-down shard row's status
MARK = "takedowns"  # in a stats file adjusted by a takedown: the ids of the takedowns it counts (no double count)


def _adjusted(stats: dict, run: str) -> bool:
    """Whether the stats were adjusted by the takedown `run` already (an interrupted run resumed); marks them."""
    done = stats.setdefault(MARK, [])
    if run in done:
        return True
    done.append(run)
    return False


def _write_table(uri: str, table: pa.Table) -> None:
    with atomic_write(uri) as f:
        pq.write_table(table, f, compression="zstd")


def _read(uri: str) -> pa.Table:
    with open_uri(uri) as f:
        return pq.read_table(f)


def _count(stats: dict, n: int) -> None:
    stats[TAKEN_DOWN] = stats.get(TAKEN_DOWN, 0) + n


# ---- images/: tar members, parquet rows, _stats.json


def _rewrite_tar(uri: str, keys: set[str]) -> tuple[int, int]:
    """Copy the tar without the members of `keys`; returns (members removed, image bytes left in the tar)."""
    removed = image_bytes = 0
    with (
        open_uri(uri) as src,
        tarfile.open(fileobj=src, mode="r|") as tar,
        atomic_write(uri) as dst,
        tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT) as out,
    ):
        for info in tar:
            split = member_key(info.name) if info.isfile() else None
            if split is not None and split[0] in keys:
                removed += 1
                continue
            image_bytes += info.size if split is not None and split[1] not in ("txt", "json") else 0
            out.addfile(info, tar.extractfile(info) if info.isfile() else None)
    return removed, image_bytes


def _rewrite_folder(folder: str, keys: set[str]) -> tuple[int, int]:
    """Remove the files of `keys` from a files shard's folder; returns (files removed, image bytes left in it)."""
    removed = image_bytes = 0
    for uri, size in folder_files(folder) if exists(folder) else []:
        split = member_key(name_of(uri))
        if split is not None and split[0] in keys:
            fs, path = filesystem(uri)
            fs.rm(path)
            removed += 1
        elif split is not None and split[1] in IMAGE_TYPES:
            image_bytes += size
    return removed, image_bytes


def _rewrite_images(shard: str, keys: set[str]) -> tuple[int, int | None]:
    """The images of `keys` out of the shard's tar or folder: (members removed, image bytes left); a parquet shard's
    bytes are in its rows, blanked with them ((0, None))."""
    fmt = layout.shard_format(shard)
    if fmt == "files":
        return _rewrite_folder(shard, keys)
    if fmt == "webdataset" and exists(shard):
        return _rewrite_tar(shard, keys)
    return 0, None


def _shard_rows(uri: str) -> tuple[pa.Table, str | None]:
    """A shard's parquet without its image bytes, its caption under caption; and its image column (output format
    parquet: the encode format's column; None for the other formats)."""
    with open_uri(uri) as f:
        pf = pq.ParquetFile(f)
        image = image_column(pf.schema_arrow.names, pf.schema_arrow.types)
        return with_caption(pf.read(columns=[name for name in pf.schema_arrow.names if name != image])), image


def blank(table: pa.Table, hit: pa.Array, keep: tuple[str, ...] = ()) -> pa.Table:
    """The table with the `hit` rows emptied (every column null but `keep`): rows keep their positions, so the
    download's shard slices and keys, which count rows, stay those of the run."""
    columns, fields = [], []
    for f in table.schema:
        column = table[f.name]
        if f.name not in keep:
            column = pc.if_else(hit, pa.scalar(None, f.type), column)
            f = f.with_nullable(True)
        columns.append(column)
        fields.append(f)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def _shard_counts(stats: dict, table: pa.Table) -> None:
    """A shard's counts, from its parquet as it will be (absolute, so a step run twice gives the same)."""
    statuses = table["status"].to_pylist()
    stats["count"] = len(statuses)
    stats["successes"] = statuses.count("success")
    stats["failures"] = stats["count"] - stats["successes"]
    stats["status"] = {name: statuses.count(name) for name in sorted(set(statuses))}
    stats.update(img2dataset_counts(stats["status"]))
    stats["bytes"] = sum(b or 0 for b in table["bytes"].to_pylist())


def _taken_down(table: pa.Table, hit: pa.Array) -> pa.Table:
    """The shard rows with the `hit` ones emptied but for their key, their status taken_down."""
    kept = blank(table, hit, keep=("key",))
    for name, value in (("status", TAKEN_DOWN), ("error_message", TAKEN_DOWN_MESSAGE)):
        if name in kept.column_names:
            column = pc.if_else(hit, pa.scalar(value, kept.schema.field(name).type), kept[name])
            kept = kept.set_column(kept.schema.get_field_index(name), name, column)
    return kept


def _rewrite_image_parquet(uri: str, image: str, hit: pa.Array, stats_uri: str, stats: dict) -> None:
    """A parquet-format shard rewritten one row group at a time, as ParquetSink writes it (sinks.image_parquet_writer,
    ROWS_PER_GROUP rows a group): the `hit` rows' values and image bytes gone. The stats (their image_bytes taken
    while the groups are written) are published before the parquet, as for the other formats."""
    hit = hit.combine_chunks() if isinstance(hit, pa.ChunkedArray) else hit
    image_bytes = offset = 0
    with open_uri(uri) as src, atomic_write(uri) as dst:
        pf = pq.ParquetFile(src)
        schema = _taken_down(with_caption(pf.schema_arrow.empty_table()), pa.array([], pa.bool_())).schema
        with image_parquet_writer(dst, schema, image) as writer:
            for group in range(pf.metadata.num_row_groups):
                part = with_caption(pf.read_row_group(group))
                part = _taken_down(part, hit.slice(offset, part.num_rows)).cast(schema)
                offset += part.num_rows
                image_bytes += int(pc.sum(pc.binary_length(part[image])).as_py() or 0)
                writer.write_table(part, row_group_size=ROWS_PER_GROUP)
        stats["image_bytes"] = image_bytes
        write_json(stats_uri, stats)


def rewrite_shards(out: str, matched: Matched) -> dict[str, int]:
    """images/{shard}: each matched row becomes a taken_down row holding only its key (as the download writes a
    tombstoned sample), its members leave the tar (its files the folder; its bytes the parquet, with the row's
    other values), the counts are taken again. The tar and the stats are written before the parquet, whose matched
    rows are what a resumed takedown redoes. A rewritten parquet of an earlier version calls the caption caption."""
    removed: dict[str, int] = {}
    images = layout.images_dir(out)
    for shard in layout.published_shards(images):
        parquet = layout.shard_parquet_of(shard)
        if not exists(parquet):
            continue
        table, image = _shard_rows(parquet)
        hit = pc.and_(matched.mask(table), pc.fill_null(pc.not_equal(table["status"], TAKEN_DOWN), True))
        keys = set(table.filter(hit)["key"].to_pylist())
        if not keys:
            continue
        members, image_bytes = _rewrite_images(shard, keys)
        kept = _taken_down(table, hit)
        stats_uri = layout.shard_stats(images, layout.shard_stem(shard))
        stats = read_json(stats_uri)
        _shard_counts(stats, kept)
        if image is not None:  # the image bytes are in the parquet's rows (output format parquet)
            _rewrite_image_parquet(parquet, image, hit, stats_uri, stats)
        else:
            if image_bytes is not None:
                stats["image_bytes"] = image_bytes
            write_json(stats_uri, stats)
            _write_table(parquet, kept)
        removed[shard], removed[parquet], removed[stats_uri] = members, len(keys), len(keys)
    return removed


# ---- embeddings/: the rows of both npy files and the metadata, together; dataset/part-S_stats.json


def _rewrite_npy(uri: str, keep: np.ndarray) -> bool:
    """The npy without the rows not in `keep`; nothing when it has the kept row count already (rewritten by an
    interrupted run of the same takedown, whose metadata, written last, still holds the rows)."""
    with open_uri(uri) as f:
        vectors = np.load(f, allow_pickle=False, mmap_mode=None)
    if len(vectors) == int(keep.sum()):
        return False
    if len(vectors) != len(keep):
        raise ValueError(f"takedown: {uri} has {len(vectors)} rows, its metadata {len(keep)}")
    with atomic_write(uri) as f:
        np.save(f, vectors[keep])
    return True


def rewrite_embeddings(out: str, matched: Matched, run: str = "") -> dict[str, int]:
    """embeddings/: matched rows out of img_emb, text_emb and metadata (row i of each stays one sample). Per
    shard the npy files go first, then embed's stats (marked with the takedown `run`), the metadata last."""
    removed: dict[str, int] = {}
    embeddings, dataset = layout.embeddings_dir(out), layout.dataset_dir(out)
    for meta in parquet_files(out, [layout.metadata_dir(embeddings)]):
        stem = layout.metadata_stem(meta)
        table = with_caption(_read(meta))  # an earlier version's metadata is rewritten with caption
        hit = matched.mask(table).to_numpy(zero_copy_only=False)
        if not hit.any():
            continue
        keep = ~hit
        for modality in layout.EMBEDDING_FOLDERS:
            npy = layout.embedding_npy(embeddings, modality, stem)
            if exists(npy):
                _rewrite_npy(npy, keep)
                removed[npy] = int(hit.sum())
        gone_keys = set(table.filter(pa.array(hit))["key"].to_pylist())
        stats_uri = layout.dataset_stats(dataset, stem)
        if exists(stats_uri):
            stats = read_json(stats_uri)
            if not _adjusted(stats, run):
                part = layout.dataset_part(dataset, stem)
                in_part = 0
                if exists(part):
                    in_part = int(pc.sum(pc.is_in(_read(part)["key"], pa.array(sorted(gone_keys)))).as_py() or 0)
                failed = [f for f in stats.get("failures", []) if f.get("key") in matched.keys]
                stats["failures"] = [f for f in stats.get("failures", []) if f.get("key") not in matched.keys]
                stats["samples"] -= len(gone_keys) + len(failed)
                stats["embedded"] -= len(gone_keys)
                stats["kept"] -= in_part
                if "status" in stats:
                    stats["status"]["embedded"] = stats["status"].get("embedded", 0) - len(gone_keys)
                    for f in failed:
                        stats["status"][f["status"]] = stats["status"].get(f["status"], 1) - 1
                _count(stats, len(gone_keys) + len(failed))
                write_json(stats_uri, stats)
            removed[stats_uri] = len(gone_keys)
        _write_table(meta, table.filter(pa.array(keep)))
        removed[meta] = int(hit.sum())
    return removed


# ---- index/: both faiss indices, ids.parquet, the near-duplicate groups, index_infos.json


def renumber_ivf(ivf: faiss.IndexIVF, new_id: np.ndarray) -> None:
    """Give every vector of an IVF index its new id (new_id[old id]) in place."""
    invlists = ivf.invlists
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if not n:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy()
        renumbered = np.ascontiguousarray(new_id[ids], dtype=np.int64)
        invlists.update_entries(lst, 0, n, faiss.swig_ptr(renumbered), invlists.get_codes(lst))


def remove_vectors(index: faiss.Index, gone: np.ndarray, new_id: np.ndarray) -> bool:
    """Remove the ids `gone` so that the others become new_id[old id] (0..n-1 in order); False where the index
    type cannot (then it is rebuilt). Flat and other flat-code indices compact their ids as they remove; an IVF
    index removes, then its ids are renumbered."""
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(gone, dtype=np.int64))
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if isinstance(inner, faiss.IndexFlatCodes):
        index.remove_ids(selector)
        return True
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return False
    try:  # inverted lists that cannot change (on disk, read-only) raise: the caller drops this copy and rebuilds
        index.remove_ids(selector)
        renumber_ivf(ivf, new_id)
    except RuntimeError:
        return False
    return True


def _groups(old_groups: np.ndarray, keep: np.ndarray, new_id: np.ndarray) -> np.ndarray:
    """Near-duplicate groups after removal: each group's new root is its smallest surviving id."""
    survivors = new_id[keep]
    roots = old_groups[keep]
    if not len(roots):
        return roots.astype(np.int64)
    unique, inverse = np.unique(roots, return_inverse=True)
    first = np.full(len(unique), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, survivors)
    return first[inverse]


def resolve_shard(out: str, shard: Shard) -> Shard:
    """The shard with its folders as URIs that exist: a relative path (an index built from another working
    directory) is tried against this one, OUT's parent and OUT; InputError when its metadata is nowhere."""
    if exists(shard.metadata):
        return replace(shard, embeddings=absolute(shard.embeddings), dataset=absolute(shard.dataset))
    if is_local(shard.embeddings) and not os.path.isabs(shard.embeddings.removeprefix("file://")):
        for base in (os.getcwd(), os.path.dirname(out), out):
            moved = replace(
                shard,
                embeddings=absolute(os.path.join(base, shard.embeddings)),
                dataset=absolute(os.path.join(base, shard.dataset)) if shard.dataset else None,
            )
            if exists(moved.metadata):
                return moved
    raise InputError(
        f"takedown: the index's shard {shard.name} names the metadata {shard.metadata}, which is not there: "
        "the index cannot be rewritten (build it again with clipcrawl index --rebuild)"
    )


def _current_rows(shard: Shard, keys: np.ndarray) -> np.ndarray:
    """The rows of the shard's keys in its (possibly rewritten) metadata; every key must be there."""
    found = pq.read_table(open_uri(shard.metadata), columns=["key"])["key"]
    where = pc.index_in(pa.array(keys, pa.string()), value_set=found)
    if where.null_count:
        raise InputError(f"takedown: {where.null_count} samples of the index are not in {shard.metadata}")
    return where.to_numpy(zero_copy_only=False).astype(np.int64)


def rewrite_index(out: str, matched: Matched, force: bool = False) -> tuple[dict[str, int], dict[str, tuple]]:
    """Remove the matched samples from OUT/index/. Returns ({file: removed}, the dataset marks
    {dataset part URI: (keys, duplicate_group, own id)} of the shards whose marks changed). `force`: write
    ids.parquet and index_infos.json again even when nothing matches (an interrupted takedown resumed): both
    are recomputed from ids.parquet, the indices are left when they have its row count."""
    index_dir = layout.index_dir(out)
    infos_uri, ids_uri = layout.index_infos(index_dir), layout.ids_file(index_dir)
    if not (exists(infos_uri) and exists(ids_uri)):
        return {}, {}
    infos = read_json(infos_uri)
    ids = with_caption(_read(ids_uri))  # an earlier version's ids.parquet (text) is written again with caption
    gone_mask = matched.mask(ids, keyed=False).to_numpy(zero_copy_only=False)
    names = ids["shard"].to_numpy(zero_copy_only=False)
    shards = [resolve_shard(out, Shard(**s)) for s in infos["shards"]]
    rows = ids["row"].to_numpy().astype(np.int64)
    keys = ids["key"].to_numpy(zero_copy_only=False)
    new_rows = rows.copy()
    for shard in shards:
        mine = np.flatnonzero((names == shard.name) & ~gone_mask)
        if len(mine):
            new_rows[mine] = _current_rows(shard, keys[mine])
    if not force and not gone_mask.any() and np.array_equal(new_rows, rows):
        return {}, {}
    keep = ~gone_mask
    new_id = np.cumsum(keep) - 1
    gone = np.flatnonzero(gone_mask)
    groups = _groups(ids["duplicate_group"].to_numpy().astype(np.int64), keep, new_id)
    removed: dict[str, int] = {}

    new_shards, first = [], 0
    for shard in shards:  # counts from ids.parquet itself: the same whether infos was rewritten before or not
        count = int((keep & (names == shard.name)).sum())
        new_shards.append(replace(shard, count=count, first_id=first))
        first += count
    table = ids.filter(pa.array(keep))
    table = table.set_column(table.schema.get_field_index("row"), "row", pa.array(new_rows[keep], pa.int64()))
    table = table.set_column(
        table.schema.get_field_index("duplicate_group"), "duplicate_group", pa.array(groups, pa.int64())
    )

    for modality in layout.EMBEDDING_FOLDERS:
        uri = layout.index_file(index_dir, modality)
        index = read_index(uri)
        if index.ntotal != len(table):  # else: an earlier, interrupted takedown removed them already
            if not (index.ntotal == len(ids) and remove_vectors(index, gone, new_id)):
                index = _rebuild(new_shards, table, modality, infos)
            write_index(index, uri)
            removed[uri] = len(gone)
        infos[modality]["vectors"] = int(index.ntotal)
        infos[modality]["memory_bytes"] = index_memory(infos[modality]["index_key"], index.ntotal, index.d)
    write_ids(ids_uri, [table])
    removed[ids_uri] = len(gone)
    removed[publish_clip_metadata(index_dir)] = len(gone)  # metadata/: ids.parquet for clip-retrieval back
    own = np.arange(len(table), dtype=np.int64)
    before = infos["count"]  # as infos recorded it: ids.parquet may have lost the rows in an interrupted run
    infos["count"] = len(table)
    infos["shards"] = [asdict(s) for s in new_shards]
    infos["sources"] = [absolute(s) for s in infos.get("sources", [])]
    duplicates = groups != own
    infos.setdefault("near_duplicates", {}).update(
        duplicates=int(duplicates.sum()), groups=len(np.unique(groups[duplicates]))
    )
    _count(infos, before - len(table))
    write_json(infos_uri, infos)
    removed[infos_uri] = before - len(table)
    marks = {
        s.dataset_part: (
            table["key"].slice(s.first_id, s.count).combine_chunks(),
            groups[s.first_id : s.first_id + s.count],
            s.first_id,
        )
        for s in new_shards
        if s.dataset_part
    }
    return removed, marks


def _rebuild(shards: list[Shard], ids: pa.Table, modality: str, infos: dict) -> faiss.Index:
    """The modality's index built again, with the same index key, from the rewritten embeddings."""
    rows = ids["row"].to_numpy()
    parts = [Part(s.name, s.vectors(modality), rows[s.first_id : s.first_id + s.count]) for s in shards if s.count]
    stored = {k: v for k, v in (infos.get("settings") or {}).items() if k in IndexSettings.model_fields}
    settings = IndexSettings(**(stored | {"index_key": infos[modality]["index_key"]}))
    return build(parts, settings)[0]


# ---- dataset/, pairs/ and every other parquet file under OUT


def _with_marks(table: pa.Table, mark: tuple) -> pa.Table:
    """duplicate_group / near_duplicate of the dataset rows from the index's new groups (nulls: not indexed)."""
    keys, groups, first_id = mark
    if "duplicate_group" not in table.column_names:
        return table
    where = pc.index_in(table["key"], value_set=keys)
    present = where.is_valid().to_numpy(zero_copy_only=False)
    local = pc.fill_null(where, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    group = groups[local] if len(groups) else np.zeros(len(local), np.int64)
    duplicate = (group != first_id + local) & present
    for name, column in (
        ("duplicate_group", pa.array(group, pa.int64(), mask=~present)),
        ("near_duplicate", pa.array(duplicate, pa.bool_())),
    ):
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def rewrite_parquets(out: str, matched: Matched, marks: dict[str, tuple], run: str = "") -> dict[str, int]:
    """The matched rows out of the other parquet files of OUT's output folders: dataset/ (rows removed, new
    near-duplicate marks) and pairs/ with its staging and dedup files (rows blanked in place, so that the
    download's shard slices and keys stay those of the run; the pairs stats marked with the takedown `run`).
    A file is rewritten only when it changes."""
    removed: dict[str, int] = {}
    skip = {layout.ids_file(layout.index_dir(out)), layout.clip_metadata_file(layout.index_dir(out))}
    images, meta = layout.images_dir(out).rstrip("/") + "/", layout.metadata_dir(layout.embeddings_dir(out))
    pairs = layout.pairs_dir(out)
    in_pairs = pairs.rstrip("/") + "/"
    for uri in parquet_files(out):
        if uri in skip or uri.startswith(images) or uri.startswith(meta.rstrip("/") + "/"):
            continue
        table = _read(uri)
        hit = matched.mask(table, is_keyed(out, uri))
        n = int(pc.sum(hit).as_py() or 0)
        if not n:
            kept = table
        elif uri.startswith(in_pairs):
            kept = blank(table, hit)
        else:
            kept = table.filter(pc.invert(hit))
        if uri in marks:
            kept = _with_marks(kept, marks[uri])
        if not n and kept.equals(table):
            continue
        name = name_of(uri).removesuffix(".parquet")
        stats_uri = layout.pairs_stats(pairs, name)
        if n and uri == layout.pairs_file(pairs, name) and exists(stats_uri):
            stats = read_json(stats_uri)
            if not _adjusted(stats, run):  # written before the pairs file, whose rows a resumed run redoes
                stats["kept"] = stats.get("kept", n) - n
                _count(stats, n)
                write_json(stats_uri, stats)
            removed[stats_uri] = n
        _write_table(uri, kept)
        removed[uri] = n
    return removed


# ---- the stages' run summaries (_summary.json), from the per-file stats they sum


def _sum(stats: list[dict], name: str) -> int:
    return sum(int(s.get(name) or 0) for s in stats)


def _statuses(stats: list[dict]) -> dict[str, int]:
    status: dict[str, int] = {}
    for one in stats:
        for name, n in (one.get("status") or {}).items():
            status[name] = status.get(name, 0) + n
    return status


def rewrite_summaries(out: str) -> dict[str, int]:
    """images/, pairs/ and dataset/ _summary.json: their counts summed again over the per-file stats (absolute:
    the same however often it runs); a summary is written only when it changes."""
    images, pairs, dataset = layout.images_dir(out), layout.pairs_dir(out), layout.dataset_dir(out)
    shard_stats = [read_json(layout.shard_stats(images, layout.shard_stem(t))) for t in layout.published_shards(images)]
    shard_stats = [s for s in shard_stats if s]
    pair_stats = [read_json(u) for u in layout.published_pairs_stats(pairs)] if exists(pairs) else []
    part_stats = [read_json(u) for u in listdir(dataset, layout.SHARD_STATS_SUFFIX)] if exists(dataset) else []
    wanted = {
        images: {"count": _sum(shard_stats, "count"), "successes": _sum(shard_stats, "successes")}
        | {"status": _statuses(shard_stats)}
        | img2dataset_counts(_statuses(shard_stats)),
        pairs: {"kept": _sum(pair_stats, "kept")},
        dataset: {name: _sum(part_stats, name) for name in ("samples", "embedded", "kept")}
        | {"status": _statuses(part_stats)},
    }
    changed: dict[str, int] = {}
    for folder, counts in wanted.items():
        uri = layout.summary_file(folder)
        if not exists(uri):
            continue
        summary = read_json(uri)
        new = summary | {k: v for k, v in counts.items() if k in summary}
        if new != summary:
            write_json(uri, new)
            changed[uri] = 0
    return changed
