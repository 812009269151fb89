"""Flow `ingest_crawl`: WAT/WARC files -> OUT/pairs/ (one task per file), then the cross-file dedup."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.tasks import exponential_backoff

from flows.artifacts import publish_stage
from flows.runner import cpu_work, gather, result_storage, stopwatch, task_runner
from tasks import dedup, pairs
from tasks.config import IngestSettings
from tasks.crawl import crawl_files
from tasks.stats import run_label
from tasks.uri import join, write_json


class IngestFailed(RuntimeError):
    """Some input files could not be read; the others were published."""


@flow(name="ingest_crawl", task_runner=task_runner(), log_prints=True)
def ingest_crawl(out: str, settings: IngestSettings = IngestSettings(), results: str | None = None) -> dict:
    """Extract image-text pairs from a crawl's WAT/WARC files (or explicit URIs) into OUT/pairs/."""
    logger, elapsed = get_run_logger(), stopwatch()
    label = settings.crawl or run_label(out)  # the summary that names the crawl is written at the end
    if settings.inputs:
        uris = list(settings.inputs)
    else:
        uris = crawl_files(settings.source, settings.crawl, settings.kind, settings.segments,
                           settings.segment_list, settings.sample_seed, settings.files_per_segment)
    names = pairs.output_names(uris)
    logger.info("ingesting %d files into %s", len(uris), out)
    storage = result_storage(out, results)
    extract = pairs.extract_file_task.with_options(
        retries=settings.retries, retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_delay),
        retry_jitter_factor=0.5, result_storage=storage)
    with cpu_work():
        futures = {uri: extract.submit(uri, out, name, settings.extract) for uri, name in zip(uris, names)}
    extracted, failed = gather(futures, "ingest", label)

    order = [(uri, name) for uri, name in zip(uris, names) if uri in extracted]
    done_names = [name for _, name in order]
    run_id = pairs.run_digest([extracted[uri] for uri, _ in order])
    buckets = dedup.bucket_count(sum(extracted[u]["kept"] for u, _ in order), settings.dedup_rows_per_bucket)
    find = pairs.find_duplicates_task.with_options(result_storage=storage)
    with cpu_work():
        bucket_futures = {b: find.submit(out, done_names, b, buckets, run_id) for b in range(buckets)}
    dedup_done, dedup_failed = gather(bucket_futures, "dedup")
    if dedup_failed:
        raise IngestFailed(f"dedup pass failed for buckets {sorted(dedup_failed)}: {next(iter(dedup_failed.values()))}")

    loser_uris = [dedup_done[b]["uri"] for b in range(buckets)]
    publish = pairs.publish_file_task.with_options(result_storage=storage)
    with cpu_work():
        publish_futures = {uri: publish.submit(out, name, i, loser_uris) for i, (uri, name) in enumerate(order)}
    published, publish_failed = gather(publish_futures, "publish")
    failed |= publish_failed

    summary = pairs.summarize(list(published.values()), failed, run_id) | {"crawl": settings.crawl,
                                                                           "wall_seconds": elapsed()}
    write_json(join(out, "pairs", "_summary.json"), summary)
    publish_stage("ingest", label, join(out, "pairs"), futures, published, failed, summary["wall_seconds"])
    logger.info("pairs: %d kept from %d files (%d partial, %d failed)", summary["kept"], summary["files"],
                summary["partial"], len(summary["failed"]))
    if failed:
        listing = "; ".join(f"{uri}: {why}" for uri, why in failed.items())
        raise IngestFailed(f"{len(failed)} of {len(uris)} files failed: {listing}")
    return summary
