"""One WAT/WARC file -> OUT/pairs/<name>.parquet: extraction to staging, then the dedup against the uid store
(tasks/ingest/dedup.py, incremental.py), then publishing.

Plain functions first (testable without Prefect), thin @task wrappers at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.cache import cache_key, retry_transient
from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.stats import add_counts
from clipcrawl.tasks.core.status import FileStatus, PairStatus
from clipcrawl.tasks.core.uri import atomic_write, name_of, open_uri, write_json
from clipcrawl.tasks.ingest import dedup, uidstore
from clipcrawl.tasks.ingest.extract import FileStats, iter_pairs

PAIRS_SCHEMA = pa.schema(
    [
        ("uid", pa.uint64()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("page_url", pa.string()),
        ("source", pa.string()),
        ("language", pa.string()),
        ("license", pa.string()),
    ]
)
SUFFIXES = (".warc.wat.gz", ".wat.gz", ".warc.gz", ".warc", ".wat", ".gz")


def output_names(uris: list[str], committed: dict[str, str] | None = None) -> list[str]:
    """A unique output name per input URI (listed once each): its file name without WARC suffixes; files of the same
    name get a hash of their URI after it. A URI published before keeps the name it was published under
    (`committed`: {name: URI}), whatever else a run lists."""
    stems = []
    for uri in uris:
        name = name_of(uri)
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        stems.append(name)
    repeated = {s for s, n in Counter(stems).items() if n > 1}  # not stems.count per stem: a crawl has 90,000 files
    published = {uri: name for name, uri in (committed or {}).items()}
    return [
        published.get(u) or (f"{s}-{hashlib.sha1(u.encode()).hexdigest()[:8]}" if s in repeated else s)
        for s, u in zip(stems, uris)
    ]


def extract_file(uri: str, out: str, name: str, settings: ExtractSettings) -> dict:
    """Extract one file's pairs (deduplicated within the file) into the staging area."""
    stats = FileStats(uri=uri)
    uids: list[np.ndarray] = []
    pairs = layout.pairs_dir(out)
    with (
        atomic_write(layout.staged_pairs(pairs, name)) as f,
        pq.ParquetWriter(f, PAIRS_SCHEMA, compression="zstd") as writer,
    ):
        for batch in iter_pairs(uri, settings, stats):
            source = pa.array([uri] * batch.num_rows, pa.string())
            table = pa.Table.from_batches([batch]).append_column("source", source).select(PAIRS_SCHEMA.names)
            writer.write_table(table.cast(PAIRS_SCHEMA), row_group_size=settings.batch_rows)
            uids.append(batch.column("uid").to_numpy())
    dedup.write_uids(layout.staged_uids(pairs, name), np.concatenate(uids) if uids else np.empty(0, np.uint64))
    result = stats.to_dict() | {"name": name, "extract_digest": uidstore.settings_digest(settings)}
    write_json(layout.staged_stats(pairs, name), result)
    return result


def summarize(published: list[dict], failed: dict[str, str]) -> dict:
    """The totals over the published files (of every run over OUT), and the failed ones with their reasons (a
    file published before that fails in this run counts once in `files`)."""
    dropped: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for stats in published:
        add_counts(dropped, stats["dropped"])
        add_counts(skipped, stats.get("skipped_records", {}))
    counters = (
        "records",
        "responses",
        "html_pages",
        "img_links",
        "with_alt",
        "kept",
        "malformed_records",
        "truncated_pages",
    )
    return {
        "files": len({s["uri"] for s in published} | set(failed)),
        "partial": sum(s["status"] == FileStatus.PARTIAL for s in published),
        "failed": [{"uri": uri, "error": why} for uri, why in failed.items()],
        "dropped": dropped,
        "skipped_records": skipped,
        **{c: sum(s.get(c, 0) for s in published) for c in counters},
    }


def publish_file(out: str, name: str, file_index: int, loser_uris: list[str]) -> dict:
    """Drop the file's cross-file duplicates and publish pairs/<name>.parquet + .stats.json."""
    started = time.monotonic()
    pairs = layout.pairs_dir(out)
    with open_uri(layout.staged_stats(pairs, name), "r") as f:
        stats = json.load(f)
    losers = dedup.losers_of(loser_uris, file_index)
    kept = 0
    with open_uri(layout.staged_pairs(pairs, name)) as src, atomic_write(layout.pairs_file(pairs, name)) as dst:
        reader = pq.ParquetFile(src)
        with pq.ParquetWriter(dst, PAIRS_SCHEMA, compression="zstd") as writer:
            for batch in reader.iter_batches():
                batch = dedup.drop_losers(batch, losers)
                kept += batch.num_rows
                writer.write_batch(batch)
    duplicates = stats["kept"] - kept
    stats["dropped"][PairStatus.DUPLICATE] = stats["dropped"].get(PairStatus.DUPLICATE, 0) + duplicates
    stats |= {
        "kept": kept,
        "duplicates_across_files": duplicates,
        "seconds": stats.get("seconds", 0) + time.monotonic() - started,
    }
    write_json(layout.pairs_stats(pairs, name), stats)  # the completion marker, written last
    return stats


# ---- Prefect wrappers: retries on transient errors, persistent cache keyed on inputs + code version

extract_file_task = task(
    extract_file,
    name="extract_file",
    task_run_name="extract-{name}",
    tags=["clipcrawl", "extract"],
    retry_condition_fn=retry_transient,
    # served from the cache only while the file's staging holds it: the flow refreshes the others
    # (incremental.plan), as staging is removed once a file is committed
    cache_key_fn=lambda ctx, p: cache_key("extract", p["uri"], p["out"], p["name"], p["settings"]),
    persist_result=True,
)
dedup_partitions_task = task(
    dedup.dedup_partitions,
    name="dedup_partitions",
    task_run_name="dedup-{first}-{last}",
    tags=["clipcrawl", "dedup"],
    cache_policy=NO_CACHE,  # reads and writes the store's current state: never served from a cache
)
publish_file_task = task(
    publish_file,
    name="publish_file",
    task_run_name="publish-{name}",
    tags=["clipcrawl", "publish"],
    cache_policy=NO_CACHE,  # the loser lists have fixed names: each run publishes its new files anew
)
