"""Load: a 100-segment synthetic crawl through the whole pipeline on a multi-process cluster of its own (two CPU
workers, one GPU-tagged worker, each a process under a Dask nanny). Every worker's peak memory is reported and
bounded, and no worker starts processes of its own (images decode in threads); no task runs past its timeout; the outputs are still right.
The crawl holds the hostile files of tests/hostile.py (a 1.5 GB WAT record, a 1.5 GB HTML page, JSON nested 2,000,000
deep) beside the world's: each costs its hostile record only, and the world's files give what they give alone.

    pytest -s -n0 tests/test_load.py     # prints the peak memory table and the slowest task of each stage
"""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pyarrow.parquet as pq
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
from clipcrawl.tasks.core.layout import pairs_dir, pairs_file, pairs_stats, summary_file
from clipcrawl.tasks.core.status import DownloadStatus, FileStatus, RecordStatus
from clipcrawl.tasks.core.uri import read_json
from clipcrawl.tasks.ingest.crawl import read_paths
from clipcrawl.tasks.world import ImageServer, World, WorldSpec, generate_world, tiny_clip
from clipcrawl.tasks.world.groundtruth import compare_downloads, compare_pairs
from tests.hostile import HOSTILE, write_hostile

SEGMENTS = 100
TASK_TIMEOUT_S = 300.0
MiB = 1 << 20
# The bound, per process, at these settings (shards of 500, 64 requests in flight, batches of 64): a worker
# process holds its libraries (torch on every worker: the embed module is imported by the flows), one unit's
# rows, at most `concurrency` bodies of max_bytes and one decoded image per image thread.
WORKER_RSS_BOUND = 1536 * MiB
GATES_OFF = QualityGates(**{name: Gate() for name in QualityGates.model_fields})
# the counter each hostile file's hostile record lands in (at the default max_record_bytes, far under its size)
HOSTILE_COUNTER = {
    "giant-wat-json": RecordStatus.RECORD_TOO_LARGE.value,
    "giant-html": "truncated_pages",
    "deep-nesting": "malformed_records",
}
# a page over the cap is parsed up to it: tests/hostile.py's giant page keeps its img before the huge paragraph
HOSTILE_RECORD_PAIRS = {"giant-html": {("http://hostile.test/before.jpg", "the picture before the text")}}


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


@dataclass(frozen=True)
class HostileCrawl:
    """The world's crawl with hostile files mixed in, and the ground truth of a run over it: the world's, plus the
    pairs each hostile file gives. compare_pairs and compare_downloads take it in the world's place."""

    world: World
    hostile: dict[str, set[tuple[str, str]]]  # file name -> its pairs

    def hostile_pairs(self) -> set[tuple[str, str]]:
        return set().union(*self.hostile.values())

    def hostile_hosts(self) -> set[str]:
        return {urlsplit(url).hostname for url, _ in self.hostile_pairs()}

    def expected_pairs(self) -> set[tuple[str, str]]:
        return self.world.expected_pairs() | self.hostile_pairs()

    def page_licenses(self) -> dict[str, str | None]:
        return self.world.page_licenses()  # the hostile files' pages name no license

    def expected_downloads(self) -> dict[str, str]:
        # their image hosts resolve to the world's server (`loaded`), which answers 404 to a host it does not serve
        return self.world.expected_downloads() | dict.fromkeys(
            (url for url, _ in self.hostile_pairs()), DownloadStatus.HTTP_4XX
        )


@pytest.fixture(scope="module")
def crawl(world) -> HostileCrawl:
    """The world with each hostile file written into one of its segments and added to its WAT listing, as a
    crawl may hold one: the run finds them as it finds the world's files."""
    listing = read_paths(str(world.root), world.crawl_id, "wat")
    hostile = {}
    for name, segment in zip(HOSTILE, world.segment_names()[:: SEGMENTS // len(HOSTILE)]):
        path = f"crawl-data/{world.crawl_id}/segments/{segment}/wat/{name}.warc.wat.gz"
        hostile[name] = write_hostile(Path(world.root) / path, name) | HOSTILE_RECORD_PAIRS.get(name, set())
        listing.append(path)
    (Path(world.crawl_dir) / "wat.paths.gz").write_bytes(gzip.compress("".join(f"{p}\n" for p in listing).encode()))
    return HostileCrawl(world, hostile)


@pytest.fixture(scope="module")
def loaded(prefect_api, crawl, tmp_path_factory):
    """The pipeline over the whole crawl; (OUT, final state, {worker: peak memory}, {stage: task runs},
    {worker: pid when the run started})."""
    world = crawl.world
    out = tmp_path_factory.mktemp("load")
    with (
        local_cluster(cpu_workers=2, gpu_workers=1, memory_limit="3GiB") as cluster,
        Client(cluster.scheduler_address) as client,
        ImageServer(world.root) as server,
    ):
        hostile_hosts = {f"{host}:80": f"{server.host}:{server.port}" for host in crawl.hostile_hosts()}
        pids = client.run(os.getpid)
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
            download=server.download_settings(
                shard_size=500, concurrency=64, shard_timeout=TASK_TIMEOUT_S, resolve=server.resolve | hostile_hosts
            ),
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
    return out, state, memory, runs, pids


def test_a_100_segment_crawl_completes_with_right_outputs(loaded, crawl):
    out, state, _, runs, _ = loaded
    assert state.is_completed(), state.message
    assert len([r for r in runs["ingest_crawl"] if r.name.startswith("extract-")]) == SEGMENTS + len(HOSTILE)
    assert len(read_json(summary_file(pairs_dir(str(out))))["segments"]) == SEGMENTS
    # the world's pairs and downloads are its ground truth's, the hostile files in the run notwithstanding
    assert (pairs := compare_pairs(crawl, str(out)))["equal"], pairs
    assert (downloads := compare_downloads(crawl, str(out)))["equal"], downloads
    summary = state.result()
    assert summary["pairs"] == len(crawl.expected_pairs())
    assert summary["indexed"] == summary["kept"] == read_json(str(out / "dataset" / "_summary.json"))["kept"] > 0


def test_each_hostile_file_costs_its_hostile_record_only(loaded, crawl):
    pairs = pairs_dir(str(loaded[0]))
    published = set()
    for name, expected in crawl.hostile.items():
        stats = read_json(pairs_stats(pairs, name))
        assert (stats["status"], stats["error"]) == (FileStatus.OK, None), (name, stats)
        counters = {
            RecordStatus.RECORD_TOO_LARGE.value: stats["skipped_records"].get(RecordStatus.RECORD_TOO_LARGE.value, 0),
            "truncated_pages": stats["truncated_pages"],
            "malformed_records": stats["malformed_records"],
        }
        assert counters == {c: int(c == HOSTILE_COUNTER[name]) for c in counters}, (name, stats)
        # the files share their ordinary records: the cross-file dedup keeps each pair in the first file only
        assert stats["kept"] + stats["duplicates_across_files"] == len(expected), (name, stats)
        table = pq.read_table(pairs_file(pairs, name), columns=["url", "caption"])
        found = set(zip(table.column("url").to_pylist(), table.column("caption").to_pylist()))
        assert found <= expected, (name, found - expected)
        published |= found
    assert published == crawl.hostile_pairs()


def test_every_worker_stays_under_its_memory_bound(loaded):
    _, _, memory, _, pids = loaded
    assert len(memory) == 3
    # a worker killed for memory comes back under its nanny with a fresh peak: each must be the one that started
    assert {addr: peak["pid"] for addr, peak in memory.items()} == pids
    for addr, peak in memory.items():
        assert 0 < peak["worker"] < WORKER_RSS_BOUND, (addr, peak["worker"] / MiB)
        assert peak["children"] == [], (addr, "started processes of its own", peak["children"])


def test_no_task_runs_past_its_timeout(loaded):
    _, _, _, runs, _ = loaded
    task_runs = [r for stage in runs.values() for r in stage]
    assert len(task_runs) > SEGMENTS
    assert [r.name for r in task_runs if r.state.name == "TimedOut"] == []
    assert all(r.state.is_completed() for r in task_runs), {
        r.name: r.state.name for r in task_runs if not r.state.is_completed()
    }
    assert max(r.total_run_time.total_seconds() for r in task_runs) < TASK_TIMEOUT_S
