"""Prefect artifacts of the flows: a progress bar per stage run, a table with one row per file or shard,
and a markdown summary under a stable key (f"{stage}-{label}") so the Artifacts page shows its history.

Numbers come from tasks/core/stats.py (unit_counts, top_reasons); this module only formats them. Publishing
never fails a run: an API error is logged as a warning and the flow goes on.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from clipcrawl.tasks.core.stats import add_counts, top_reasons, unit_counts
from clipcrawl.tasks.core.status import FileStatus
from clipcrawl.tasks.core.uri import is_local

PROGRESS_UPDATES = 50  # at most this many progress updates per stage run (one API call each)
API_PAGE = 200  # the most task runs the API returns per call (PREFECT_SERVER_API_DEFAULT_LIMIT)
TABLE_ROWS = 1000  # the most rows of a units table: every failed unit, then the slowest (a crawl has 90,000 files)
RECORD_WAIT_S = 10.0  # the API records the workers' task run states from events, a little after they happen


def artifact_key(*parts) -> str:
    """A key Prefect accepts (lowercase letters, digits, dashes), at most 100 characters."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")
    return key[:100].rstrip("-")


def publish(create, **kwargs):
    """create(**kwargs) through the API; on failure a warning, not a failed run."""
    try:
        return create(**kwargs)
    except Exception as e:  # noqa: BLE001 - an artifact is never worth a failed run
        get_run_logger().warning("artifact %s not published: %s", kwargs.get("key") or create.__name__, e)
        return None


class Progress:
    """A stage run's progress artifact: 0% when its units are submitted, then updated as they finish."""

    def __init__(self, stage: str, label: str, total: int):
        self.stage, self.total = stage, total
        self.every = max(1, math.ceil(total / PROGRESS_UPDATES))
        self.id = publish(
            create_progress_artifact,
            progress=0.0 if total else 100.0,
            key=artifact_key(stage, label, "progress"),
            description=self.describe(0, 0),
        )

    def describe(self, finished: int, failed: int) -> str:
        return f"{self.stage}: {finished}/{self.total} done, {failed} failed"

    def step(self, finished: int, failed: int) -> None:
        """`finished` units of `total` have ended, `failed` of them failed."""
        if self.id and (finished % self.every == 0 or finished == self.total):
            publish(
                update_progress_artifact,
                artifact_id=self.id,
                progress=100.0 * finished / self.total,
                description=self.describe(finished, failed),
            )


def task_runs(ids: list) -> dict:
    """{task run id: TaskRun} as the API recorded them, waiting up to RECORD_WAIT_S for final states."""
    deadline, runs = time.monotonic() + RECORD_WAIT_S, {}
    try:
        with get_client(sync_client=True) as client:
            while True:
                for start in range(0, len(ids), API_PAGE):
                    page = TaskRunFilter(id=TaskRunFilterId(any_=ids[start : start + API_PAGE]))
                    found = client.read_task_runs(task_run_filter=page, sort=TaskRunSort.ID_DESC, limit=API_PAGE)
                    runs |= {r.id: r for r in found}
                recorded = len(runs) == len(ids) and all(r.state and r.state.is_final() for r in runs.values())
                if recorded or time.monotonic() > deadline:
                    return runs
                time.sleep(0.5)
    except Exception as e:  # noqa: BLE001 - the rows fall back to the stats files' seconds
        get_run_logger().warning("task runs not read from the API: %s", e)
        return runs


def one_line(text: str, limit: int = 300) -> str:
    """A message fit for a table cell."""
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unit_rows(stage: str, futures: dict, counts: dict, done: dict, failed: dict) -> list[dict]:
    """One row per unit (file or shard) of a stage run, in submission order."""
    runs = task_runs([f.task_run_id for f in futures.values()])
    rows = []
    for unit, future in futures.items():
        run, count = runs.get(future.task_run_id), counts.get(unit, {})
        if unit in failed:
            state, status, reasons = "Failed", FileStatus.FAILED, one_line(failed[unit])
        else:
            state, reasons = future.state.name, top_reasons(count["reasons"])
            status = done[unit]["status"] if stage == "ingest" else FileStatus.OK
        rows.append(
            {
                "unit": str(unit),
                "state": state,
                "status": str(status),
                "seconds": round(run.total_run_time.total_seconds() if run else count.get("seconds", 0.0), 2),
                "retries": max(0, run.run_count - 1) if run else None,
                "in": count.get("in"),
                "out": count.get("out"),
                "reasons": reasons,
            }
        )
    return rows


def table_rows(rows: list[dict], limit: int = TABLE_ROWS) -> list[dict]:
    """The rows a units table shows: all of them up to `limit`; past it every failed unit, then the slowest, in
    submission order. A row per unit of a crawl would put tens of thousands in the Prefect database each run; the
    stage's markdown summary counts them all."""
    if len(rows) <= limit:
        return rows
    ranked = sorted(range(len(rows)), key=lambda i: (rows[i]["state"] != "Failed", -rows[i]["seconds"]))
    return [rows[i] for i in sorted(ranked[:limit])]


def table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table, numbers right-aligned."""
    align = ["---:" if any(isinstance(r[i], (int, float)) for r in rows) else "---" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows),
    ]


def units_of(stage: str) -> str:
    return "files" if stage == "ingest" else "shards"


def stage_markdown(
    stage: str, label: str, output: str, rows: list[dict], reasons: dict, wall_seconds: float | None
) -> str:
    kind = units_of(stage)
    states = {s: sum(r["state"] == s for r in rows) for s in ("Completed", "Cached", "Failed")}
    items_in, items_out = (sum(r[k] or 0 for r in rows) for k in ("in", "out"))
    wall = "-" if wall_seconds is None else f"{wall_seconds:.1f} s"
    lines = [
        f"# {stage}: {label}",
        "",
        f"Output: `{output}`",
        "",
        *table(
            [kind, "completed", "cached", "failed", "in", "out", "task seconds", "wall"],
            [[len(rows), *states.values(), items_in, items_out, round(sum(r["seconds"] for r in rows), 1), wall]],
        ),
        "",
    ]
    lines += [*table(["status", kind], sorted(Counter(r["status"] for r in rows).items())), ""]
    ranked = sorted(((k, v) for k, v in reasons.items() if v), key=lambda kv: (-kv[1], kv[0]))
    if ranked:
        lines += [*table(["reason", "items"], ranked), ""]
    failures = [[r["unit"], r["reasons"]] for r in rows if r["state"] == "Failed"]
    if failures:
        lines += [f"## Failed {kind}", "", *table(["unit", "error"], failures[:TABLE_ROWS])]
        if len(failures) > TABLE_ROWS:
            lines += ["", f"and {len(failures) - TABLE_ROWS} more (each in the stage's _summary.json)"]
    return "\n".join(lines)


def publish_stage(
    stage: str, label: str, output: str, futures: dict, done: dict, failed: dict, wall_seconds: float | None = None
) -> None:
    """The table (one row per unit, failed ones included) and the markdown summary of one stage run.

    futures: {unit: the future of its main task}; done: {unit: its stats}; failed: {unit: error message}."""
    counts = {unit: unit_counts(stage, stats) for unit, stats in done.items() if unit not in failed}
    rows = unit_rows(stage, futures, counts, done, failed)
    reasons = {}
    for count in counts.values():
        add_counts(reasons, count["reasons"])
    publish(
        create_table_artifact,
        table=table_rows(rows),
        key=artifact_key(stage, label, "units"),
        description=f"{stage} of {label}: one row per {units_of(stage)[:-1]}"
        + (f" (every failed one, then the slowest: {TABLE_ROWS} of {len(rows)})" if len(rows) > TABLE_ROWS else ""),
    )
    publish(
        create_markdown_artifact,
        markdown=stage_markdown(stage, label, output, rows, reasons, wall_seconds),
        key=artifact_key(stage, label),
        description=f"{stage} of {label} into {output}",
    )


def publish_index(label: str, output: str, infos: dict, wall_seconds: float | None = None) -> None:
    """build_index's artifacts: a row per modality (index key, vectors, recall, latency, seconds) and a summary."""
    rows = [
        {
            "modality": m,
            "index_key": infos[m]["index_key"],
            "params": infos[m]["params"] or "exact",
            "vectors": infos[m]["vectors"],
            "recall_at_k": infos[m]["recall_at_k"],
            "k": infos[m]["k"],
            "p50_ms": infos[m]["p50_ms"],
            "p99_ms": infos[m]["p99_ms"],
            "seconds": infos[m].get("build_s", infos[m].get("add_s")),
        }
        for m in ("image", "text")
    ]
    near = infos["near_duplicates"]
    wall = "-" if wall_seconds is None else f"{wall_seconds:.1f} s"
    lines = [
        f"# index: {label}",
        "",
        f"Output: `{output}`",
        "",
        f"{infos['count']} vectors from {len(infos['shards'])} shards, wall {wall}.",
        "",
        *table(list(rows[0]), [list(r.values()) for r in rows]),
        "",
        f"Near-duplicates (similarity >= {near['threshold']}): {near['duplicates']} in {near['groups']} groups"
        + (f", {near['dropped_rows']} rows dropped from dataset/" if near["dropped"] else ", marked in dataset/"),
    ]
    publish(
        create_table_artifact,
        table=rows,
        key=artifact_key("index", label, "units"),
        description=f"index of {label}: one row per modality",
    )
    publish(
        create_markdown_artifact,
        markdown="\n".join(lines),
        key=artifact_key("index", label),
        description=f"index of {label} into {output}",
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def publish_report(out: str, label: str, stats: dict, report_uri: str) -> None:
    """The report's artifacts: a markdown summary (funnel, rates, gates) under report-{label}, whose history
    the Artifacts page shows across runs; a link to the full report; the funnel per segment as a table."""
    link = "file://" + os.path.abspath(report_uri.removeprefix("file://")) if is_local(report_uri) else report_uri
    lines = [
        f"# Data-quality report: {label}",
        "",
        f"Full report: [{report_uri}]({link})",
        "",
        *table(
            ["step", "count", "of previous", "of first"],
            [[s["step"], s["count"], _share(s["of_previous"]), _share(s["of_first"])] for s in stats["funnel"]],
        ),
    ]
    if stats["gates"]:
        lines += [
            "",
            *table(
                ["quality gate", "measured", "threshold", "action", "result"],
                [
                    [
                        g["gate"],
                        f"{g['value']:.3f}",
                        f"{g['threshold']:.3f}",
                        g["action"],
                        "passed" if g["passed"] else "CROSSED",
                    ]
                    for g in stats["gates"]
                ],
            ),
        ]
    truth = stats.get("ground_truth")
    if truth:
        lines += [
            "",
            (
                f"CLIP filter against the ground truth: precision {truth['precision']:.3f}, recall "
                f"{truth['recall']:.3f}, accuracy {truth['accuracy']:.3f} over {truth['samples']} samples"
            ),
        ]
    publish(
        create_markdown_artifact,
        markdown="\n".join(lines),
        key=artifact_key("report", label),
        description=f"clipcrawl report of {out}",
    )
    publish(
        create_link_artifact,
        link=link,
        link_text="report/index.html",
        key=artifact_key("report", label, "link"),
        description="the full data-quality report (self-contained HTML)",
    )
    segments = [{"segment": s["segment"], "files": s["files"], **s["funnel"]} for s in stats["segments"]]
    if segments:
        publish(
            create_table_artifact,
            table=segments,
            key=artifact_key("report", label, "segments"),
            description="the funnel per crawl segment",
        )
