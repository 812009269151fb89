"""One WAT/WARC file -> OUT/pairs/<name>.parquet: extraction to staging, then cross-file dedup.

Plain functions first (testable without Prefect), thin @task wrappers at the end.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.cache import cache_key, retry_transient
from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.stats import add_counts
from clipcrawl.tasks.core.status import FileStatus, PairStatus
from clipcrawl.tasks.core.uri import atomic_write, name_of, open_uri, write_json
from clipcrawl.tasks.ingest import dedup
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


def output_names(uris: list[str]) -> list[str]:
    """A unique output name per input URI: its file name without WARC suffixes."""
    stems = []
    for uri in uris:
        name = name_of(uri)
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        stems.append(name)
    seen = {s for s in stems if stems.count(s) > 1}
    return [f"{s}-{hashlib.sha1(u.encode()).hexdigest()[:8]}" if s in seen else s for s, u in zip(stems, uris)]


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
    result = stats.to_dict() | {"name": name}
    write_json(layout.staged_stats(pairs, name), result)
    return result


def find_duplicates(out: str, names: list[str], bucket: int, buckets: int, run_id: str) -> dict:
    """One bucket of the cross-file dedup pass (files in the run's order)."""
    uid_uris = [layout.staged_uids(layout.pairs_dir(out), n) for n in names]
    return dedup.find_losers(uid_uris, bucket, buckets, layout.dedup_losers(layout.pairs_dir(out), run_id, bucket))


def summarize(published: list[dict], failed: dict[str, str], run_id: str) -> dict:
    """The run's totals over the published files, and the failed ones with their reasons."""
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
        "run_id": run_id,
        "files": len(published) + len(failed),
        "partial": sum(s["status"] == FileStatus.PARTIAL for s in published),
        "failed": [{"uri": uri, "error": why} for uri, why in failed.items()],
        "dropped": dropped,
        "skipped_records": skipped,
        **{c: sum(s.get(c, 0) for s in published) for c in counters},
    }


def run_digest(results: list[dict]) -> str:
    """Names the dedup pass of one set of extracted files (changes when any file's extraction does)."""
    keys = [{k: v for k, v in r.items() if k != "seconds"} for r in results]
    return cache_key("run", keys)[:16]


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
    cache_key_fn=lambda ctx, p: cache_key("extract", p["uri"], p["out"], p["name"], p["settings"]),
    persist_result=True,
)
find_duplicates_task = task(
    find_duplicates,
    name="find_duplicates",
    task_run_name="dedup-bucket-{bucket}",
    tags=["clipcrawl", "dedup"],
    cache_key_fn=lambda ctx, p: cache_key("dedup", p["out"], p["names"], p["bucket"], p["buckets"], p["run_id"]),
    persist_result=True,
)
publish_file_task = task(
    publish_file,
    name="publish_file",
    task_run_name="publish-{name}",
    tags=["clipcrawl", "publish"],
    # the loser lists are named by the run digest, so the key follows the dedup pass of this very run
    cache_key_fn=lambda ctx, p: cache_key("publish", p["out"], p["name"], p["file_index"], p["loser_uris"]),
    persist_result=True,
)
