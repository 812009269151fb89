"""Benchmark: a crawl-scale run on this machine, as a deployment runs it: many small units through ingest and download.

    .venv/bin/python tests/benchmarks/bench_scale.py [--files 10000] [--shards 2000] [--database postgres]
        [--per-shard 5] [--workdir /tmp/clipcrawl-bench-scale] [--keep]

What it runs:
  1. a synthetic crawl of --files small WAT files (100 segments, 2 pages per file; made once, kept in --workdir);
  2. infra/local/up.sh: PostgreSQL (--database postgres, the default; or sqlite), a Prefect server on it, a Dask
     scheduler and its workers (a CPU worker per core, and the GPU-tagged one, idle here), each its own process,
     as a deployment has them;
  3. `clipcrawl ingest --crawl ID --source WORLD --out OUT` against them (PREFECT_API_URL, CLIPCRAWL_DASK_ADDRESS),
     one extract task per file, then the dedup and publish tasks;
  4. `clipcrawl download --pairs PAIRS --out OUT --shard-size --per-shard --allow-addresses 127.0.0.1/32`: --shards x
     --per-shard URLs of bench_download.py's image server (well-behaved JPEGs on 127.0.0.1), so that the shards'
     own work is small and orchestration shows (the world's server holds slow and hostile images on purpose);
  5. infra/local/down.sh (unless --keep).

Figures per command (printed as each ends, then as JSON):
  wall s              command start to exit
  units, tasks        files or shards; Prefect task runs of the command's flow run (read from the API)
  task s              the sum of the task runs' run times (Prefect's total_run_time)
  s/task overhead     (wall x worker slots - task s) / tasks: what orchestration costs per task, idle slots included
  trigger->first s    command start -> the first task run's start time, as the API recorded it
  flow RSS MiB        peak RSS of the command's process (the flow runs in it; with a cluster address it starts no
                      Dask scheduler of its own)
  scheduler RSS MiB   peak RSS of the Dask scheduler process (up.sh's), and at the command's start ("at start":
                      the scheduler serves every command of the run, and its RSS does not come back down after one)
  server RSS MiB      peak RSS of the Prefect server process, and at the command's start
  API ms p50/p95/max  latency of GET /api/health and of POST /api/task_runs/count (a query over the table the
                      run fills), asked one after the other from this process, a pair every 0.5 s or when the
                      last answer came; "failed": requests refused or not answered within 30 s
  database MB         the Prefect database's size after the command (pg_database_size, or the SQLite file), and
                      before it ("at start": a later command's figure holds the earlier commands' runs)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime

import psutil
from bench_download import start_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)
CLIPCRAWL = os.path.join(os.path.dirname(sys.executable), "clipcrawl")
SEGMENTS = 100
SAMPLE_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_world(workdir: str, files: int):
    from clipcrawl.tasks.world import WorldSpec, generate_world

    spec = WorldSpec(
        seed=22,
        segments=SEGMENTS,
        files_per_segment=max(1, files // SEGMENTS),
        pages_per_file=2,
        images_per_page=(1, 6),
        warc=False,
    )
    started = time.monotonic()
    world = generate_world(os.path.join(workdir, f"world-{files}"), spec, workers=os.cpu_count() or 1)
    print(
        f"world: {spec.segments * spec.files_per_segment} WAT files in {time.monotonic() - started:.0f} s at {world.root}"
    )
    return world


class Cluster:
    """infra/local/up.sh's servers in a state folder of their own, on free ports."""

    def __init__(self, workdir: str, database: str, keep: bool = False):
        self.keep = keep
        self.state = os.path.join(workdir, "local")
        self.env = os.environ | {
            "CLIPCRAWL_LOCAL": self.state,
            "PREFECT_DATABASE": database,
            "POSTGRES_PORT": str(free_port()),
            "PREFECT_PORT": str(free_port()),
            "DASK_PORT": str(free_port()),
            "DASK_DASHBOARD_PORT": str(free_port()),
            "PYTHON": sys.executable,
            # every core a CPU worker: the GPU-tagged worker up.sh also starts has nothing to do in these stages
            "CPU_WORKERS": str(os.cpu_count() or 1),
        }
        self.database = database

    def __enter__(self) -> Cluster:
        started = time.monotonic()
        try:
            subprocess.run(["bash", "infra/local/up.sh"], cwd=ROOT, env=self.env, check=True)
        except subprocess.CalledProcessError:
            self.__exit__()
            raise
        line = subprocess.run(
            ["bash", "infra/local/up.sh", "--env"], cwd=ROOT, env=self.env, capture_output=True, text=True, check=True
        ).stdout
        self.client_env = dict(kv.split("=", 1) for kv in line.removeprefix("export ").split())
        self.api = self.client_env["PREFECT_API_URL"]
        print(f"cluster: up in {time.monotonic() - started:.0f} s, API {self.api}, database {self.database}")
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep:
            subprocess.run(["bash", "infra/local/down.sh"], cwd=ROOT, env=self.env, check=False)

    def pid(self, name: str) -> int:
        with open(os.path.join(self.state, "pids", f"{name}.pid")) as f:
            return int(f.read())

    def process(self, name: str) -> psutil.Process:
        """The named server's python process (up.sh records its session leader, which may be a wrapper)."""
        leader = psutil.Process(self.pid(name))
        tree = [leader, *leader.children(recursive=True)]
        return max(tree, key=lambda p: p.memory_info().rss)

    def worker_slots(self) -> int:
        from distributed import Client

        with Client(self.client_env["CLIPCRAWL_DASK_ADDRESS"], timeout=30) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
        return sum(w["nthreads"] for w in workers if w.get("resources", {}).get("CPU"))

    def database_mb(self) -> float:
        if self.database == "sqlite":
            path = os.path.join(self.state, "prefect", "prefect.db")
            return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) / 1e6
        import asyncio

        import asyncpg

        async def size() -> int:
            with open(os.path.join(self.state, "postgres", "password")) as f:
                password = f.read().strip()
            connection = await asyncpg.connect(
                host="127.0.0.1",
                port=int(self.env["POSTGRES_PORT"]),
                user="prefect",
                password=password,
                database="prefect",
            )
            try:
                return await connection.fetchval("SELECT pg_database_size('prefect')")
            finally:
                await connection.close()

        return asyncio.run(size()) / 1e6


class Monitor:
    """Every SAMPLE_S: RSS of the watched processes (one thread), latency of two API requests (another, so that a
    slow API does not space out the RSS samples). The RSS each process had when the monitor started is kept too:
    the servers and the scheduler outlive a command, so what a command adds shows against it."""

    def __init__(self, api: str, processes: dict[str, psutil.Process]):
        self.api, self.processes = api, processes
        self.start_rss = {name: self.rss_of(process) for name, process in processes.items()}
        self.rss = dict(self.start_rss)
        self.latency: dict[str, list[float]] = {"health": [], "task_runs/count": []}
        self.failed = dict.fromkeys(self.latency, 0)  # requests refused or over 30 s: no latency of their own
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=loop, daemon=True) for loop in (self.sample_rss, self.probe_api)]

    @staticmethod
    def rss_of(process: psutil.Process) -> int:
        with contextlib.suppress(psutil.Error):
            return process.memory_info().rss
        return 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def sample_rss(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            for name, process in self.processes.items():
                self.rss[name] = max(self.rss[name], self.rss_of(process))

    def ask(self, what: str, request: urllib.request.Request) -> None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            self.latency[what].append(time.perf_counter() - started)
        except OSError:
            self.failed[what] += 1

    def probe_api(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            self.ask("health", urllib.request.Request(f"{self.api}/health"))
            count = urllib.request.Request(
                f"{self.api}/task_runs/count", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
            )
            self.ask("task_runs/count", count)

    def stop(self) -> dict:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        figures = {f"{name} RSS MiB": round(rss / 2**20) for name, rss in self.rss.items()}
        figures |= {
            f"{name} RSS MiB at start": round(rss / 2**20) for name, rss in self.start_rss.items() if name != "flow"
        }
        for what, values in self.latency.items():
            ms = sorted(v * 1000 for v in values)
            if ms:
                p95 = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
                figures[f"API {what} ms p50/p95/max"] = [round(statistics.median(ms)), round(p95), round(ms[-1])]
            figures[f"API {what} failed"] = self.failed[what]
        return figures


def flow_task_runs(api: str, flow_name: str, since: datetime) -> list[dict]:
    """The task runs of the newest run of `flow_name` started after `since` (every page of them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        if not runs:
            return []
        tasks, offset = [], 0
        while True:
            page = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[runs[0].id])),
                sort=TaskRunSort.ID_DESC,  # unique: pages by offset neither overlap nor skip
                limit=200,
                offset=offset,
            )
            tasks += [{"start": t.start_time, "seconds": t.total_run_time.total_seconds()} for t in page]
            if len(page) < 200:
                return tasks
            offset += 200


def run_command(name: str, argv: list[str], cluster: Cluster, flow_name: str, units: int, slots: int) -> dict:
    env = os.environ | cluster.client_env
    since = datetime.now().astimezone()
    database_before = cluster.database_mb()
    started, start_time = time.perf_counter(), time.time()
    log = os.path.join(os.path.dirname(cluster.state), f"{name}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([CLIPCRAWL, *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
        monitor = Monitor(
            cluster.api,
            {
                "flow": psutil.Process(proc.pid),
                "scheduler": cluster.process("dask-scheduler"),
                "server": cluster.process("prefect-server"),
            },
        )
        monitor.start()
        code = proc.wait()
    wall = time.perf_counter() - started
    figures = monitor.stop()
    if code != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{name} failed with code {code}; the end of {log}:\n{tail}")
    tasks = flow_task_runs(cluster.api, flow_name, since)
    task_seconds = sum(t["seconds"] for t in tasks)
    first = min((t["start"].timestamp() for t in tasks if t["start"]), default=float("nan"))
    result = {
        "command": name,
        "wall s": round(wall, 1),
        "units": units,
        "tasks": len(tasks),
        "worker slots": slots,
        "task s": round(task_seconds, 1),
        "s/task overhead": round((wall * slots - task_seconds) / max(1, len(tasks)), 3),
        "trigger->first s": round(first - start_time, 1),
        **figures,
        "database MB": round(cluster.database_mb(), 1),
        "database MB at start": round(database_before, 1),
    }
    print(json.dumps(result))
    return result


def download_pairs(workdir: str, urls: int, port: int) -> str:
    """A pairs folder of `urls` URLs of the image server."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = os.path.join(workdir, "download-pairs")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    table = pa.table(
        {
            "url": [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(urls)],
            "caption": [f"image {i}" for i in range(urls)],
        }
    )
    pq.write_table(table, os.path.join(folder, "pairs.parquet"))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="WAT files to ingest (0: no ingest)")
    ap.add_argument("--shards", type=int, default=2_000)
    ap.add_argument("--per-shard", type=int, default=5, help="URLs per download shard")
    ap.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--workdir", default="/tmp/clipcrawl-bench-scale")
    ap.add_argument("--keep", action="store_true", help="leave the servers running (infra/local/down.sh stops them)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    world = make_world(args.workdir, args.files) if args.files else None
    out = os.path.join(args.workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(os.path.join(args.workdir, "local"), ignore_errors=True)
    results = []
    with Cluster(args.workdir, args.database, keep=args.keep) as cluster:
        slots = cluster.worker_slots()
        if world:
            ingest = ["ingest", "--crawl", world.crawl_id, "--source", str(world.root), "--out", out]
            results.append(run_command("ingest", ingest, cluster, "ingest_crawl", len(world.wat_uris()), slots))
        if args.shards:
            urls = args.shards * args.per_shard
            server, port = start_server(os.path.join(args.workdir, "pool"), urls, 40)
            try:
                download = [
                    "download", "--pairs", download_pairs(args.workdir, urls, port), "--out", out,
                    "--shard-size", str(args.per_shard), "--allow-addresses", "127.0.0.1/32",
                ]  # fmt: skip
                results.append(run_command("download", download, cluster, "download_images", args.shards, slots))
            finally:
                server.kill()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
