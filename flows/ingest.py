"""Flow `ingest_crawl`: WAT/WARC files -> OUT/pairs/ (one task per new file), deduplicated against the uid store
of what is published (the crawl's, or one shared by several crawls).
Flow `ingest_new_crawls`: the scheduled ingestion of the crawls not yet ingested, a few segments per run."""

from __future__ import annotations

import functools

from prefect import flow, get_run_logger
from prefect.tasks import exponential_backoff

from clipcrawl.flows.artifacts import publish_stage
from clipcrawl.flows.runner import (
    cluster,
    failure_listing,
    gather,
    result_storage,
    stopwatch,
    task_runner,
)
from clipcrawl.tasks.core.config import IngestSettings
from clipcrawl.tasks.core.layout import crawls_uid_store, pairs_dir, summary_file, uid_store
from clipcrawl.tasks.core.stats import run_label
from clipcrawl.tasks.core.status import RecordStatus
from clipcrawl.tasks.core.uri import join, write_json
from clipcrawl.tasks.ingest import incremental
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
from clipcrawl.tasks.ingest.uidstore import StoreError


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
    folder = pairs_dir(out)
    store = settings.dedup_store or uid_store(folder)
    run = incremental.plan(store, folder, uris, settings.extract, settings.dedup_partitions)
    if len(run.listed) < len(uris):
        logger.warning("%d files are listed more than once: each is ingested once", len(uris) - len(run.listed))
    uris = run.listed
    if run.elsewhere:
        name, before, now = run.elsewhere[0]
        logger.warning(
            "%d files listed are published under their name from another location, and are not ingested again "
            "(a file's name is its identity in pairs/): first %s, published from %s, listed as %s",
            len(run.elsewhere),
            name,
            before,
            now,
        )
    logger.info(
        "ingesting %d files into %s: %d new, %d published before (uid store %s)",
        len(uris),
        out,
        len(run.new),
        len(run.committed),
        store,
    )
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
    refresh = extract.with_options(refresh_cache=True)  # the file's staging is gone: extract it again
    futures = {
        uri: functools.partial((refresh if name in run.refresh else extract).submit, uri, out, name, settings.extract)
        for uri, name in run.new
    }
    extracted, failed = gather(futures, "ingest", label)

    published: dict[str, dict] = {}
    order = [(uri, name) for uri, name in run.new if uri in extracted]
    if order:
        new_uids = sum(extracted[uri]["kept"] for uri, _ in order)
        tasks = incremental.prepare_dedup(run, order, new_uids, settings.dedup_rows_per_bucket)
        dedup_futures = {t[:2]: functools.partial(pairs.dedup_partitions_task.submit, store, *t) for t in tasks}
        _, dedup_failed = gather(dedup_futures, "dedup")
        if dedup_failed:
            first = next(iter(dedup_failed.values()))
            raise IngestFailed(f"dedup against {store} failed for partitions {sorted(dedup_failed)}: {first}")
        losers = [t[2] for t in tasks]
        incremental.before_publish(run)
        publish_futures = {
            uri: functools.partial(pairs.publish_file_task.submit, out, name, i, losers)
            for i, (uri, name) in enumerate(order)
        }
        published, publish_failed = gather(publish_futures, "publish")
        failed |= publish_failed
        incremental.commit(run, {name: (uri, published[uri]) for uri, name in order if uri in published})
    else:
        incremental.clean(run, incremental.leftover_staging(run))

    summary, failed = incremental.crawl_summary(
        run, uris, failed, list_segments=bool(settings.crawl and not settings.inputs)
    )
    summary |= {"crawl": settings.crawl, "wall_seconds": elapsed()}
    write_json(summary_file(folder), summary)
    # the units table lists the files this run worked on: the files published before are in the summary only
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
        raise IngestFailed(f"{len(failed)} of {len(uris)} files failed: {failure_listing(failed)}")
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
    cross_crawl: bool = False,
) -> dict:
    """Scheduled ingestion: the crawls of Common Crawl's collinfo.json (newest first, none older than `oldest`)
    not yet fully ingested under OUT/<crawl>/, at most `max_segments` new segments per run.

    Each crawl's run lists its finished segments with the new ones, and extracts, dedups and publishes only the
    files its uid store does not hold yet: the dedup spans the whole crawl, finished segments cost nothing.
    With `cross_crawl`, every crawl dedups against one store, OUT/_uids: a pair published for one crawl is
    dropped from the crawls ingested after it. A crawl published against the other kind of store (cross_crawl
    switched for an OUT ingested before) fails with the reason: its files would be extracted and published again.
    settings.source says where the crawl files are read from."""
    logger = get_run_logger()
    crawls = [c for c in list_crawls(collinfo) if oldest is None or c >= oldest]
    done = {c: ingested_segments(join(out, c)) for c in crawls}
    plan = plan_new_segments(crawls, lambda c: list_segments(settings.source, c, settings.kind), done, max_segments)
    if not plan:
        logger.info("every crawl listed in %s (since %s) is ingested under %s", collinfo, oldest or "the first", out)
        return {}
    logger.info("ingesting %s", "; ".join(f"{c}: {len(s)} new segments" for c, s in plan.items()))
    ingested, failed = {}, {}
    shared = crawls_uid_store(out)
    with cluster(dask_address, gpu_workers=0) as address:  # ingestion embeds nothing
        for crawl, new in plan.items():
            if not cross_crawl:  # the shared store must not list this crawl (ingest_crawl checks its own store)
                pairs_of_crawl = pairs_dir(join(out, crawl))
                try:
                    incremental.check_store(settings.dedup_store or uid_store(pairs_of_crawl), shared, pairs_of_crawl)
                except StoreError as exc:
                    failed[crawl] = str(exc)
                    continue
            update = {
                "crawl": crawl,
                "segments": None,
                "sample_seed": None,
                "segment_list": done[crawl] + new,
                "inputs": [],
            } | ({"dedup_store": shared} if cross_crawl else {})
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
