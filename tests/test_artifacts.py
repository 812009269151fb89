"""The Prefect artifacts of the stage flows, read back through the Prefect API: a progress bar that ends at
100, a table with one row per file or shard whose counts are the stats files', a markdown summary under a
stable key whose history grows by run, failed units listed, and keys Prefect accepts."""

from __future__ import annotations

import json

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import Artifact
from prefect.types.names import raise_on_name_alphanumeric_dashes_only

from clipcrawl.flows.artifacts import TABLE_ROWS, artifact_key, publish, stage_markdown, table_rows
from clipcrawl.flows.index import build_index
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core.stats import run_label
from clipcrawl.tasks.core.uri import name_of
from tests.helpers import run
from tests.test_index_flow import SETTINGS, copy_run


def read_artifacts(**filters) -> list:
    """Artifacts matching ArtifactFilter(**filters), newest first."""
    # not client.read_artifacts: it sends null for the filters left out, and the API refuses null (Prefect 3.8.8),
    # while an empty TaskRunFilter would keep only the artifacts made inside a task
    body = {"artifacts": ArtifactFilter(**filters).model_dump(mode="json", exclude_unset=True), "sort": "CREATED_DESC"}
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/artifacts/filter", json=body)
    response.raise_for_status()
    return Artifact.model_validate_list(response.json())


def of_run(flow_run_id) -> dict:
    """{key: artifact} of one flow run (each key once per run)."""
    # (a failed flow run also holds Prefect's own unkeyed result record)
    found = [a for a in read_artifacts(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])) if a.key]
    keys = [a.key for a in found]
    assert len(keys) == len(set(keys)), keys
    for key in keys:
        assert len(key) <= 100 and raise_on_name_alphanumeric_dashes_only(key) == key
    return {a.key: a for a in found}


def run_of(key: str, marker: str):
    """The flow run whose markdown artifact under `key` names `marker` (the output location of a run)."""
    found = [a for a in read_artifacts(key=ArtifactFilterKey(any_=[key])) if marker in a.data]
    assert found, f"no {key} artifact mentions {marker}"
    return found[0].flow_run_id


def stage_artifacts(stage: str, label: str, flow_run_id) -> tuple[dict, list[dict], str]:
    """(progress artifact, table rows, markdown) of one stage run, checking the progress ended at 100."""
    found = of_run(flow_run_id)
    progress = found[artifact_key(stage, label, "progress")]
    assert progress.type == "progress" and progress.data == 100, progress
    rows = json.loads(found[artifact_key(stage, label, "units")].data)
    markdown = found[artifact_key(stage, label)]
    assert markdown.type == "markdown"
    assert (
        progress.description == f"{stage}: {len(rows)}/{len(rows)} done, "
        f"{sum(r['state'] == 'Failed' for r in rows)} failed"
    )
    return progress, rows, markdown.data


def counts(rows: list[dict]) -> dict:
    return {r["unit"]: (r["in"], r["out"]) for r in rows}


def stats_files(out, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob(pattern))]


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("ingest", "CC-MAIN-2024-10", "units") == "ingest-cc-main-2024-10-units"
    assert artifact_key("embed", "My Crawl_v2 (test)/") == "embed-my-crawl-v2-test"
    long = artifact_key("download", "x" * 300, "progress")
    assert len(long) == 100 and not long.endswith("-")
    for key in ("ingest-cc-main-2024-10-units", "embed-my-crawl-v2-test", long, artifact_key("--A--", "", "é")):
        assert raise_on_name_alphanumeric_dashes_only(key) == key


def test_a_failing_artifact_call_does_not_fail_the_run(prefect_api):
    def unreachable(**kwargs):
        raise ConnectionError("API unreachable")

    @flow
    def publishes() -> str:
        return str(publish(unreachable, key="some-key"))

    state = publishes(return_state=True)
    assert state.is_completed() and state.result() == "None"


def test_pipeline_stages_publish_progress_tables_and_summaries(pipeline, small_world):
    out, embed_state = pipeline[0], pipeline[1]
    label = run_label(str(out))
    assert label == small_world.crawl_id
    for stage, folder in (("ingest", "pairs"), ("download", "images"), ("embed", "dataset")):
        assert json.loads((out / folder / "_summary.json").read_text())["wall_seconds"] > 0, stage

    _, rows, markdown = stage_artifacts("ingest", label, run_of(artifact_key("ingest", label), str(out / "pairs")))
    pair_stats = stats_files(out / "pairs", "*.stats.json")
    assert counts(rows) == {s["uri"]: (s["with_alt"], s["kept"]) for s in pair_stats}
    assert {r["status"] for r in rows} == {"ok"} and {r["state"] for r in rows} <= {"Completed", "Cached"}
    assert all(r["retries"] == 0 and r["seconds"] > 0 for r in rows), rows
    assert f"| {len(rows)} |" in markdown and str(sum(s["kept"] for s in pair_stats)) in markdown
    assert "duplicate" in markdown and str(out / "pairs") in markdown

    _, rows, markdown = stage_artifacts("download", label, run_of(artifact_key("download", label), str(out / "images")))
    shard_stats = stats_files(out / "images", "*_stats.json")
    assert len(shard_stats) >= 3
    assert counts(rows) == {str(s["shard"]): (s["count"], s["successes"]) for s in shard_stats}
    assert all(r["retries"] is not None and r["seconds"] > 0 for r in rows) and any(r["reasons"] for r in rows), rows

    _, rows, markdown = stage_artifacts("embed", label, embed_state.state_details.flow_run_id)
    part_stats = stats_files(out / "dataset", "part-*_stats.json")
    assert counts(rows) == {name_of(s["tar"]): (s["samples"], s["kept"]) for s in part_stats}
    assert all("below_threshold" in r["reasons"] for r in rows), rows
    assert "below_threshold" in markdown


def test_the_summary_key_keeps_one_history_per_crawl(dask_address, small_world, tmp_path):
    out = tmp_path / "out"
    first = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root), segments=1)
    second = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root), segments=1)
    assert first.is_completed() and second.is_completed(), (first.message, second.message)
    key = artifact_key("ingest", small_world.crawl_id)
    history = read_artifacts(key=ArtifactFilterKey(any_=[key]))
    runs = [a.flow_run_id for a in history]
    assert runs.index(second.state_details.flow_run_id) < runs.index(first.state_details.flow_run_id)
    assert runs[0] == second.state_details.flow_run_id  # the latest under the key is the newest run's
    _, rows_first, _ = stage_artifacts("ingest", small_world.crawl_id, first.state_details.flow_run_id)
    _, rows_second, markdown = stage_artifacts("ingest", small_world.crawl_id, second.state_details.flow_run_id)
    assert {r["state"] for r in rows_first} == {"Completed"} and all(r["seconds"] > 0 for r in rows_first)
    # the rerun worked on no file (the uid store holds them all): its table has no row for the files published
    # before, however many the crawl has
    assert rows_first and rows_second == [] and "| 0 | 0 | 0 | 0 |" in markdown


def test_a_failed_file_gets_a_row_with_its_error(dask_address, small_world, tmp_path):
    good = small_world.wat_uris()[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes, not a crawl file\n")
    out = tmp_path / "out"
    state = run(dask_address, out, inputs=[good, str(notes)], retries=0)
    assert state.is_failed() and "1 of 2 files failed" in state.message
    label = run_label(str(out))
    progress, rows, markdown = stage_artifacts("ingest", label, state.state_details.flow_run_id)
    assert progress.description == "ingest: 2/2 done, 1 failed"
    failed = [r for r in rows if r["unit"] == str(notes)]
    assert len(rows) == 2 and len(failed) == 1
    assert failed[0]["state"] == "Failed" and failed[0]["status"] == "failed"
    assert "not a WARC/WAT file" in failed[0]["reasons"] and failed[0]["in"] is None
    assert failed[0]["retries"] == 0
    (stats,) = stats_files(out / "pairs", "*.stats.json")
    assert counts(rows)[good] == (stats["with_alt"], stats["kept"])
    assert "## Failed files" in markdown and "not a WARC/WAT file" in markdown


def test_build_index_publishes_a_row_per_modality(dask_address, pipeline, tmp_path):
    out = copy_run(pipeline, tmp_path / "out")
    flow = build_index.with_options(task_runner=task_runner(dask_address))
    state = flow(embeddings=str(out / "embeddings"), out=str(out), settings=SETTINGS, return_state=True)
    assert state.is_completed(), state.message
    label = run_label(str(out))
    found = of_run(state.state_details.flow_run_id)
    assert found[artifact_key("index", label, "progress")].data == 100
    rows = json.loads(found[artifact_key("index", label, "units")].data)
    infos = json.loads((out / "index" / "index_infos.json").read_text())
    assert [r["modality"] for r in rows] == ["image", "text"]
    for row in rows:
        part = infos[row["modality"]]
        assert (row["index_key"], row["vectors"], row["recall_at_k"]) == (
            part["index_key"],
            infos["count"],
            part["recall_at_k"],
        )
        assert row["p50_ms"] == part["p50_ms"] and row["seconds"] == pytest.approx(part["build_s"])
    markdown = found[artifact_key("index", label)].data
    assert f"{infos['count']} vectors" in markdown and f"{infos['near_duplicates']['duplicates']} in" in markdown


def test_a_units_table_past_its_limit_keeps_every_failure_then_the_slowest_in_order():
    rows = [  # unit_rows' shape
        {"unit": f"{i:05d}", "state": "Completed", "status": "ok", "seconds": float(i % 7), "retries": 0, "in": 10,
         "out": 9, "reasons": "-"}
        for i in range(50)
    ]  # fmt: skip
    for i in (3, 40):
        rows[i] |= {"state": "Failed", "status": "failed", "reasons": "boom"}
    assert table_rows(rows, limit=50) == rows
    kept = table_rows(rows, limit=10)
    assert len(kept) == 10
    assert [r["unit"] for r in kept if r["state"] == "Failed"] == ["00003", "00040"]
    dropped = [r for r in rows if r not in kept]
    assert min(r["seconds"] for r in kept if r["state"] != "Failed") >= max(r["seconds"] for r in dropped)
    assert [int(r["unit"]) for r in kept] == sorted(int(r["unit"]) for r in kept)  # submission order


def test_the_failed_units_section_is_capped_as_the_units_table_is():
    row = {"state": "Failed", "status": "failed", "seconds": 1.0, "retries": 0, "in": None, "out": None}
    rows = [row | {"unit": f"f{i}", "reasons": f"why {i}"} for i in range(TABLE_ROWS + 7)]
    text = stage_markdown("ingest", "run", "/out", rows, {}, 1.0)
    assert "| f0 | why 0 |" in text and f"| f{TABLE_ROWS - 1} |" in text and f"| f{TABLE_ROWS} |" not in text
    assert text.endswith("and 7 more (each in the stage's _summary.json)")
