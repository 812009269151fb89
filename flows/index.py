"""Flow `build_index`: OUT/embeddings/ -> OUT/index/ (image and text kNN indices, ids, near-duplicates)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from clipcrawl.flows.artifacts import publish_index
from clipcrawl.flows.runner import cpu_work, gather, stopwatch, task_runner, wait_result, work
from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.layout import index_dir
from clipcrawl.tasks.core.stats import run_label
from clipcrawl.tasks.index.stage import finish_index_task, index_modality_task, plan_index_task


class IndexFailed(RuntimeError):
    """The index could not be built or extended; the previous index (if any) is unchanged."""


def summary(infos: dict) -> dict:
    """What a run reports: counts, the chosen indices with their measured recall and latency."""

    def brief(part: dict) -> dict:
        return {
            k: part[k]
            for k in ("index_key", "params", "vectors", "memory_bytes", "k", "recall_at_k", "p50_ms", "p99_ms")
        }

    return {
        "count": infos["count"],
        "shards": len(infos["shards"]),
        "image": brief(infos["image"]),
        "text": brief(infos["text"]),
        "near_duplicates": infos["near_duplicates"],
    }


@flow(name="build_index", task_runner=task_runner(), log_prints=True)
def build_index(
    embeddings: str,
    out: str,
    settings: IndexSettings = IndexSettings(),
    dataset: str | None = None,
    rebuild: bool = False,
) -> dict:
    """Index the kept samples of EMBEDDINGS (clip-retrieval layout) into OUT/index/, adding to an existing index."""
    logger, elapsed, label = get_run_logger(), stopwatch(), run_label(out)
    with cpu_work():
        plan = wait_result(plan_index_task.submit(embeddings, out, settings, dataset, rebuild), "index")
    if plan.mode == "none":
        if plan.existing is None:
            raise InputError(
                f"no embeddings under {embeddings} (want metadata/metadata_S.parquet with "
                "img_emb/img_emb_S.npy and text_emb/text_emb_S.npy, as `clipcrawl embed` writes)"
            )
        logger.info("index of %d vectors already holds every shard of %s", plan.existing["count"], embeddings)
        return summary(plan.existing)
    new = plan.shards[plan.new_from :]
    logger.info(
        "%s: %d new shards, %d vectors (%d indexed before)",
        "building" if plan.mode == "build" else "extending",
        len(new),
        plan.count,
        plan.old_count,
    )
    # device=cuda: the two index tasks go to GPU-tagged workers (auto: CPU workers, which use a GPU they see)
    resource = "GPU" if plan.settings.device == "cuda" else "CPU"
    with work(resource):
        futures = {m: index_modality_task.submit(plan, m) for m in ("image", "text")}
    done, failed = gather(futures, "index", label, resource=resource)
    if failed:
        raise IndexFailed("; ".join(f"{m} index: {why}" for m, why in sorted(failed.items())))
    with cpu_work():
        infos = wait_result(finish_index_task.submit(plan, done["image"], done["text"]), "index")
    result = summary(infos)
    publish_index(label, index_dir(out), infos, elapsed())
    for m in ("image", "text"):
        logger.info(
            "%s index %s (%s): recall@%d %.3f, p50 %.2f ms, p99 %.2f ms",
            m,
            result[m]["index_key"],
            result[m]["params"] or "exact",
            result[m]["k"],
            result[m]["recall_at_k"],
            result[m]["p50_ms"],
            result[m]["p99_ms"],
        )
    logger.info(
        "near-duplicates: %d in %d groups", infos["near_duplicates"]["duplicates"], infos["near_duplicates"]["groups"]
    )
    return result
