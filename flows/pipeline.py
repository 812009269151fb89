"""Flow `pipeline`: ingest -> download -> embed_and_filter -> build_index -> build_report, as subflows over one
output location, on one Dask cluster.

Resumable: every stage's units are cached tasks, so rerunning the pipeline after a failure (or retrying its
flow run from the UI) redoes only what did not finish; finished files and shards come back Cached.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from clipcrawl.flows.download import download_images
from clipcrawl.flows.embed import embed_and_filter
from clipcrawl.flows.index import build_index
from clipcrawl.flows.ingest import ingest_crawl
from clipcrawl.flows.report import build_report
from clipcrawl.flows.runner import cluster, result_storage, task_runner
from clipcrawl.tasks.core.config import (
    DownloadSettings,
    EmbedSettings,
    IndexSettings,
    IngestSettings,
    ReportSettings,
)
from clipcrawl.tasks.core.layout import embeddings_dir, images_dir, pairs_dir


@flow(name="pipeline", log_prints=True)
def pipeline(
    out: str,
    ingest: IngestSettings = IngestSettings(),
    download: DownloadSettings = DownloadSettings(),
    embed: EmbedSettings = EmbedSettings(),
    index: IndexSettings = IndexSettings(),
    report: ReportSettings = ReportSettings(),
    ground_truth: str | None = None,
    results: str | None = None,
    dask_address: str | None = None,
) -> dict:
    """Make a LAION-style dataset from a crawl (ingest.crawl + ingest.source) or explicit WAT/WARC URIs
    (ingest.inputs) under OUT: pairs/, images/, embeddings/, dataset/, index/, report/.

    dask_address: the cluster to run on (default: $CLIPCRAWL_DASK_ADDRESS, else a local cluster for the run).
    results: Prefect result storage shared by all workers (default OUT/_results).
    ground_truth: a manifest pairs.parquet (url, text, matches) the report measures the CLIP filter against.
    ingest.extract.consent and download.consent (what sites say of their pages and images) must be alike.
    """
    if ingest.extract.consent != download.consent:  # what a site says of its pages holds for their images too
        raise ValueError(
            "ingest.extract.consent and download.consent differ: set them alike (the consent section of the "
            "command's flags or config file sets both)"
        )
    logger = get_run_logger()
    with cluster(dask_address) as address:
        logger.info("pipeline into %s on the Dask cluster at %s", out, address)
        # a stage's result is kept, so that retrying a failed pipeline run loads its finished stages
        # instead of running them again (Prefect reruns a finished subflow whose result is not persisted)
        options = {
            "task_runner": task_runner(address),
            "persist_result": True,
            "result_storage": result_storage(out, results),
        }

        def stage(subflow, **parameters):
            return subflow.with_options(**options)(**parameters)

        pairs = stage(ingest_crawl, out=out, settings=ingest, results=results)
        images = stage(download_images, pairs=pairs_dir(out), out=out, settings=download, results=results)
        dataset = stage(embed_and_filter, images=images_dir(out), out=out, settings=embed, results=results)
        kept = stage(build_index, embeddings=embeddings_dir(out), out=out, settings=index)
        quality = stage(build_report, out=out, settings=report, ground_truth=ground_truth)
    logger.info(
        "pipeline done: %d pairs, %d images, %d kept, %d indexed; report %s",
        pairs["kept"],
        images["successes"],
        dataset["kept"],
        kept["count"],
        quality["report"],
    )
    return {
        "pairs": pairs["kept"],
        "images": images["successes"],
        "kept": dataset["kept"],
        "indexed": kept["count"],
        "report": quality["report"],
        "rates": quality["rates"],
        "gates": quality["gates"],
    }
