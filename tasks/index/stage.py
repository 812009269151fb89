"""The index stage over embeddings folders: which rows, both indices, ids, near-duplicates, incremental adds.

    plan = plan_index(embeddings, out, settings)    # what is indexed already, what is new, with which settings
    image = index_modality(plan, "image")           # build (or extend) OUT/index/image.index, tune it
    text = index_modality(plan, "text")
    infos = finish_index(plan, image, text)         # near-duplicates, ids.parquet, dataset marks, infos

The kept samples of a shard are the rows of its embeddings whose key is in dataset/part-S.parquet
(the similarity filter's output); without a dataset folder every embedded row is indexed, as
clip-retrieval does. An existing index grows by the shards it does not hold yet: a later crawl's
embeddings folder, or new shards in a folder already indexed. It is rebuilt only when asked, when
the settings name another index, or when the grown index would not fit the memory budget with its
current index type. OUT/index/index_infos.json is written last: it is the commit of a run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.cache import transient_retries
from clipcrawl.tasks.core.caption import CAPTION, read_columns
from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import (
    atomic_write,
    exists,
    filesystem,
    is_local,
    listdir,
    open_uri,
    read_json,
    write_json,
)
from clipcrawl.tasks.index.choice import index_memory
from clipcrawl.tasks.index.clip_metadata import ensure_clip_metadata, publish_clip_metadata
from clipcrawl.tasks.index.ids import IdTable, write_ids
from clipcrawl.tasks.index.neardup import near_duplicate_groups
from clipcrawl.tasks.index.train import add, build, index_gpus, read_index, set_threads, write_index
from clipcrawl.tasks.index.tune import apply_params, exact_knn, tune
from clipcrawl.tasks.index.vectors import Part, sample_vectors, vector_batches
from clipcrawl.tasks.takedown.log import Tombstones, tombstones

log = logging.getLogger(__name__)

OTHER = {"image": "text", "text": "image"}  # held-out queries of an index: the other modality's embeddings


class IndexInconsistent(RuntimeError):
    """The index files on disk do not match index_infos.json (an interrupted run): rebuild."""


@dataclass(frozen=True)
class Shard:
    """One embeddings shard of the index: ids first_id .. first_id + count - 1."""

    name: str  # unique in the index: ids.parquet's `shard`
    stem: str  # the file stem in its embeddings folder
    embeddings: str  # the embeddings folder
    dataset: str | None  # the dataset folder whose part-{stem}.parquet lists the kept rows
    tar: str | None  # the webdataset shard holding the images
    count: int
    first_id: int

    def vectors(self, modality: str) -> str:
        return layout.embedding_npy(self.embeddings, modality, self.stem)

    @property
    def metadata(self) -> str:
        return layout.metadata_file(self.embeddings, self.stem)

    @property
    def dataset_part(self) -> str | None:
        return layout.dataset_part(self.dataset, self.stem) if self.dataset else None

    @property
    def dataset_stats(self) -> str | None:
        """Embed's stats of the shard (its tar, the CLIP model), when the dataset folder is known."""
        return layout.dataset_stats(self.dataset, self.stem) if self.dataset else None


@dataclass(frozen=True)
class Plan:
    out: str
    shards: tuple[Shard, ...]  # all shards, in id order
    new_from: int  # shards[new_from:] are not in the index yet
    mode: str  # "build" (from scratch), "add" (extend the index) or "none"
    sources: tuple[str, ...]  # embeddings folders, in the order they were first indexed
    existing: dict | None  # the index_infos.json being extended
    settings: IndexSettings  # what this run builds with: an add's are the index's own (add_settings)
    gone: Tombstones = Tombstones()  # samples a takedown removed from OUT: never indexed again

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def old_count(self) -> int:
        return sum(s.count for s in self.shards[: self.new_from])

    @property
    def index(self) -> str:
        """The index folder, OUT/index."""
        return layout.index_dir(self.out)


def _keys(uri: str) -> pa.Array:
    return pq.read_table(open_uri(uri), columns=["key"])["key"].combine_chunks()


def kept_rows(shard: Shard, gone: Tombstones | None = None) -> np.ndarray | None:
    """Rows of the shard's embeddings that the dataset kept and no takedown removed, ascending (None: every row)."""
    rows = None
    if shard.dataset_part:
        keys = _keys(shard.metadata)
        rows = np.flatnonzero(pc.is_in(keys, value_set=_keys(shard.dataset_part)).to_numpy(zero_copy_only=False))
    if gone:
        with open_uri(shard.metadata) as f:
            names = pq.ParquetFile(f).schema_arrow.names
        meta = pq.read_table(open_uri(shard.metadata), columns=[c for c in ("url", "uid", "sha256") if c in names])
        column = lambda c: meta[c].to_pylist() if c in names else None  # noqa: E731
        alive = ~gone.mask(meta["url"].to_pylist(), column("uid"), column("sha256"))
        rows = np.flatnonzero(alive) if rows is None else rows[alive[rows]]
    return rows


def find_shards(
    embeddings: str, dataset: str | None, source: int, first_id: int, known: set[str], gone: Tombstones | None = None
) -> list[Shard]:
    """The complete shards of an embeddings folder whose stems are not in `known`, numbered from first_id."""
    shards = []
    for meta in listdir(layout.metadata_dir(embeddings), ".parquet"):
        stem = layout.metadata_stem(meta)
        if stem in known:
            continue
        probe = Shard(stem, stem, embeddings, dataset, None, 0, 0)
        if not all(exists(probe.vectors(m)) for m in layout.EMBEDDING_FOLDERS):
            log.warning("skipping shard %s of %s: its embeddings are incomplete", stem, embeddings)
            continue
        if dataset and not exists(probe.dataset_part):
            log.warning("skipping shard %s of %s: no %s", stem, embeddings, probe.dataset_part)
            continue
        stats = probe.dataset_stats
        tar = read_json(stats).get("tar") if stats and exists(stats) else None
        rows = kept_rows(probe, gone)
        count = len(rows) if rows is not None else pq.ParquetFile(open_uri(probe.metadata)).metadata.num_rows
        name = stem if source == 0 else f"{source}-{stem}"
        shards.append(Shard(name, stem, embeddings, dataset, tar, count, first_id))
        first_id += count
    return shards


def absolute(uri: str | None) -> str | None:
    """A local path made absolute (file:// dropped), a remote URI without its trailing slash; None stays None."""
    if not uri:
        return uri
    return os.path.abspath(uri.removeprefix("file://")) if is_local(uri) else uri.rstrip("/")


def plan_index(
    embeddings: str, out: str, settings: IndexSettings, dataset: str | None = None, rebuild: bool = False
) -> Plan:
    """What to index: the shards already in OUT/index (kept), and the new shards of EMBEDDINGS.

    Local folders are recorded as absolute paths (index_infos.json is read from other working directories: the
    search server, a takedown); an index recorded with relative paths has them resolved against this one."""
    embeddings, dataset = absolute(embeddings), absolute(dataset) if dataset else dataset
    if dataset is None and exists(layout.dataset_beside(embeddings)):
        dataset = layout.dataset_beside(embeddings)
    infos_uri = layout.index_infos(layout.index_dir(out))
    existing = read_json(infos_uri) if exists(infos_uri) and not rebuild else None
    gone = tombstones(out)
    if existing is None:
        shards = find_shards(embeddings, dataset, 0, 0, set(), gone)
        return Plan(out, tuple(shards), 0, "build" if shards else "none", (embeddings,), None, settings, gone)

    settings = add_settings(existing, settings, infos_uri)

    old = [
        Shard(**(s | {"embeddings": absolute(s["embeddings"]), "dataset": absolute(s["dataset"])}))
        for s in existing["shards"]
    ]
    sources = [absolute(s) for s in existing["sources"]]
    if embeddings not in sources:
        sources.append(embeddings)
    source = sources.index(embeddings)
    known = {s.stem for s in old if s.embeddings == embeddings}
    new = find_shards(embeddings, dataset, source, existing["count"], known, gone)
    plan = Plan(out, tuple(old + new), len(old), "add" if new else "none", tuple(sources), existing, settings, gone)
    if not new:
        ensure_clip_metadata(plan.index)  # an index of an earlier version gains index/metadata/
    wanted = settings.index_key or existing["image"]["index_key"]
    budget = settings.max_index_memory_gb * 2**30
    if new and (wanted != existing["image"]["index_key"] or index_memory(wanted, plan.count, existing["dim"]) > budget):
        log.info(
            "rebuilding the index: %s at %d vectors does not fit the settings",
            existing["image"]["index_key"],
            plan.count,
        )
        return Plan(out, tuple(old + new), 0, "build", tuple(sources), None, settings, gone)
    return plan


# What the index's rows mean: changed by an add, old and new rows would follow two rules in one index.
INDEX_RULES = ("near_duplicate_threshold", "near_duplicate_neighbours", "drop_near_duplicates")
# How this machine runs, not what the index is: never taken from the stored settings.
RUN_SETTINGS = ("threads", "device", "add_batch_rows")


class SettingsMismatch(InputError):
    """An add asked for other index rules than the index was built with."""


def add_settings(existing: dict, settings: IndexSettings, infos_uri: str) -> IndexSettings:
    """The settings of an add to an existing index: the ones the index was built with (index_infos.json
    "settings"), over which go those the caller set explicitly; SettingsMismatch when one of those contradicts
    an INDEX_RULES setting of the index (a new rule needs a rebuild)."""
    stored = {
        name: value
        for name, value in (existing.get("settings") or {}).items()
        if name in IndexSettings.model_fields and name not in RUN_SETTINGS
    }
    given = settings.model_dump(include=settings.model_fields_set)
    clashes = [
        f"{name} {given[name]!r} (the index was built with {stored[name]!r})"
        for name in INDEX_RULES
        if name in given and name in stored and given[name] != stored[name]
    ]
    if clashes:
        raise SettingsMismatch(
            f"{infos_uri}: cannot add with {', '.join(clashes)}: leave it unset to use the index's, "
            "or rebuild the index (--rebuild)"
        )
    return IndexSettings(**(stored | given))


def part(shard: Shard, modality: str, ids: IdTable | None = None, gone: Tombstones | None = None) -> Part:
    """The vectors of a shard to index; rows of a shard already indexed come from ids.parquet."""
    if ids is not None:
        rows = ids.column_range("row", shard.first_id, shard.first_id + shard.count).astype(np.int64)
    else:
        rows = kept_rows(shard, gone)
    return Part(shard.name, shard.vectors(modality), rows)


def parts(plan: Plan, modality: str, ids: IdTable | None = None) -> list[Part]:
    """Every shard's part in id order (old shards' rows read from ids.parquet when extending)."""
    return [part(s, modality, ids if i < plan.new_from else None, plan.gone) for i, s in enumerate(plan.shards)]


def _ids(plan: Plan) -> IdTable | None:
    return IdTable(layout.ids_file(plan.index)) if plan.mode == "add" else None


def index_modality(plan: Plan, modality: str) -> dict:
    """Build or extend OUT/index/{modality}.index, measure recall@k and latency, tune it; its infos."""
    settings = plan.settings
    set_threads(settings, side_by_side=len(layout.EMBEDDING_FOLDERS))  # the image and the text index are built at once
    gpus = index_gpus(settings)  # device=cuda without a GPU fails here, before any work
    ids = _ids(plan)
    all_parts = parts(plan, modality, ids)
    uri = layout.index_file(plan.index, modality)
    started = time.perf_counter()
    if plan.mode == "build":
        index, key = build(all_parts, settings)
    else:
        index, key = read_index(uri), plan.existing[modality]["index_key"]
        if index.ntotal != plan.old_count:
            raise IndexInconsistent(
                f"{uri} holds {index.ntotal} vectors but index_infos.json says "
                f"{plan.old_count} (an interrupted run?): index again with --rebuild"
            )
        add(index, all_parts[plan.new_from :], settings.add_batch_rows)
    built_s = time.perf_counter() - started
    log.info("%s index %s: %d vectors in %.1f s", modality, key, index.ntotal, built_s)

    queries = sample_vectors(parts(plan, OTHER[modality], ids), settings.queries, settings.seed)
    _, truth = exact_knn(queries, all_parts, settings.k, settings.add_batch_rows, gpus)
    tuned = tune(index, queries, truth, settings)
    write_index(index, uri)
    return {
        "index_key": key,
        "vectors": int(index.ntotal),
        "memory_bytes": index_memory(key, index.ntotal, index.d),
        "gpus": gpus,
        ("build_s" if plan.mode == "build" else "add_s"): round(built_s, 3),
        "queries": f"{len(queries)} held-out {OTHER[modality]} embeddings",
        **tuned,
    }


def _id_table(shard: Shard, groups: np.ndarray, gone: Tombstones | None = None) -> pa.Table:
    """ids.parquet rows of a new shard."""
    with open_uri(shard.metadata) as f:
        meta = read_columns(pq.ParquetFile(f), ["key", "url", CAPTION, "similarity"])
    rows = kept_rows(shard, gone)
    if rows is not None:
        meta = meta.take(pa.array(rows))
    return (
        meta.append_column("shard", pa.array([shard.name] * len(meta), pa.string()))
        .append_column("row", pa.array(rows if rows is not None else np.arange(len(meta)), pa.int64()))
        .append_column("duplicate_group", pa.array(groups[shard.first_id : shard.first_id + shard.count]))
    )


def _mark_dataset(shard: Shard, groups: np.ndarray, keys: pa.Array, drop: bool) -> int:
    """Add duplicate_group / near_duplicate to the shard's dataset part (or drop the duplicates); rows dropped.

    `keys` are the shard's keys in id order; a dataset row not in the index gets nulls."""
    table = pq.read_table(open_uri(shard.dataset_part))
    where = pc.index_in(table["key"], value_set=keys)
    present = where.is_valid().to_numpy(zero_copy_only=False)
    ids = shard.first_id + pc.fill_null(where, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    group = pa.array(groups[ids], pa.int64(), mask=~present)
    duplicate = pa.array((groups[ids] != ids) & present, pa.bool_())
    for name, column in (("duplicate_group", group), ("near_duplicate", duplicate)):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    before = len(table)
    if drop:
        table = table.filter(pc.invert(table["near_duplicate"]))
    with atomic_write(shard.dataset_part) as f:
        pq.write_table(table, f, compression="zstd")
    return before - len(table)


def finish_index(plan: Plan, image: dict, text: dict) -> dict:
    """Near-duplicate groups, ids.parquet, the dataset marks, then index_infos.json (the commit)."""
    settings = plan.settings
    set_threads(settings)
    old = _ids(plan)
    groups = np.arange(plan.count, dtype=np.int64)
    if old is not None:
        groups[: plan.old_count] = old.column("duplicate_group")
    index = read_index(layout.index_file(plan.index, "image"))
    apply_params(index, image["params"])
    new_parts = parts(plan, "image")[plan.new_from :]

    def batches():
        first = plan.old_count
        for vectors in vector_batches(new_parts, settings.add_batch_rows):
            yield first, vectors
            first += len(vectors)

    started = time.perf_counter()
    updated, links = near_duplicate_groups(
        index, batches(), groups, settings.near_duplicate_threshold, settings.near_duplicate_neighbours
    )
    changed = updated != groups
    log.info("near-duplicates: %d links, %.1f s", links, time.perf_counter() - started)

    def tables():
        if old is not None:
            first = 0
            for table in old.tables():
                yield table.set_column(
                    table.schema.get_field_index("duplicate_group"),
                    "duplicate_group",
                    pa.array(updated[first : first + len(table)]),
                )
                first += len(table)
        for shard in plan.shards[plan.new_from :]:
            yield _id_table(shard, updated, plan.gone)

    ids_uri, staged = layout.ids_file(plan.index), layout.staged_ids(plan.index)
    write_ids(staged, tables())
    dropped = 0
    written = IdTable(staged)
    for i, shard in enumerate(plan.shards):
        span = slice(shard.first_id, shard.first_id + shard.count)
        if shard.dataset_part and (i >= plan.new_from or changed[span].any()):
            keys = written.column_range("key", span.start, span.stop)
            dropped += _mark_dataset(shard, updated, pa.array(keys, pa.string()), settings.drop_near_duplicates)
    _publish(staged, ids_uri)
    publish_clip_metadata(plan.index)  # index/metadata/, as clip-retrieval back reads it

    duplicates = int((updated != np.arange(plan.count)).sum())
    infos = {
        "dim": index.d,
        "count": plan.count,
        "clip": _clip(plan),
        "sources": list(plan.sources),
        "shards": [asdict(s) for s in plan.shards],
        "image": image,
        "text": text,
        "near_duplicates": {
            "threshold": settings.near_duplicate_threshold,
            "duplicates": duplicates,
            "groups": len(np.unique(updated[updated != np.arange(plan.count)])),
            "dropped": bool(settings.drop_near_duplicates),
            "dropped_rows": dropped,
        },
        "settings": settings.model_dump(mode="json"),
    }
    write_json(layout.index_infos(plan.index), infos)
    return infos


def _publish(tmp: str, uri: str) -> None:
    """Move a finished file into place (ids.parquet is read while its successor is written)."""
    fs, path = filesystem(tmp)
    fs.mv(path, filesystem(uri)[1])


def _clip(plan: Plan) -> dict | None:
    """The CLIP model that made the embeddings (from the embed stage's stats), to encode queries alike."""
    if plan.existing and plan.existing.get("clip"):
        return plan.existing["clip"]
    for shard in plan.shards:
        stats = shard.dataset_stats
        clip = read_json(stats).get("clip") if stats and exists(stats) else None
        if clip:
            return clip
    return None


# Prefect task wrappers: one task plans, one per modality builds (the two run side by side), one finishes.
# No result cache: what an index run does depends on the index on disk, which plan_index reads.
# Retried on transient errors only (the embeddings and the index may lie in an object store); each task
# publishes its files atomically, so a retry starts over cleanly.
plan_index_task = task(plan_index, name="plan_index", tags=["clipcrawl", "index"], **transient_retries())
index_modality_task = task(
    index_modality,
    name="index_modality",
    tags=["clipcrawl", "index"],
    task_run_name=lambda parameters: f"index-{parameters['modality']}",
    **transient_retries(),
)
finish_index_task = task(finish_index, name="finish_index", tags=["clipcrawl", "index"], **transient_retries())
