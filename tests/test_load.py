"""Load: a 100-segment synthetic crawl through the whole pipeline on a multi-process cluster of its own (two CPU
workers, one GPU-tagged worker, each a process under a Dask nanny). Every worker's peak memory is reported and
bounded, and no worker starts processes of its own (images decode in threads); no task runs past its timeout; the outputs are still right.

    pytest -s -n0 tests/test_load.py     # prints the peak memory table and the slowest task of each stage
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
from distributed import Client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from clipcrawl.flows.pipeline import pipeline
from clipcrawl.flows.runner import local_cluster
from clipcrawl.tasks.core.config import (
    ExtractSettings,
    Gate,
    IndexSettings,
    IngestSettings,
    QualityGates,
    ReportSettings,
)
from clipcrawl.tasks.core.uri import read_json
from clipcrawl.tasks.world import ImageServer, WorldSpec, generate_world, tiny_clip
from clipcrawl.tasks.world.groundtruth import compare_downloads, compare_pairs

SEGMENTS = 100
TASK_TIMEOUT_S = 300.0
MiB = 1 << 20
# The bound, per process, at these settings (shards of 500, 64 requests in flight, batches of 64): a worker
# process holds its libraries (torch on every worker: the embed module is imported by the flows), one unit's
# rows, at most `concurrency` bodies of max_bytes and one decoded image per image thread.
WORKER_RSS_BOUND = 1536 * MiB
GATES_OFF = QualityGates(**{name: Gate() for name in QualityGates.model_fields})


def peak_memory() -> dict:
    """Run on a worker: peak RSS (VmHWM) of the worker process and of each process it started."""

    def hwm(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            children.append(hwm(child.pid))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return {"pid": os.getpid(), "worker": hwm(os.getpid()), "children": children}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(
        tmp_path_factory.mktemp("world"),
        WorldSpec(seed=5, segments=SEGMENTS, files_per_segment=1, pages_per_file=6, warc=False),
        workers=2,
    )


@pytest.fixture(scope="module")
def loaded(prefect_api, world, tmp_path_factory):
    """The pipeline over the whole world; (OUT, final state, {worker: peak memory}, {stage: task runs})."""
    out = tmp_path_factory.mktemp("load")
    with (
        local_cluster(cpu_workers=2, gpu_workers=1, memory_limit="3GiB") as cluster,
        Client(cluster.scheduler_address) as client,
        ImageServer(world.root) as server,
    ):
        started = time.monotonic()
        state = pipeline(
            out=str(out),
            dask_address=cluster.scheduler_address,
            return_state=True,
            ingest=IngestSettings(
                crawl=world.crawl_id,
                source=str(world.root),
                file_timeout=TASK_TIMEOUT_S,
                extract=ExtractSettings(detect_language=False),
            ),
            download=server.download_settings(shard_size=500, concurrency=64, shard_timeout=TASK_TIMEOUT_S),
            embed=tiny_clip.embed_settings(batch_size=64, shard_timeout=TASK_TIMEOUT_S),
            index=IndexSettings(queries=200, near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD),
            report=ReportSettings(gates=GATES_OFF),
        )
        wall = time.monotonic() - started
        memory = client.run(peak_memory)
        resources = {addr: w["resources"] for addr, w in client.scheduler_info()["workers"].items()}
    with get_client(sync_client=True) as api:
        subflows = api.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
        runs = {}
        for subflow in subflows:
            offset, found = 0, []
            while batch := api.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[subflow.id])), limit=200, offset=offset
            ):
                found += batch
                offset += len(batch)
            runs[api.read_flow(subflow.flow_id).name] = found
    print(f"\n{SEGMENTS} segments in {wall:.0f} s")
    for addr, peak in sorted(memory.items()):
        kind = "GPU" if "GPU" in resources[addr] else "CPU"
        children = ", ".join(f"{c / MiB:.0f}" for c in sorted(peak["children"], reverse=True)) or "none"
        print(f"{kind} worker {addr}: peak RSS {peak['worker'] / MiB:.0f} MiB; its processes: {children} MiB")
    for stage, task_runs in sorted(runs.items()):
        slowest = max(task_runs, key=lambda r: r.total_run_time)
        print(
            f"{stage}: {len(task_runs)} task runs, slowest {slowest.name} {slowest.total_run_time.total_seconds():.1f} s"
        )
    return out, state, memory, runs


def test_a_100_segment_crawl_completes_with_right_outputs(loaded, world):
    out, state, _, runs = loaded
    assert state.is_completed(), state.message
    assert len([r for r in runs["ingest_crawl"] if r.name.startswith("extract-")]) == SEGMENTS
    assert compare_pairs(world, str(out))["equal"]
    assert compare_downloads(world, str(out))["equal"]
    summary = state.result()
    assert summary["pairs"] == len(world.expected_pairs())
    assert summary["indexed"] == summary["kept"] == read_json(str(out / "dataset" / "_summary.json"))["kept"] > 0


def test_every_worker_stays_under_its_memory_bound(loaded):
    _, _, memory, _ = loaded
    assert len(memory) == 3
    for addr, peak in memory.items():
        assert 0 < peak["worker"] < WORKER_RSS_BOUND, (addr, peak["worker"] / MiB)
        assert peak["children"] == [], (addr, "started processes of its own", peak["children"])


def test_no_task_runs_past_its_timeout(loaded):
    _, _, _, runs = loaded
    task_runs = [r for stage in runs.values() for r in stage]
    assert len(task_runs) > SEGMENTS
    assert [r.name for r in task_runs if r.state.name == "TimedOut"] == []
    assert all(r.state.is_completed() for r in task_runs), {
        r.name: r.state.name for r in task_runs if not r.state.is_completed()
    }
    assert max(r.total_run_time.total_seconds() for r in task_runs) < TASK_TIMEOUT_S
