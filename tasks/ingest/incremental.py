"""One ingest run against the uid store: which files are new, the dedup plan, the commit, and the crawl's summary.

A file is committed once its pairs are published and the store lists it (files.parquet). A run ingests only
the files that are not committed with the run's extract settings: a committed file costs nothing, a file
committed with other settings is extracted and published again (its old rows leave the store). The order of
a run, each step leaving a state the next run finishes:
  extract new files to pairs/_staging/  ->  dedup tasks write losers + the store's _next/  ->  publish
  ->  commit: each partition replaced by its next contents, then files.parquet  ->  staging removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.stats import segment_of
from clipcrawl.tasks.core.uri import exists, filesystem, is_local, join, listdir, name_of, read_json
from clipcrawl.tasks.ingest import dedup, uidstore
from clipcrawl.tasks.ingest.stage import output_names, summarize


@dataclass
class Run:
    """What one run over OUT does: `new` files (uri, name) in run order, the others `committed` (names)."""

    store: str
    pairs: str
    partitions: int
    digest: str
    new: list[tuple[str, str]]
    committed: list[str]
    refresh: set[str] = field(default_factory=set)  # new files whose staging cannot serve a cached extraction
    listed: list[str] = field(default_factory=list)  # the run's URIs, each once, in order
    # (name, URI published from, URI listed now) of committed files listed from another location: the name is
    # the file's identity, so they are not ingested again (a crawl read over S3 after HTTPS is the same crawl)
    elsewhere: list[tuple[str, str, str]] = field(default_factory=list)


def plan(store: str, pairs: str, uris: list[str], settings: ExtractSettings, partitions: int) -> Run:
    """Open (or create) the store, name the run's files (stage.output_names; a file listed twice is one file) and
    split them into committed and new. A new file's cached extraction may be used only when its staging holds
    this very extraction (the staged stats name the source and the settings): staging is removed once a file is
    committed, a file may be ingested again later, and a run stopped early may leave the staging of another
    source of the same name."""
    check_store(store, layout.uid_store(pairs), pairs)
    partitions = uidstore.open_store(store, partitions)
    digest = uidstore.settings_digest(settings)
    files = uidstore.read_files(store)
    mine = files.filter(pc.equal(files.column("pairs"), uidstore.pairs_name(store, pairs)))
    names, sources, digests = (mine.column(c).to_pylist() for c in ("name", "uri", "digest"))
    published = {name: (source, d) for name, source, d in zip(names, sources, digests)}
    listed = list(dict.fromkeys(uris))
    new, committed, elsewhere = [], [], []
    for uri, name in zip(listed, output_names(listed, {name: source for name, (source, _) in published.items()})):
        source, d = published.get(name, (None, None))
        if d != digest:
            new.append((uri, name))
            continue
        committed.append(name)
        if source != uri:
            elsewhere.append((name, source, uri))
    staged = staged_names(pairs)
    reusable = [(uri, name) for uri, name in new if name in staged]
    stats = read_jsons([layout.staged_stats(pairs, name) for _, name in reusable])
    cached = {
        name for (uri, name), s in zip(reusable, stats) if s.get("uri") == uri and s.get("extract_digest") == digest
    }
    refresh = {name for _, name in new if name not in cached}
    return Run(store, pairs, partitions, digest, new, committed, refresh, listed, elsewhere)


def check_store(store: str, other: str, pairs: str) -> None:
    """Refuse a run of the pairs folder `pairs` against `store` when `other`, another store, lists files of it:
    they would be extracted and published again, and `store` would lack their pairs (cross_crawl switched for an
    OUT ingested before, or another --dedup-store)."""
    if uidstore.path_of(store) != uidstore.path_of(other) and (n := len(committed_sources(other, pairs))):
        raise uidstore.StoreError(
            f"{pairs}: {n} files were published against the uid store {other}, not {store}: a run against "
            f"{store} would extract and publish them again; ingest into another OUT, or against {other}"
        )


def committed_sources(store: str, pairs: str) -> dict[str, str]:
    """{name: URI published from} of the committed files of the pairs folder `pairs` (none: no such store)."""
    if not exists(layout.store_config(store)):
        return {}
    files = uidstore.read_files(store)
    mine = files.filter(pc.equal(files.column("pairs"), uidstore.pairs_name(store, pairs)))
    return dict(zip(mine.column("name").to_pylist(), mine.column("uri").to_pylist()))


def prepare_dedup(run: Run, order: list[tuple[str, str]], new_uids: int, rows_per_task: int) -> list[tuple]:
    """Record the run's extracted files (in run order) for the dedup tasks; their arguments (first, last,
    losers URI), one tuple a task."""
    folder = uidstore.pairs_name(run.store, run.pairs)
    keys = [uidstore.file_key(folder, name) for _, name in order]
    uidstore.write_new_files(run.store, keys, [layout.staged_uids(run.pairs, name) for _, name in order])
    ranges = dedup.task_ranges(run.partitions, new_uids, rows_per_task)
    return [(first, last, layout.staged_losers(run.pairs, t)) for t, (first, last) in enumerate(ranges)]


def before_publish(run: Run) -> None:
    """Once the dedup is done, before the run's files are published: those committed before (the run ingests
    them again, with other settings) stop being committed, so a run stopped between their publish and the commit
    leaves them new for the next run, whatever its settings, not listed with the old digest beside the new
    settings' pairs/ files. The dedup counted their stored rows as no one's already (dedup_partitions: `live`);
    a run stopped before this point leaves them as they were."""
    keys, _ = uidstore.read_new_files(run.store)
    files = uidstore.read_files(run.store)
    again = pc.is_in(files.column("key"), value_set=pa.array(keys, pa.uint64()))
    if pc.any(again).as_py():
        uidstore.write_files(run.store, files.filter(pc.invert(again)))


def commit(run: Run, published: dict[str, tuple[str, dict]]) -> None:
    """Make the published files ({name: (uri, stats)}) committed: the store's partitions take their next
    contents, files.parquet lists the files, and their staging and the run's dedup files are removed.

    files.parquet loses every file of the run's dedup (uidstore.read_new_files) that is not published: the
    partitions hold its new winners, not what pairs/ holds of it, so its rows must not stand; the next run
    ingests it again."""
    for p in range(run.partitions):
        uidstore.commit_partition(run.store, p)
    files = uidstore.read_files(run.store)
    folder = uidstore.pairs_name(run.store, run.pairs)
    keys = {uidstore.file_key(folder, name): name for name in published}
    deduped, _ = uidstore.read_new_files(run.store)
    stale = pc.is_in(files.column("key"), value_set=pa.array(list(keys) + deduped.tolist(), pa.uint64()))
    rows = [
        {
            "key": key,
            "pairs": folder,
            "name": name,
            "uri": published[name][0],
            "rows": published[name][1]["kept"],
            "digest": run.digest,
        }
        for key, name in keys.items()
    ]
    added = pa.Table.from_pylist(rows, schema=uidstore.FILES_SCHEMA)
    uidstore.write_files(run.store, pa.concat_tables([files.filter(pc.invert(stale)), added]))
    clean(run, list(published) + leftover_staging(run))


def clean(run: Run, names: list[str]) -> None:
    """Remove the staging of committed files `names`, the run's loser lists and the store's _next/ (and the
    per-run folders of earlier versions)."""
    staging = layout.staging_dir(run.pairs)
    listed = {name_of(u) for u in listdir(staging)}
    doomed = [u for n in names for u in staged_files(run.pairs, n)] + [
        join(staging, n) for n in listed if n.startswith("losers-")
    ]
    folders = [layout.store_next_dir(run.store), layout.legacy_dedup_dir(run.pairs)]
    uidstore.remove([u for u in doomed if name_of(u) in listed] + [u for u in folders if exists(u)])
    if is_local(staging) and exists(staging) and not listdir(staging):
        fs, path = filesystem(staging)
        fs.rmdir(path)


def staged_files(pairs: str, name: str) -> tuple[str, str, str]:
    return layout.staged_pairs(pairs, name), layout.staged_uids(pairs, name), layout.staged_stats(pairs, name)


def leftover_staging(run: Run) -> list[str]:
    """Committed files that still have staging (a run stopped while cleaning up)."""
    suffixes = (layout.PAIRS_STATS_SUFFIX, ".uids.parquet", ".parquet")
    staged = {
        next((n.removesuffix(x) for x in suffixes if n.endswith(x)), n)
        for n in map(name_of, listdir(layout.staging_dir(run.pairs)))
    }
    return [name for name in run.committed if name in staged]


def staged_names(pairs: str) -> set[str]:
    """The files whose extraction is whole in staging (pairs, uids and stats)."""
    listed = {name_of(u) for u in listdir(layout.staging_dir(pairs))}
    suffix = layout.PAIRS_STATS_SUFFIX
    names = {n.removesuffix(suffix) for n in listed if n.endswith(suffix)}
    return {n for n in names if all(name_of(u) in listed for u in staged_files(pairs, n))}


def committed_stats(run: Run) -> list[dict]:
    """The published stats of every file the store lists in this pairs folder, in name order."""
    files = uidstore.read_files(run.store)
    mine = files.filter(pc.equal(files.column("pairs"), uidstore.pairs_name(run.store, run.pairs)))
    names = sorted(mine.column("name").to_pylist())
    return read_jsons([layout.pairs_stats(run.pairs, name) for name in names])


def read_jsons(uris: list[str]) -> list[dict]:
    """JSON files of one filesystem, in order: on an object store in one concurrent request, not one each."""
    if not uris:
        return []
    if is_local(uris[0]):
        return [read_json(u) for u in uris]
    fs, _ = filesystem(uris[0])
    paths = [filesystem(u)[1] for u in uris]
    blobs = fs.cat(paths)
    return [json.loads(blobs[path]) for path in paths]


def carried_failures(previous: dict, uris: list[str], stats: list[dict]) -> dict[str, str]:
    """Failures of earlier runs over files this run did not try and that are not published since."""
    tried = set(uris) | {s["uri"] for s in stats}
    return {f["uri"]: f["error"] for f in previous.get("failed", []) if f["uri"] not in tried}


def segments(uris: list[str], stats: list[dict]) -> list[str]:
    """Every segment this run listed or a committed file came from."""
    return sorted({s for s in [segment_of(u) for u in uris] + [segment_of(s["uri"]) for s in stats] if s})


def previous_summary(pairs: str) -> dict:
    uri = layout.summary_file(pairs)
    return read_json(uri) if exists(uri) else {}


def crawl_summary(run: Run, uris: list[str], failed: dict[str, str], list_segments: bool) -> tuple[dict, dict]:
    """The summary of the whole pairs folder after a run: every committed file's stats (this run's and earlier
    ones'), with the failures of this run and the earlier ones not retried since. Returns it and every failure."""
    everything = committed_stats(run)
    failed = failed | carried_failures(previous_summary(run.pairs), uris, everything)
    summary = summarize(everything, failed) | {
        "segments": segments(uris, everything) if list_segments else None,
        "new_files": len(run.new),
    }
    return summary, failed
