"""The build_report flow on the small world's full run (ingest, download, embed, index): the report's
numbers equal what the output files hold, the gates fail or warn a run as configured, and the run's
artifacts are on the Prefect API."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest

from clipcrawl.flows.artifacts import artifact_key
from clipcrawl.flows.cli import main
from clipcrawl.flows.report import build_report
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core.config import Gate, QualityGates, ReportSettings
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.world.groundtruth import compare_embeddings
from tests.test_artifacts import of_run
from tests.test_index_flow import index

GATES_OFF = QualityGates(**{name: Gate() for name in QualityGates.model_fields})


def report(dask_address, out, settings, ground_truth=None):
    flow = build_report.with_options(task_runner=task_runner(dask_address))
    return flow(out=str(out), settings=settings, ground_truth=ground_truth, return_state=True)


def rows(out, folder, pattern, columns):
    tables = [pq.read_table(p, columns=columns) for p in sorted((out / folder).glob(pattern))]
    return [row for t in tables for row in t.to_pylist()]


@pytest.fixture(scope="module")
def reported(dask_address, pipeline, small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("reported") / "out"
    shutil.copytree(pipeline[0], out, ignore=shutil.ignore_patterns("_results"))
    index(dask_address, out)
    state = report(
        dask_address, out, ReportSettings(gates=GATES_OFF), os.path.join(small_world.root, "manifest", "pairs.parquet")
    )
    assert state.is_completed(), state.message
    return out, state, json.loads((out / "report" / "stats.json").read_text())


def test_funnel_counts_are_the_output_files(reported):
    out, _, stats = reported
    pair_stats = [json.loads(p.read_text()) for p in sorted((out / "pairs").glob("*.stats.json"))]
    downloads = Counter(r["status"] for r in rows(out, "images", "*.parquet", ["status"]))
    dataset = rows(out, "dataset", "part-*.parquet", ["key", "near_duplicate"])
    ids = pq.read_table(out / "index" / "ids.parquet")
    expected = {
        "extracted": sum(s["with_alt"] for s in pair_stats),
        "deduplicated": sum(pq.read_metadata(p).num_rows for p in (out / "pairs").glob("*.parquet")),
        "downloaded": sum(downloads.values())
        - sum(
            n
            for s, n in downloads.items()
            if s
            not in (
                DownloadStatus.SUCCESS,
                DownloadStatus.TOO_SMALL_BYTES,
                DownloadStatus.TOO_SMALL_PIXELS,
                DownloadStatus.TOO_MANY_PIXELS,
                DownloadStatus.BAD_ASPECT_RATIO,
                DownloadStatus.NOT_AN_IMAGE,
                DownloadStatus.DECODE_ERROR,
            )
        ),
        "decoded": downloads[DownloadStatus.SUCCESS],
        "clip_passed": len(dataset),
        "near_duplicates_removed": sum(not r["near_duplicate"] for r in dataset),
        "indexed": len(ids),
    }
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    assert {k: funnel[k] for k in expected} == expected
    assert expected["extracted"] >= funnel["text_filtered"] >= expected["deduplicated"] > expected["decoded"] > 0
    assert stats["rates"]["download_success_rate"] == pytest.approx(expected["decoded"] / sum(downloads.values()))
    # the segments add up to the totals
    for step in ("extracted", "deduplicated", "decoded", "clip_passed"):
        assert sum(s["funnel"][step] for s in stats["segments"]) == funnel[step], step
    assert len(stats["segments"]) == 2


def test_distributions_are_the_output_files(reported):
    out, _, stats = reported
    embedded = rows(out, "embeddings/metadata", "*.parquet", ["similarity", "NSFW"])
    assert stats["similarity"]["count"] == sum(stats["similarity"]["histogram"]["counts"]) == len(embedded)
    assert stats["similarity"]["mean"] == pytest.approx(sum(r["similarity"] for r in embedded) / len(embedded))
    nsfw = Counter(r["NSFW"] for r in embedded)
    assert {tag: v["count"] for tag, v in stats["nsfw"].items() if v["count"]} == dict(nsfw)
    decoded = [r for r in rows(out, "images", "*.parquet", ["status"]) if r["status"] == "success"]
    assert stats["images"]["count"] == sum(stats["images"]["width"]["counts"]) == len(decoded)
    kept = rows(out, "dataset", "part-*.parquet", ["language"])
    assert sum(row["kept"] for row in stats["languages"]) == len(kept)
    shown = stats["samples"]
    assert any(s["kept"] for s in shown) and any(not s["kept"] for s in shown)
    threshold = stats["similarity"]["threshold"]
    assert all((s["similarity"] >= threshold) == s["kept"] for s in shown)


def test_filter_is_measured_against_the_ground_truth(reported, small_world):
    out, _, stats = reported
    truth = compare_embeddings(small_world, str(out))
    assert stats["ground_truth"]["accuracy"] == pytest.approx(truth["accuracy"])
    assert stats["ground_truth"]["samples"] == truth["samples"]
    assert 0.9 <= stats["ground_truth"]["precision"] <= 1 and 0.9 <= stats["ground_truth"]["recall"] <= 1


def test_report_page_and_artifacts(reported):
    out, state, stats = reported
    page = (out / "report" / "index.html").read_text()
    assert "<html" in page and str(stats["funnel"][0]["count"]) in page
    found = of_run(state.state_details.flow_run_id)
    label = stats["label"]
    assert found[artifact_key("report", label, "progress")].data == 100
    markdown = found[artifact_key("report", label)]
    assert markdown.type == "markdown"
    for step in stats["funnel"]:
        assert f"| {step['step']} | {step['count']} |" in markdown.data
    link = found[artifact_key("report", label, "link")]
    # Prefect stores a link artifact as markdown: [text](link)
    assert link.data == f"[report/index.html]({(out / 'report' / 'index.html').as_uri()})"
    segments = json.loads(found[artifact_key("report", label, "segments")].data)
    assert [s["segment"] for s in segments] == [s["segment"] for s in stats["segments"]]
    assert sum(s["extracted"] for s in segments) == stats["funnel"][0]["count"]


def test_a_crossed_gate_fails_the_run_naming_gate_value_and_threshold(dask_address, reported, tmp_path):
    out = reported[0]
    state = report(
        dask_address,
        out,
        ReportSettings(gates=GATES_OFF.model_copy(update={"min_download_success_rate": Gate(threshold=0.99)})),
    )
    assert state.is_failed()
    value = reported[2]["rates"]["download_success_rate"]
    assert "min_download_success_rate" in state.message and f"{value:.3f}" in state.message and "0.990" in state.message
    # the report is still written, with the gate's result in it
    gates = json.loads((out / "report" / "stats.json").read_text())["gates"]
    assert [g["gate"] for g in gates if not g["passed"]] == ["min_download_success_rate"]


def test_a_warning_gate_lets_the_run_complete(dask_address, reported):
    out = reported[0]
    state = report(
        dask_address,
        out,
        ReportSettings(gates=GATES_OFF.model_copy(update={"max_clip_pass_rate": Gate(threshold=0.01, action="warn")})),
    )
    assert state.is_completed(), state.message
    assert [g["gate"] for g in state.result()["gates"] if not g["passed"]] == ["max_clip_pass_rate"]


def test_report_command_takes_gate_flags(dask_address, reported, capsys):
    out = reported[0]
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "report",
                str(out),
                "--gates.max-failed-file-share.threshold",
                "none",
                "--gates.min-clip-pass-rate.threshold",
                "0.999",
                "--dask-address",
                dask_address,
            ]
        )
    message = str(exit_info.value.code)
    assert message.startswith("clipcrawl: build_report Failed") and "min_clip_pass_rate" in message
    assert "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out), "--gates.min-clip-pass-rate.threshold", "high", "--dask-address", dask_address])
    assert exit_info.value.code == 2 and "--gates.min-clip-pass-rate.threshold" in capsys.readouterr().err
