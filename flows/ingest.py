"""Flow `ingest_crawl`: WAT/WARC files -> OUT/pairs/ (one task per file), then the cross-file dedup.
Flow `ingest_new_crawls`: the scheduled ingestion of the crawls not yet ingested, a few segments per run."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.tasks import exponential_backoff

from clipcrawl.flows.artifacts import publish_stage
from clipcrawl.flows.runner import (
    cluster,
    cpu_work,
    gather,
    result_storage,
    stopwatch,
    task_runner,
)
from clipcrawl.tasks.core.config import IngestSettings
from clipcrawl.tasks.core.layout import pairs_dir, summary_file
from clipcrawl.tasks.core.stats import run_label, segment_of
from clipcrawl.tasks.core.status import RecordStatus
from clipcrawl.tasks.core.uri import join, write_json
from clipcrawl.tasks.ingest import dedup
from clipcrawl.tasks.ingest import stage as pairs
from clipcrawl.tasks.ingest.crawl import (
    COLLINFO_URI,
    crawl_files,
    ingested_segments,
    is_common_crawl,
    list_crawls,
    list_segments,
    plan_new_segments,
)


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
        uris = crawl_files(
            settings.source,
            settings.crawl,
            settings.kind,
            settings.segments,
            settings.segment_list,
            settings.sample_seed,
            settings.files_per_segment,
        )
    names = pairs.output_names(uris)
    logger.info("ingesting %d files into %s", len(uris), out)
    storage = result_storage(out, results)
    # a tag-based concurrency limit named commoncrawl (deployments/deploy.sh) caps the requests to Common Crawl
    tags = {"clipcrawl", "extract"} | (
        {"commoncrawl"} if not settings.inputs and is_common_crawl(settings.source) else set()
    )
    extract = pairs.extract_file_task.with_options(
        tags=tags,
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_delay),
        retry_jitter_factor=0.5,
        timeout_seconds=settings.file_timeout,
        result_storage=storage,
    )
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

    segments = sorted({segment_of(uri) for uri in uris}) if settings.crawl and not settings.inputs else None
    summary = pairs.summarize(list(published.values()), failed, run_id) | {
        "crawl": settings.crawl,
        "segments": segments,
        "wall_seconds": elapsed(),
    }
    write_json(summary_file(pairs_dir(out)), summary)
    publish_stage("ingest", label, pairs_dir(out), futures, published, failed, summary["wall_seconds"])
    logger.info(
        "pairs: %d kept from %d files (%d partial, %d failed); records: %d malformed, %d over max_record_bytes "
        "skipped, %d HTML pages cut at it",
        summary["kept"],
        summary["files"],
        summary["partial"],
        len(summary["failed"]),
        summary["malformed_records"],
        summary["skipped_records"].get(RecordStatus.RECORD_TOO_LARGE, 0),
        summary["truncated_pages"],
    )
    if failed:
        listing = "; ".join(f"{uri}: {why}" for uri, why in failed.items())
        raise IngestFailed(f"{len(failed)} of {len(uris)} files failed: {listing}")
    return summary


@flow(name="ingest_new_crawls", log_prints=True)
def ingest_new_crawls(
    out: str,
    settings: IngestSettings = IngestSettings(),
    collinfo: str = COLLINFO_URI,
    max_segments: int = 10,
    oldest: str | None = None,
    results: str | None = None,
    dask_address: str | None = None,
) -> dict:
    """Scheduled ingestion: the crawls of Common Crawl's collinfo.json (newest first, none older than `oldest`)
    not yet fully ingested under OUT/<crawl>/, at most `max_segments` new segments per run.

    Each crawl's run ingests its finished segments again (cache hits) with the new ones, so the cross-file
    dedup spans the whole crawl. settings.source says where the crawl files are read from."""
    logger = get_run_logger()
    crawls = [c for c in list_crawls(collinfo) if oldest is None or c >= oldest]
    done = {c: ingested_segments(join(out, c)) for c in crawls}
    plan = plan_new_segments(crawls, lambda c: list_segments(settings.source, c, settings.kind), done, max_segments)
    if not plan:
        logger.info("every crawl listed in %s (since %s) is ingested under %s", collinfo, oldest or "the first", out)
        return {}
    logger.info("ingesting %s", "; ".join(f"{c}: {len(s)} new segments" for c, s in plan.items()))
    ingested, failed = {}, {}
    with cluster(dask_address, gpu_workers=0) as address:  # ingestion embeds nothing
        for crawl, new in plan.items():
            update = {
                "crawl": crawl,
                "segments": None,
                "sample_seed": None,
                "segment_list": done[crawl] + new,
                "inputs": [],
            }
            state = ingest_crawl.with_options(task_runner=task_runner(address))(
                out=join(out, crawl), settings=settings.model_copy(update=update), results=results, return_state=True
            )
            if state.is_completed():
                summary = state.result()
                ingested[crawl] = {"new_segments": new, "segments": summary["segments"], "kept": summary["kept"]}
            else:
                failed[crawl] = state.message
    if failed:
        raise IngestFailed("; ".join(f"{crawl}: {why}" for crawl, why in failed.items()))
    return ingested
