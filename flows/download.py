"""Flow `download_images`: pairs -> OUT/images/ shards, webdataset, files or parquet (one task per shard)."""

from __future__ import annotations

import functools

from prefect import flow, get_run_logger
from prefect.tasks import exponential_backoff

from clipcrawl.flows.artifacts import publish_stage
from clipcrawl.flows.runner import failure_listing, gather, result_storage, stopwatch, task_runner
from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.layout import images_dir, inputs_staging, summary_file
from clipcrawl.tasks.core.stats import run_label
from clipcrawl.tasks.core.uri import write_json
from clipcrawl.tasks.download.shards import plan_download
from clipcrawl.tasks.download.stage import download_shard_task, summarize


class DownloadFailed(RuntimeError):
    """Some shards could not be written; the others were published."""


@flow(name="download_images", task_runner=task_runner(), log_prints=True)
def download_images(
    pairs: str, out: str, settings: DownloadSettings = DownloadSettings(), results: str | None = None
) -> dict:
    """Download the images of OUT/pairs/ (or img2dataset's inputs: txt, csv, tsv, json, jsonl, parquet files,
    docs/download.md "Inputs") into OUT/images/."""
    logger, elapsed, label = get_run_logger(), stopwatch(), run_label(out)
    inputs, specs = plan_download(pairs, settings.shard_size, settings, inputs_staging(out))
    logger.info(
        "downloading %d shards of up to %d samples from %d input files", len(specs), settings.shard_size, len(inputs)
    )
    download = download_shard_task.with_options(
        retries=2,
        retry_delay_seconds=exponential_backoff(backoff_factor=10),
        retry_jitter_factor=0.5,
        timeout_seconds=settings.shard_timeout,
        result_storage=result_storage(out, results),
    )
    futures = {spec.shard: functools.partial(download.submit, spec, out, settings) for spec in specs}
    done, failed = gather(futures, "download", label)
    summary = summarize(list(done.values()), failed) | {"wall_seconds": elapsed()}
    write_json(summary_file(images_dir(out)), summary)
    publish_stage("download", label, images_dir(out), futures, done, failed, summary["wall_seconds"])
    logger.info(
        "images: %d of %d samples downloaded (%s)",
        summary["successes"],
        summary["count"],
        ", ".join(f"{k} {v}" for k, v in sorted(summary["status"].items())),
    )
    if failed:
        raise DownloadFailed(f"{len(failed)} of {len(specs)} shards failed: {failure_listing(failed, 'shard ')}")
    return summary
