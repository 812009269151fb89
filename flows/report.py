"""Flow `build_report`: OUT's stats files -> OUT/report/index.html + stats.json, Prefect artifacts,
and the quality gates (a crossed gate fails the run, or warns, per setting)."""

from __future__ import annotations

import functools

from prefect import flow, get_run_logger

from clipcrawl.flows.artifacts import publish_report
from clipcrawl.flows.runner import cpu_work, gather, task_runner, wait_result
from clipcrawl.tasks.core.config import ReportSettings
from clipcrawl.tasks.core.stats import run_label
from clipcrawl.tasks.report.gates import failures
from clipcrawl.tasks.report.stage import finish_report_task, report_shard_task, report_shards


class ReportFailed(RuntimeError):
    """The report could not be made from OUT's files."""


class QualityGateFailed(RuntimeError):
    """The run's outputs crossed a quality gate whose action is fail."""


@flow(name="build_report", task_runner=task_runner(), log_prints=True)
def build_report(out: str, settings: ReportSettings = ReportSettings(), ground_truth: str | None = None) -> dict:
    """Summarise every stage's outputs under OUT into OUT/report/, publish the artifacts, check the gates.

    ground_truth: a manifest pairs.parquet (url, text, matches) to measure the CLIP filter against."""
    logger = get_run_logger()
    label = run_label(out)
    stems = report_shards(out)
    logger.info("report over %s: %d image shards", out, len(stems))
    futures = {stem: functools.partial(report_shard_task.submit, out, stem, settings, ground_truth) for stem in stems}
    done, failed = gather(futures, "report", label=label)
    if failed:
        raise ReportFailed("; ".join(f"shard {stem}: {why}" for stem, why in sorted(failed.items())))
    with cpu_work():
        report = wait_result(finish_report_task.submit(out, [done[s] for s in stems], settings, ground_truth), "report")
    stats = report["stats"]
    publish_report(out, label, stats, report["report"])
    for step in stats["funnel"]:
        logger.info("funnel %-24s %s", step["step"], "-" if step["count"] is None else step["count"])
    for gate in failures(stats["gates"], "warn"):
        logger.warning(gate["message"])
    failing = failures(stats["gates"], "fail")
    if failing:
        raise QualityGateFailed("; ".join(gate["message"] for gate in failing))
    logger.info("report: %s", report["report"])
    return {
        "report": report["report"],
        "stats": report["stats_uri"],
        "rates": stats["rates"],
        "gates": [{k: g[k] for k in ("gate", "value", "threshold", "action", "passed")} for g in stats["gates"]],
    }
