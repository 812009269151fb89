"""The pipeline as users run it, against real servers: infra/local/up.sh starts PostgreSQL, a Prefect server on it
(as infra/docker-compose.yml runs it), a Dask scheduler, a CPU worker, a GPU-tagged worker and a Prefect worker as
separate processes; deployments/deploy.sh registers the deployments; runs are triggered, watched and retried
through the Prefect API, as the UI does."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import asyncpg
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import State, StateType
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    temporary_settings,
)

from clipcrawl.tasks.core.config import IndexSettings, IngestSettings
from clipcrawl.tasks.core.uri import read_json
from clipcrawl.tasks.world import ImageServer, WorldSpec, generate_world, tiny_clip
from clipcrawl.tasks.world.groundtruth import compare_downloads, compare_embeddings, compare_pairs
from tests.helpers import recorded_text, secrets_found

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 900
AUTH_STRING = "admin:clipcrawl-auth-3c9e71b0f2d84a65"  # the server requires it; no log or artifact may show it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers():
    """The local cluster of infra/local on PostgreSQL, up for this module; its environment (PREFECT_API_URL, ...)."""
    # not under pytest's private temporary folder: PostgreSQL runs as the user postgres when the tests run as root
    state = Path(tempfile.mkdtemp(prefix="clipcrawl-local-"))
    state.chmod(0o711)
    env = os.environ | {
        "CLIPCRAWL_LOCAL": str(state),
        "PREFECT_DATABASE": "postgres",
        "POSTGRES_PORT": str(free_port()),
        "PREFECT_PORT": str(free_port()),
        "DASK_PORT": str(free_port()),
        "DASK_DASHBOARD_PORT": str(free_port()),
        "CPU_WORKERS": "2",
        "PYTHON": sys.executable,
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_AUTH_STRING": AUTH_STRING,
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # the server's scheduler: every 2 s, not 60
    }
    env.pop("PREFECT_API_URL", None)
    up = subprocess.run(
        ["bash", "infra/local/up.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exports = subprocess.run(
            ["bash", "infra/local/up.sh", "--env"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        ).stdout.split()[1:]
        env |= dict(e.split("=", 1) for e in exports)
        assert env["PREFECT_API_AUTH_STRING"] == AUTH_STRING
        yield env
    finally:
        groups = [int(p.read_text()) for p in (state / "pids").glob("*.pid")]
        down = subprocess.run(
            ["bash", "infra/local/down.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        left = [g for g in groups if subprocess.run(["pgrep", "-g", str(g)], check=False).returncode == 0]
        if not left:
            shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0 and not left, f"process groups {left} still running: {down.stdout}{down.stderr}"


@pytest.fixture(scope="module")
def client(servers):
    settings = {
        PREFECT_API_URL: servers["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: servers["PREFECT_API_AUTH_STRING"],
    }
    with temporary_settings(settings), get_client(sync_client=True) as c:
        yield c


@pytest.fixture(scope="module")
def deployed(servers, client, tmp_path_factory):
    """deployments/deploy.sh against the server: {deployment name: deployment}."""
    env = servers | {
        "CLIPCRAWL_OUT": str(tmp_path_factory.mktemp("out")),
        "PREFECT": f"{sys.executable} -m prefect",
        "CLIPCRAWL_INGEST_CRON": "0 4 1 1 *",
    }
    done = subprocess.run(
        ["bash", "deployments/deploy.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(
        tmp_path_factory.mktemp("world"),
        WorldSpec(seed=11, segments=2, files_per_segment=2, pages_per_file=20, warc=False),
    )


def parameters(world, server, out: Path) -> dict:
    """What the UI's form sends: JSON for each settings model."""
    return {
        "out": str(out),
        "ingest": IngestSettings(crawl=world.crawl_id, source=str(world.root), retries=0).model_dump(mode="json"),
        "download": server.download_settings(shard_size=200).model_dump(mode="json"),
        "embed": tiny_clip.embed_settings(batch_size=64).model_dump(mode="json"),
        "index": IndexSettings(near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD).model_dump(mode="json"),
        "ground_truth": str(Path(world.root) / "manifest" / "pairs.parquet"),
    }


def wait(client, flow_run_id, timeout: float = RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state.is_final():
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout} s: {run.state}")


def subflow_runs(client, flow_run_id) -> dict:
    """{flow name: its latest subflow run} of a pipeline run."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    )
    latest = {}
    for run in sorted(runs, key=lambda r: r.created):
        latest[client.read_flow(run.flow_id).name] = run
    return latest


def task_states(client, flow_run_id) -> dict[str, str]:
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
    return {r.name: r.state.name for r in runs}


def test_deployments_are_registered_with_schedule_form_and_limits(deployed, client):
    assert {"ingest_new_crawls/scheduled", "pipeline/run", "build_index/rebuild"} <= set(deployed)
    scheduled = deployed["ingest_new_crawls/scheduled"]
    assert [s.schedule.cron for s in scheduled.schedules] == ["0 4 1 1 *"]
    assert scheduled.parameters["cross_crawl"] is False  # the option shows in the deployment, off
    assert "cross_crawl" in scheduled.parameter_openapi_schema["properties"]
    assert all(d.work_pool_name == "clipcrawl-process" for d in deployed.values())
    # the UI's form: the settings models are in the parameter schema with their fields
    schema = deployed["pipeline/run"].parameter_openapi_schema
    assert {"out", "ingest", "download", "embed", "index", "report", "dask_address"} <= set(schema["properties"])
    assert "similarity_threshold" in schema["definitions"]["EmbedSettings"]["properties"]
    limits = {limit.tag: limit.concurrency_limit for limit in client.read_concurrency_limits(limit=50, offset=0)}
    assert limits == {"commoncrawl": 16, "gpu": 1}


def test_the_server_schedules_runs_of_the_scheduled_deployment(deployed, client):
    """The server's scheduler creates the cron deployment's coming runs (with SQLAlchemy 2.1 it failed on every
    loop, and a scheduled ingestion never ran)."""
    scheduled = deployed["ingest_new_crawls/scheduled"]
    deadline = time.monotonic() + 120
    while True:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[scheduled.id])))
        if runs or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert runs, "no run of ingest_new_crawls/scheduled after 120 s"
    assert all(r.state.type == StateType.SCHEDULED for r in runs)
    times = sorted(r.expected_start_time for r in runs)
    assert all((t.month, t.day, t.hour, t.minute) == (1, 1, 4, 0) for t in times), times  # cron 0 4 1 1 *


def test_pipeline_deployment_runs_on_the_cluster(deployed, client, world, tmp_path):
    with ImageServer(world.root) as server:
        run = client.create_flow_run_from_deployment(
            deployed["pipeline/run"].id, parameters=parameters(world, server, tmp_path / "run")
        )
        run = wait(client, run.id)
    assert run.state.is_completed(), run.state.message
    out = str(tmp_path / "run")
    assert compare_pairs(world, out)["equal"]
    assert compare_downloads(world, out)["equal"]
    # every downloaded image embedded, and the filter works (the demo checks its 95% on a larger world)
    embedded = compare_embeddings(world, out)
    assert embedded["samples"] == read_json(os.path.join(out, "images", "_summary.json"))["successes"]
    assert embedded["accuracy"] >= 0.85
    infos = read_json(os.path.join(out, "index", "index_infos.json"))
    kept = sum(pq.read_metadata(part).num_rows for part in (tmp_path / "run" / "dataset").glob("part-*.parquet"))
    assert infos["count"] == kept > 0
    assert (tmp_path / "run" / "report" / "index.html").stat().st_size > 10_000
    subflows = subflow_runs(client, run.id)
    assert set(subflows) == {"ingest_crawl", "download_images", "embed_and_filter", "build_index", "build_report"}
    assert all(r.state.is_completed() for r in subflows.values())
    keys = {a.key for a in client.read_artifacts()}
    label = world.crawl_id.lower()
    assert {f"ingest-{label}", f"download-{label}", f"embed-{label}", f"index-{label}", f"report-{label}"} <= keys


def test_failed_task_then_retry_from_the_api_serves_finished_tasks_from_cache(deployed, client, world, tmp_path):
    wat = Path(world.wat_uris()[1])
    moved = tmp_path / wat.name
    shutil.move(wat, moved)  # the listing names it, the file is gone: its extract task fails
    try:
        with ImageServer(world.root) as server:
            run = client.create_flow_run_from_deployment(
                deployed["pipeline/run"].id, parameters=parameters(world, server, tmp_path / "run")
            )
            run = wait(client, run.id)
            assert run.state.is_failed(), run.state
            assert wat.name.removesuffix(".warc.wat.gz") in run.state.message
            ingest = subflow_runs(client, run.id)["ingest_crawl"]
            states = task_states(client, ingest.id)
            failed = [name for name, state in states.items() if state == "Failed"]
            assert failed == [f"extract-{wat.name.removesuffix('.warc.wat.gz')}"], states
            assert sum(state == "Completed" for state in states.values()) >= 3

            shutil.move(moved, wat)
            # the UI's Retry: the failed run back to Scheduled (AwaitingRetry); the worker runs it again
            client.set_flow_run_state(
                run.id, State(type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI")
            )
            run = wait(client, run.id)
    finally:
        if moved.exists():
            shutil.move(moved, wat)
    assert run.state.is_completed(), run.state.message
    assert run.run_count == 2
    ingest = subflow_runs(client, run.id)["ingest_crawl"]
    states = task_states(client, ingest.id)
    extract = {name: state for name, state in states.items() if name.startswith("extract-")}
    assert list(extract.values()) == ["Completed"], extract  # the others, published by the first try, not run again
    assert extract[f"extract-{wat.name.removesuffix('.warc.wat.gz')}"] == "Completed"
    assert compare_pairs(world, str(tmp_path / "run"))["equal"]


def postgres_password(servers) -> str:
    return Path(servers["CLIPCRAWL_LOCAL"], "postgres", "password").read_text().strip()


def test_the_server_keeps_its_runs_in_postgresql(servers, client):
    """The runs the API reports are the rows of Prefect's flow_run table in PostgreSQL, and no SQLite file exists."""

    async def flow_run_ids() -> set[str]:
        connection = await asyncpg.connect(
            host="127.0.0.1",
            port=int(servers["POSTGRES_PORT"]),
            user="prefect",
            password=postgres_password(servers),
            database="prefect",
        )
        try:
            return {str(row["id"]) for row in await connection.fetch("SELECT id FROM flow_run")}
        finally:
            await connection.close()

    api = {str(run.id) for run in client.read_flow_runs(limit=200)}
    assert len(api) >= 5, "the runs above and their subflows"
    assert api <= asyncio.run(flow_run_ids())  # <=: the scheduler may add a scheduled run in between
    assert not list(Path(servers["CLIPCRAWL_LOCAL"], "prefect").glob("*.db"))


def test_the_server_requires_the_auth_string(servers):
    def read_flow_runs(credentials: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if credentials:
            headers["Authorization"] = "Basic " + b64encode(credentials.encode()).decode()
        request = urllib.request.Request(f"{servers['PREFECT_API_URL']}/flow_runs/filter", data=b"{}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as refused:
            return refused.code

    assert read_flow_runs(None) == 401
    assert read_flow_runs("admin:not-the-password") == 401
    assert read_flow_runs(AUTH_STRING) == 200


def test_the_auth_string_never_reaches_logs_or_artifacts(servers, client):
    """Last in the module: everything the runs above recorded, and every log file of the servers and workers."""
    texts = recorded_text(client)
    assert len(texts["logs"]) > 50 and len(texts["artifacts"]) > 5, "the runs above left logs and artifacts"
    logs = sorted(Path(servers["CLIPCRAWL_LOCAL"], "logs").glob("*.log"))
    assert len(logs) >= 4
    texts["process logs"] = [path.read_text(errors="replace") for path in logs]
    password = AUTH_STRING.split(":", 1)[1]
    assert secrets_found(texts, [password, b64encode(AUTH_STRING.encode()).decode(), postgres_password(servers)]) == []
