"""Running flows in tests and reading back what the Prefect API recorded; running the headless browser."""

import os
import shutil
import subprocess
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from clipcrawl.flows.embed import embed_and_filter
from clipcrawl.flows.ingest import ingest_crawl
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.config import ExtractSettings, IngestSettings
from clipcrawl.tasks.ingest import dedup, incremental, stage
from clipcrawl.tasks.world import tiny_clip


def run(dask_address, out, **settings):
    """ingest_crawl on the session's cluster; returns the flow run's final state."""
    flow = ingest_crawl.with_options(task_runner=task_runner(dask_address))
    return flow(out=str(out), settings=IngestSettings(**settings), return_state=True)


def embed(dask_address, out, **overrides):
    """embed_and_filter with the world's tiny CLIP model on the session's cluster; the final state."""
    flow = embed_and_filter.with_options(task_runner=task_runner(dask_address))
    return flow(
        images=str(out / "images"), out=str(out), settings=tiny_clip.embed_settings(**overrides), return_state=True
    )


def task_states(state) -> dict[str, str]:
    """{task run name: state name} of one flow run, from the API."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.ID_DESC,
            limit=200,
        )
    return {r.name: r.state.name for r in runs}


def run_chromium(chromium: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on URL with a throwaway profile and no network of its own beyond the page's."""
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        *args,
        url,
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, timeout=120, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def keep_screenshot(shot: Path, name: str) -> None:
    """Copy a test's screenshot to $CLIPCRAWL_SCREENSHOTS/NAME, when set, to look at the page by hand."""
    folder = os.environ.get("CLIPCRAWL_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(shot, os.path.join(folder, name))


def recorded_text(client) -> dict[str, list[str]]:
    """Everything the Prefect API holds that a person reads: every log message, every artifact (data and
    description), every flow run's parameters and state messages, every task run's state message."""
    import json

    def pages(read, **kwargs):
        offset, found = 0, []
        while batch := read(limit=200, offset=offset, **kwargs):
            found += batch
            offset += len(batch)
        return found

    logs = pages(client.read_logs)
    artifacts = pages(client.read_artifacts)
    flow_runs = pages(client.read_flow_runs)
    task_runs = pages(client.read_task_runs)
    return {
        "logs": [log.message for log in logs],
        "artifacts": [json.dumps(a.data, default=str) + (a.description or "") for a in artifacts],
        "flow runs": [json.dumps(r.parameters, default=str) + (r.state.message or "") for r in flow_runs if r.state],
        "task runs": [(r.state.message or "") for r in task_runs if r.state],
    }


def secrets_found(texts: dict[str, list[str]], secrets: list[str]) -> list[str]:
    """'where: secret' for every secret some text contains (an empty list is the good answer)."""
    return [
        f"{where}: {secret[:4]}..."
        for where, items in texts.items()
        for item in items
        for secret in secrets
        if secret in item
    ]


def ingest_files(
    uris: list[str],
    out: str,
    settings: ExtractSettings,
    store: str | None = None,
    partitions: int = 256,
    rows_per_task: int = 20_000_000,
) -> dict[str, dict]:
    """ingest_crawl's steps in one process and in its order, without Prefect (a test's reference run): extract the
    new files, dedup them against the store, publish, commit. Returns the published stats by file name."""
    pairs = layout.pairs_dir(out)
    run = incremental.plan(store or layout.uid_store(pairs), pairs, uris, settings, partitions)
    kept = sum(stage.extract_file(uri, out, name, settings)["kept"] for uri, name in run.new)
    if not run.new:
        incremental.clean(run, incremental.leftover_staging(run))
        return {}
    tasks = incremental.prepare_dedup(run, run.new, kept, rows_per_task)
    for first, last, losers in tasks:
        dedup.dedup_partitions(run.store, first, last, losers)
    losers = [uri for _, _, uri in tasks]
    incremental.before_publish(run)
    published = {name: (uri, stage.publish_file(out, name, i, losers)) for i, (uri, name) in enumerate(run.new)}
    incremental.commit(run, published)
    return {name: stats for name, (_, stats) in published.items()}
