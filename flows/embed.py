"""Flow `embed_and_filter`: OUT/images/ shards -> OUT/embeddings/ and OUT/dataset/ (one GPU task per shard)."""

from __future__ import annotations

import functools

from prefect import flow, get_run_logger

from clipcrawl.flows.artifacts import publish_stage
from clipcrawl.flows.runner import failure_listing, gather, result_storage, stopwatch, task_runner
from clipcrawl.tasks.core.cache import transient_retries
from clipcrawl.tasks.core.config import EmbedSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.layout import dataset_dir, published_shards, summary_file
from clipcrawl.tasks.core.stats import run_label
from clipcrawl.tasks.core.uri import name_of, write_json
from clipcrawl.tasks.embed.stage import embed_shard_task, summarize


class EmbedFailed(RuntimeError):
    """Some shards could not be embedded; the others were published."""


@flow(name="embed_and_filter", task_runner=task_runner(), log_prints=True)
def embed_and_filter(
    images: str, out: str, settings: EmbedSettings = EmbedSettings(), results: str | None = None
) -> dict:
    """Embed the image shards of IMAGES with CLIP, tag NSFW, and keep the pairs over the similarity threshold."""
    logger, elapsed, label = get_run_logger(), stopwatch(), run_label(out)
    tars = published_shards(images)
    if not tars:
        raise InputError(
            f"no published image shards under {images} (a shard is N.tar, a folder N/ or N.parquet with "
            "N_stats.json beside it, as `clipcrawl download` writes them)"
        )
    logger.info(
        "embedding %d shards from %s with %s",
        len(tars),
        images,
        settings.checkpoint or f"{settings.model}/{settings.pretrained}",
    )
    embed = embed_shard_task.with_options(
        **transient_retries(),
        timeout_seconds=settings.shard_timeout,
        result_storage=result_storage(out, results),
    )
    futures = {name_of(tar): functools.partial(embed.submit, tar, out, settings) for tar in tars}
    done, failed = gather(futures, "embed", label, resource="GPU")
    summary = summarize(list(done.values()), failed) | {"wall_seconds": elapsed()}
    write_json(summary_file(dataset_dir(out)), summary)
    publish_stage("embed", label, dataset_dir(out), futures, done, failed, summary["wall_seconds"])
    logger.info(
        "dataset: %d of %d embedded samples kept (similarity >= %s), NSFW %s",
        summary["kept"],
        summary["embedded"],
        settings.similarity_threshold,
        summary["nsfw"],
    )
    if failed:
        raise EmbedFailed(f"{len(failed)} of {len(tars)} shards failed: {failure_listing(failed)}")
    return summary
