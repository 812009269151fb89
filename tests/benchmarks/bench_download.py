"""Benchmark: `clipcrawl download` against `img2dataset`, both run as users run them, side by side.

The one command, from the repository root, with the README's runtime install (`.venv` from the set-up's first
command: what a user runs; the test lock adds pandas, which pyarrow imports in every process):

    .venv/bin/python tests/benchmarks/bench_download.py

    options: --urls 12000,40000   sizes (URLs per run)
             --worlds one-host,hosts   --hosts 1000   (host names of the hosts world)
             --repeat 1   --prefect-server   --run-cluster   --engine (add those rows)   --no-check   --json PATH
             --img2dataset /work/venvs/img2dataset/bin/img2dataset   --workdir /tmp/clipcrawl-bench-download

For each size, for each world, for each repeat it runs img2dataset, then clipcrawl (then the engine),
alternately, each on a fresh output folder against the same image server, prints each run's figures as
it ends and a table at the end. The commands keep their defaults apart from size, mode and allowlist:

  img2dataset        img2dataset --url_list PAIRS.parquet --input_format parquet --url_col url
                     --caption_col text --output_folder OUT --processes_count 2 --thread_count 64
                     --image_size 256 --resize_mode border --output_format webdataset
                     --number_sample_per_shard 1000 --enable_wandb False
  clipcrawl          clipcrawl download --pairs PAIRS_DIR --out OUT --image-size 256 --resize-mode border
                     --allow-addresses 127.0.0.1/32 (+ --config FILE in the hosts world, see below)
  clipcrawl +server  (--prefect-server) the same command with PREFECT_API_URL set: a `prefect server start`
                     started once beforehand, as a deployment has one, instead of the temporary API
                     each command starts when none is configured (its CPU is in sys ms/img, not in
                     the tree's figures)
  clipcrawl run's cluster  (--run-cluster) +server with --dask-address: the local cluster `clipcrawl run`
                     starts (CPU workers on the cores one GPU-tagged worker leaves: one on 2 cores), started
                     once beforehand: the download stage as it runs inside `clipcrawl run`, without the
                     cluster's start-up (its workers are outside the tree: sys ms/img counts them, RSS not)
  clipcrawl engine   (--engine) clipcrawl.tasks.download.stage.download_shard for each shard, in one
                     process: what a Dask worker runs, without Prefect or Dask; the command's settings

The image server (tests/benchmarks/download_server.py) is one aiohttp process on 127.0.0.1 that answers
for every host name: a pool of photo-like ~1000x800 JPEGs of 50-500 KB (made once, cached under
--workdir), served from memory as /img/{i}.jpg -> pool[i % pool size]; /robots.txt is a small real file
(no image URL is disallowed) for every host. It counts image requests and notes when the first and
the last came (/_bench/stats, zeroed by /_bench/reset before each run).

The worlds (one parquet of url + text columns each; clipcrawl gets its folder, img2dataset the file):
  one-host  URL i is http://127.0.0.1:PORT/img/{i}.jpg: one host, so clipcrawl's per-host politeness
            cap holds it to its default connections per host.
  hosts     URL i is http://h{i % N}.bench.test:PORT/img/{i}.jpg over N = --hosts names: per-host
            politeness, one robots.txt fetch and parse per host and a connection setup per host are
            on clipcrawl's path. clipcrawl reaches them with its `resolve` setting, from a config
            file: download: {resolve: {"h0042.bench.test:PORT": "127.0.0.1:PORT", ...}}.
            img2dataset has no DNS override and nothing here resolves .bench.test, so its command
            alone gets PYTHONPATH=<dir> whose sitecustomize.py wraps socket.getaddrinfo: names ending
            in .bench.test resolve to 127.0.0.1, all others go to the real getaddrinfo. Python imports
            sitecustomize at the start of every interpreter, and img2dataset's spawned workers inherit
            PYTHONPATH, so each of its urllib threads sees the shim; it costs one string test per
            connection.

Figures per run (ratios compare with img2dataset's runs of the same size and world, their median
when --repeat > 1):
  ok            successes: clipcrawl's from the JSON summary the command prints, img2dataset's summed
                over its *_stats.json
  wall s        command start to exit
  x faster      img2dataset's wall / this wall
  sys ms/img    busy CPU of the whole machine over the run (/proc/stat, every core: user + nice +
                system + irq + softirq + steal) per success: the tool, the image server, the
                kernel's network work, and anything else running at the time
  -srv ms/img   the same without the image server's own CPU over the run (psutil on its pid)
  x i2d         this figure / img2dataset's (under 1: cheaper than img2dataset)
  tree CPU s    user + system seconds of the tool's process tree, every descendant, also those that
                exit early (the harness is a child subreaper: getrusage(RUSAGE_CHILDREN))
  RSS sum MiB   peak over time of the RSS summed over the tool's process tree (psutil, every 0.1 s)
  RSS max MiB   peak RSS of the tree's largest single process
  start s       fixed overhead at start: the server's first image request - command start
  stop s        fixed overhead at the end: command exit - the server's last image request
Then whether the success counts are identical per size and world, and a read-back of the tars of each
tool's last run (members per extension, every image 256x256; --no-check skips it). The harness's own
sampling thread is in the system-wide figures too; it is small next to either tool.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import io
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
IMG2DATASET = "/work/venvs/img2dataset/bin/img2dataset"
CLIPCRAWL = os.path.join(os.path.dirname(sys.executable), "clipcrawl")
IMAGE_SIZE, RESIZE_MODE = 256, "border"
LOOPBACK = "127.0.0.1"
ALLOW_ADDRESS = "127.0.0.1/32"
HOST_SUFFIX = ".bench.test"
WORLDS = ("one-host", "hosts")
BASELINE, CLIPCRAWL_CLI, ENGINE = "img2dataset", "clipcrawl", "clipcrawl engine"
WITH_SERVER = "clipcrawl +server"  # the command with PREFECT_API_URL set: a Prefect server already running
RUN_CLUSTER = "clipcrawl run's cluster"  # +server, on a cluster laid out as `clipcrawl run` lays out its own
BACKGROUND: set[int] = set()  # processes outside every tool's tree: the image server, a Prefect server

DNS_SHIM = f"""# Written by bench_download.py for img2dataset's processes: *{HOST_SUFFIX} resolves to {LOOPBACK}.
import socket

_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.rstrip(".").endswith({HOST_SUFFIX!r}):
        host = {LOOPBACK!r}
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
"""

ENGINE_SCRIPT = """
# Imports inside the main guard, like a Dask worker: processes that re-import this file as
# __mp_main__ must not pay for importing clipcrawl on the way.
if __name__ == "__main__":
    import json, sys
    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.download.stage import download_shard
    from clipcrawl.tasks.download.shards import plan_shards
    pairs, out, settings_file = sys.argv[1:4]
    with open(settings_file) as f:
        settings = DownloadSettings(**json.load(f))
    print(json.dumps([download_shard(spec, out, settings) for spec in plan_shards([pairs], settings.shard_size)]))
"""


# ------------------------------------------------------------------------------ measuring


def become_subreaper() -> None:
    """Orphaned descendants (pool workers whose parent died first) get reparented to us, so that
    we reap them and their CPU time lands in our RUSAGE_CHILDREN."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("warning: prctl(PR_SET_CHILD_SUBREAPER) failed: orphans' CPU may be missed", file=sys.stderr)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def busy_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot: /proc/stat's total, less idle and iowait."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class TreeSampler(threading.Thread):
    """Every `interval` s: the summed RSS of our descendants (but the excluded ones' subtrees) and
    the RSS of the largest of them."""

    def __init__(self, exclude: set[int], interval: float = 0.1):
        super().__init__(daemon=True)
        self.exclude, self.interval = exclude, interval
        self.peak_rss, self.peak_largest, self.peak_procs = 0, 0, 0
        self._stop_event = threading.Event()

    def tree(self) -> list[psutil.Process]:
        procs = []
        for child in psutil.Process().children():
            if child.pid in self.exclude:
                continue
            procs.append(child)
            with contextlib.suppress(psutil.Error):
                procs.extend(child.children(recursive=True))
        return procs

    def run(self) -> None:
        while not self._stop_event.is_set():
            sizes = []
            for p in self.tree():
                with contextlib.suppress(psutil.Error):
                    sizes.append(p.memory_info().rss)
            self.peak_rss = max(self.peak_rss, sum(sizes))
            self.peak_largest = max(self.peak_largest, max(sizes, default=0))
            self.peak_procs = max(self.peak_procs, len(sizes))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def reap(sampler: TreeSampler, grace: float = 15) -> int:
    """Wait for what is left of the tree (orphans reparented to us, the subreaper); after `grace` s,
    kill it. Returns how many processes had to be killed."""
    deadline, leaked = time.monotonic() + grace, 0
    while left := sampler.tree():
        if time.monotonic() > deadline:
            leaked = len(left)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        for p in left:
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if p.ppid() == os.getpid():
                    p.wait(timeout=0.2)
        time.sleep(0.1)
    return leaked


def measure(cmd: list[str], server_pid: int, log: str, env: dict | None = None) -> dict:
    """Run `cmd` to completion: its wall time, the machine's and the server's CPU meanwhile, the CPU
    and peak RSS of its process tree, and its stdout. Python caches bytecode, as on a user's machine, even
    where this harness runs with PYTHONDONTWRITEBYTECODE set."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONDONTWRITEBYTECODE"}
    cpu0, busy0, server0 = _children_cpu(), busy_cpu_seconds(), process_cpu(server_pid)
    sampler = TreeSampler({server_pid} | BACKGROUND)
    start, started = time.time(), time.perf_counter()
    # stdout to a file, not a pipe: a leaked grandchild holding a pipe open would hang us
    with open(log, "wb") as err, open(log + ".stdout", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        sampler.start()
        proc.wait()
    wall, end = time.perf_counter() - started, time.time()
    busy, server_cpu = busy_cpu_seconds() - busy0, process_cpu(server_pid) - server0
    leaked = reap(sampler)
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; log {log}:\n{Path(log).read_text()[-3000:]}")
    return {
        "start": start,
        "end": end,
        "wall": wall,
        "busy_cpu": busy,
        "server_cpu": server_cpu,
        "tree_cpu": _children_cpu() - cpu0,
        "peak_rss_sum": sampler.peak_rss,
        "peak_rss_largest": sampler.peak_largest,
        "peak_procs": sampler.peak_procs,
        "leaked": leaked,
        "stdout": Path(log + ".stdout").read_text(),
    }


# ------------------------------------------------------------------------------ the image server


def start_server(workdir: str, urls: int, pool_size: int) -> tuple[subprocess.Popen, int]:
    script = os.path.join(HERE, "download_server.py")
    cmd = [sys.executable, script, "--pool", workdir, "--pool-size", str(pool_size), "--urls", str(urls)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"image server did not start: {line!r}")
    return proc, int(line.split()[1])


def server_call(port: int, path: str, method: str = "GET") -> dict:
    """A /_bench/ endpoint of the image server (straight, whatever proxy the environment names)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(f"http://{LOOPBACK}:{port}{path}", method=method), timeout=10) as r:
        return json.load(r)


# ------------------------------------------------------------------------------ the worlds


@dataclass(frozen=True)
class World:
    name: str
    size: int
    pairs: str  # the parquet file, alone in its folder
    resolve: dict[str, str]  # 'host:port' -> 'ip:port' (clipcrawl's resolve setting); empty: no names
    config: str | None  # clipcrawl config file holding `resolve`
    dns_shim: str | None  # folder of img2dataset's sitecustomize.py

    @property
    def pairs_dir(self) -> str:
        return os.path.dirname(self.pairs)


def host_names(count: int) -> list[str]:
    width = max(4, len(str(count - 1)))
    return [f"h{i:0{width}d}{HOST_SUFFIX}" for i in range(count)]


def world_urls(name: str, size: int, port: int, hosts: int) -> list[str]:
    if name == "one-host":
        return [f"http://{LOOPBACK}:{port}/img/{i}.jpg" for i in range(size)]
    names = host_names(hosts)
    return [f"http://{names[i % hosts]}:{port}/img/{i}.jpg" for i in range(size)]


def write_pairs(path: str, urls: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(
        pa.table({"url": urls, "caption": [f"a photo number {i} of a synthetic scene" for i in range(len(urls))]}), path
    )


def build_world(name: str, size: int, port: int, args: argparse.Namespace) -> World:
    import yaml

    folder = os.path.join(args.workdir, "worlds", f"{name}-{size}")
    shutil.rmtree(folder, ignore_errors=True)
    pairs = os.path.join(folder, "pairs", "urls.parquet")
    write_pairs(pairs, world_urls(name, size, port, args.hosts))
    if name == "one-host":
        return World(name, size, pairs, {}, None, None)
    resolve = {f"{host}:{port}": f"{LOOPBACK}:{port}" for host in host_names(args.hosts)}
    config = os.path.join(folder, "clipcrawl.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"download": {"resolve": resolve}}, f)
    shim = os.path.join(folder, "dns-shim")
    os.makedirs(shim)
    with open(os.path.join(shim, "sitecustomize.py"), "w") as f:
        f.write(DNS_SHIM)
    return World(name, size, pairs, resolve, config, shim)


# ------------------------------------------------------------------------------ the tools


def img2dataset_cmd(exe: str, pairs: str, out: str) -> list[str]:
    return [
        *(exe, "--url_list", pairs, "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption"),
        *("--output_folder", out, "--processes_count", "2", "--thread_count", "64"),
        *("--image_size", str(IMAGE_SIZE), "--resize_mode", RESIZE_MODE, "--output_format", "webdataset"),
        *("--number_sample_per_shard", "1000", "--enable_wandb", "False"),
    ]


def clipcrawl_cmd(pairs_dir: str, out: str, config: str | None) -> list[str]:
    cmd = [CLIPCRAWL, "download", "--pairs", pairs_dir, "--out", out]
    cmd += ["--image-size", str(IMAGE_SIZE), "--resize-mode", RESIZE_MODE, "--allow-addresses", ALLOW_ADDRESS]
    return cmd + (["--config", config] if config else [])


def run_img2dataset(args, world: World, out: str, server_pid: int, log: str) -> dict:
    env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"}
    if world.dns_shim:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [world.dns_shim, os.environ.get("PYTHONPATH")]))
    m = measure(img2dataset_cmd(args.img2dataset, world.pairs, out), server_pid, log, env)
    m["successes"] = sum(
        json.loads((Path(out) / name).read_text())["successes"]
        for name in os.listdir(out)
        if name.endswith("_stats.json")
    )
    return m


def run_clipcrawl(
    args, world: World, out: str, server_pid: int, log: str, env: dict | None = None, extra: tuple[str, ...] = ()
) -> dict:
    m = measure(clipcrawl_cmd(world.pairs_dir, out, world.config) + list(extra), server_pid, log, env)
    m["successes"] = last_json_object(m["stdout"])["successes"]
    return m


def last_json_object(stdout: str) -> dict:
    """The JSON object a command printed last (indented: it starts on a line of its own, "{")."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def run_engine(args, world: World, out: str, server_pid: int, log: str) -> dict:
    script, settings = os.path.join(args.workdir, "engine.py"), os.path.join(args.workdir, "engine-settings.json")
    Path(script).write_text(ENGINE_SCRIPT)
    options = {"image_size": IMAGE_SIZE, "resize_mode": RESIZE_MODE, "allow_addresses": [ALLOW_ADDRESS]}
    Path(settings).write_text(json.dumps(options | {"resolve": world.resolve}))
    m = measure([sys.executable, script, world.pairs, out, settings], server_pid, log)
    m["successes"] = sum(s["successes"] for s in json.loads(m["stdout"]))
    return m


def run_with_server(args, world: World, out: str, server_pid: int, log: str) -> dict:
    return run_clipcrawl(args, world, out, server_pid, log, os.environ | {"PREFECT_API_URL": args.prefect_api})


def run_on_run_cluster(args, world: World, out: str, server_pid: int, log: str) -> dict:
    env = os.environ | {"PREFECT_API_URL": args.prefect_api}
    return run_clipcrawl(args, world, out, server_pid, log, env, ("--dask-address", args.run_cluster_address))


RUN_CLUSTER_SCRIPT = """
from clipcrawl.flows.runner import local_cluster
import time
cluster = local_cluster()  # what `clipcrawl run` starts: CPU workers on the cores a GPU-tagged worker leaves
print(cluster.scheduler_address, flush=True)
time.sleep(10**9)
"""


def start_run_cluster(api: str) -> tuple[subprocess.Popen, str]:
    """`clipcrawl run`'s local cluster, started once beforehand and kept (outside every measured tree, like the
    Prefect server): the download stage's per-image cost there, without the cluster's start-up."""
    env = os.environ | {"PREFECT_API_URL": api}
    proc = subprocess.Popen([sys.executable, "-c", RUN_CLUSTER_SCRIPT], stdout=subprocess.PIPE, env=env, text=True)
    address = proc.stdout.readline().strip()
    if not address.startswith("tcp://"):  # the workers' preloads (torch on the GPU-tagged one) ran before this
        proc.kill()
        raise SystemExit(f"run's cluster did not start: {address!r}")
    return proc, address


def start_prefect_server(workdir: str) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port, as a deployment runs it (outside every measured tree)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PREFECT_UI_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = os.path.join(os.path.dirname(CLIPCRAWL), "prefect")
    log = open(os.path.join(workdir, "prefect-server.log"), "wb")  # noqa: SIM115 - open as long as the server
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", LOOPBACK, "--port", str(port)], stdout=log, stderr=log, env=env
    )
    url = f"http://{LOOPBACK}:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5):
            return proc, url
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the Prefect server did not start; see {log.name}")


TOOLS = {
    BASELINE: run_img2dataset,
    CLIPCRAWL_CLI: run_clipcrawl,
    WITH_SERVER: run_with_server,
    RUN_CLUSTER: run_on_run_cluster,
    ENGINE: run_engine,
}


def run_one(args, tool: str, world: World, repeat: int, port: int, server_pid: int) -> dict:
    """One measured run of `tool` on `world`, on a fresh output folder; the server's view added."""
    slug = f"{world.size}-{world.name}-{repeat + 1}-{tool.replace(' ', '-')}"
    out, log = os.path.join(args.workdir, "out", slug), os.path.join(args.workdir, "logs", slug + ".log")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    server_call(port, "/_bench/reset", "POST")
    m = TOOLS[tool](args, world, out, server_pid, log)
    seen = server_call(port, "/_bench/stats")
    m["startup"] = seen["first_image"] - m["start"] if seen["first_image"] else None
    m["shutdown"] = m["end"] - seen["last_image"] if seen["last_image"] else None
    m["image_requests"], m["robots_requests"] = seen["images"], seen["robots"]
    return m | {"tool": tool, "size": world.size, "world": world.name, "repeat": repeat + 1, "out": out}


# ------------------------------------------------------------------------------ checking


def check_output(folder: str) -> dict:
    """Tar members per extension and every image's size, read from the tars themselves."""
    from PIL import Image

    members: dict[str, int] = {}
    sizes: dict[str, int] = {}
    tars = sorted(os.path.join(root, n) for root, _, names in os.walk(folder) for n in names if n.endswith(".tar"))
    for path in tars:
        with tarfile.open(path) as tar:
            for info in tar:
                ext = info.name.rsplit(".", 1)[-1]
                members[ext] = members.get(ext, 0) + 1
                if ext == "jpg":
                    w, h = Image.open(io.BytesIO(tar.extractfile(info).read())).size
                    sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
    return {"tars": len(tars), "members": members, "sizes": sizes}


def check_line(run: dict) -> str:
    c = check_output(run["out"])
    jpg, txt = c["members"].get("jpg", 0), c["members"].get("txt", 0)
    good = jpg == txt == run["successes"] and set(c["sizes"]) == {f"{IMAGE_SIZE}x{IMAGE_SIZE}"}
    return (
        f"check {run['tool']} ({run['size']} {run['world']} run {run['repeat']}): {c['tars']} tars, "
        f"members {c['members']}, image sizes {c['sizes']} -> {'OK' if good else 'MISMATCH'}"
    )


# ------------------------------------------------------------------------------ reporting


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def per_image_ms(run: dict, cpu: float) -> float | None:
    return 1000 * cpu / run["successes"] if run["successes"] else None


def figures(run: dict) -> dict:
    """The compared figures of one run (None where a figure cannot be formed)."""
    return {
        "wall": run["wall"],
        "sys_ms": per_image_ms(run, run["busy_cpu"]),
        "sys_ms_no_server": per_image_ms(run, run["busy_cpu"] - run["server_cpu"]),
        "rss_sum": run["peak_rss_sum"] / 2**20,
        "rss_largest": run["peak_rss_largest"] / 2**20,
    }


def baselines(runs: list[dict]) -> dict[tuple[int, str], dict]:
    """img2dataset's median figures per (size, world)."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for run in runs:
        if run["tool"] == BASELINE:
            groups.setdefault((run["size"], run["world"]), []).append(figures(run))
    return {key: {k: _median([f[k] for f in fs]) for k in fs[0]} for key, fs in groups.items()}


def _median(values: list[float | None]) -> float | None:
    return None if None in values else statistics.median(values)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def print_run(run: dict) -> None:
    f = figures(run)
    print(
        f"  {run['size']} {run['world']} run {run['repeat']} {run['tool']}: {run['successes']} ok, "
        f"{run['wall']:.1f} s wall; machine busy {run['busy_cpu']:.1f} CPU-s (image server {run['server_cpu']:.1f}), "
        f"tree {run['tree_cpu']:.1f} CPU-s; peak RSS {f['rss_sum']:.0f} MiB summed over up to "
        f"{run['peak_procs']} processes, largest {f['rss_largest']:.0f} MiB; start-up {_seconds(run['startup'])} s, "
        f"shutdown {_seconds(run['shutdown'])} s; server saw {run['image_requests']} image and "
        f"{run['robots_requests']} robots.txt requests"
        + (f"; {run['leaked']} processes outlived it >15 s (killed)" if run["leaked"] else ""),
        flush=True,
    )


COLUMNS = (
    ("size", 6),
    ("world", 8),
    ("tool", 16),
    ("run", 3),
    ("ok", 6),
    ("wall s", 7),
    ("x faster", 8),
    ("sys ms/img", 10),
    ("x i2d", 6),
    ("-srv ms/img", 11),
    ("x i2d", 6),
    ("tree CPU s", 10),
    ("RSS sum MiB", 11),
    ("x i2d", 6),
    ("RSS max MiB", 11),
    ("start s", 7),
    ("stop s", 6),
)


def table_row(run: dict, base: dict | None) -> list[str]:
    f, b = figures(run), base or dict.fromkeys(figures(run))

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return [
        str(run["size"]),
        run["world"],
        run["tool"],
        str(run["repeat"]),
        str(run["successes"]),
        f"{run['wall']:.1f}",
        ratio(b["wall"], f["wall"]),
        ms(f["sys_ms"]),
        ratio(f["sys_ms"], b["sys_ms"]),
        ms(f["sys_ms_no_server"]),
        ratio(f["sys_ms_no_server"], b["sys_ms_no_server"]),
        f"{run['tree_cpu']:.1f}",
        f"{f['rss_sum']:.0f}",
        ratio(f["rss_sum"], b["rss_sum"]),
        f"{f['rss_largest']:.0f}",
        _seconds(run["startup"]),
        _seconds(run["shutdown"]),
    ]


def print_table(runs: list[dict]) -> None:
    base = baselines(runs)
    lines = [[name for name, _ in COLUMNS]] + [table_row(r, base.get((r["size"], r["world"]))) for r in runs]
    for cells in lines:
        print(" ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
    print(
        "x faster = img2dataset wall / wall; x i2d = figure / img2dataset's (median over repeats); "
        "ms/img = busy CPU-ms of the whole machine per success (-srv: without the image server's CPU)"
    )


def print_success_counts(runs: list[dict]) -> None:
    groups: dict[tuple[int, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["size"], run["world"]), []).append(run)
    for (size, world), group in groups.items():
        counts = {r["successes"] for r in group}
        listed = ", ".join(f"{r['tool']} {r['successes']}" for r in group)
        print(f"successes {size} {world}: {'identical' if len(counts) == 1 else 'DIFFERENT'} ({listed})")


def print_header(args, port: int, sizes: list[int]) -> None:
    from download_server import make_pool

    pool = sorted(len(b) for b in make_pool(args.workdir, args.pool_size))
    print(
        f"machine: {os.cpu_count()} cores ({psutil.cpu_count(logical=False)} physical), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; image server on {LOOPBACK}:{port}"
    )
    print(
        f"images: {len(pool)} distinct JPEGs of ~1000x800, {pool[0] / 1e3:.0f}-{pool[-1] / 1e3:.0f} KB "
        f"(median {pool[len(pool) // 2] / 1e3:.0f} KB) behind {', '.join(map(str, sizes))} URLs; "
        f"hosts world: {args.hosts} host names *{HOST_SUFFIX}"
    )
    print(f"command {BASELINE}: {' '.join(img2dataset_cmd(args.img2dataset, 'PAIRS.parquet', 'OUT'))}")
    print(f"  (env NO_ALBUMENTATIONS_UPDATE=1; hosts world: PYTHONPATH=<dns shim>, *{HOST_SUFFIX} -> {LOOPBACK})")
    print(f"command {CLIPCRAWL_CLI}: {' '.join(clipcrawl_cmd('PAIRS_DIR', 'OUT', None))}")
    print(f"  ({CLIPCRAWL}: {install_kind()})")
    print("  (hosts world: + --config FILE holding download: {resolve: {'HOST:PORT': '127.0.0.1:PORT', ...}})")
    if args.prefect_server:
        print(f"{WITH_SERVER}: the same command with PREFECT_API_URL={args.prefect_api} (a `prefect server start`")
        print("  started once beforehand, as a deployment has one: outside the tree; its CPU is in sys ms/img)")
    if args.run_cluster:
        print(
            f"{RUN_CLUSTER}: +server with --dask-address {args.run_cluster_address}: the cluster `clipcrawl run` starts"
        )
        print("  (CPU workers on the cores one GPU-tagged worker leaves), started once beforehand, outside the tree")
    if args.engine:
        print(f"{ENGINE}: download_shard for each shard in one process, settings of the command")
    print(flush=True)


def install_kind() -> str:
    """Which install the clipcrawl measured is: the README's runtime lock has no pandas; the test lock's does, and
    pyarrow then imports it in each process that first builds an array from Python objects (~20 MiB and ~0.4
    CPU-s a process: the workers and the command)."""
    if importlib.util.find_spec("pandas") is None:
        return "the runtime lock's install: no pandas, as a user's"
    return "pandas is installed (the test lock): pyarrow imports it in every process, ~20 MiB each; run the benchmark with the runtime lock's interpreter for a user's figures"


# ------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--urls", default="12000,40000", help="sizes to run, comma separated")
    ap.add_argument("--worlds", default=",".join(WORLDS), help=f"worlds to run, comma separated: {', '.join(WORLDS)}")
    ap.add_argument("--hosts", type=int, default=1000, help="host names of the hosts world")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool per size and world (all printed)")
    ap.add_argument("--engine", action="store_true", help="also run the engine alone (download_shard in one process)")
    ap.add_argument(
        "--prefect-server",
        action="store_true",
        help="also run the command with PREFECT_API_URL set, a Prefect server started once beforehand",
    )
    ap.add_argument(
        "--run-cluster",
        action="store_true",
        help="also run +server on the local cluster `clipcrawl run` starts (implies --prefect-server)",
    )
    ap.add_argument("--pool-size", type=int, default=80, help="distinct JPEGs behind the URLs")
    ap.add_argument("--img2dataset", default=IMG2DATASET)
    ap.add_argument("--no-check", action="store_true", help="skip reading back the tars of each tool's last run")
    ap.add_argument("--json", help="write every run's figures to this file")
    ap.add_argument("--workdir", default="/tmp/clipcrawl-bench-download")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.urls.split(",")]
    args.prefect_server = args.prefect_server or args.run_cluster
    args.world_names = args.worlds.split(",")
    if unknown := set(args.world_names) - set(WORLDS):
        ap.error(f"unknown worlds {sorted(unknown)}: choose from {', '.join(WORLDS)}")
    return args


def main() -> None:
    args = parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    become_subreaper()
    tools = [BASELINE, CLIPCRAWL_CLI] + [WITH_SERVER] * args.prefect_server + [RUN_CLUSTER] * args.run_cluster
    tools += [ENGINE] * args.engine
    plan = [
        (size, name, r, tool)
        for size in args.sizes
        for name in args.world_names
        for r in range(args.repeat)
        for tool in tools
    ]
    last_of_tool = {tool: i for i, (*_, tool) in enumerate(plan)}
    server, port = start_server(args.workdir, max(args.sizes), args.pool_size)
    prefect_server = run_cluster = None
    if args.prefect_server:
        prefect_server, args.prefect_api = start_prefect_server(args.workdir)
        BACKGROUND.add(prefect_server.pid)
    if args.run_cluster:
        run_cluster, args.run_cluster_address = start_run_cluster(args.prefect_api)
        BACKGROUND.add(run_cluster.pid)  # with its subtree, the workers
    runs, checks = [], []
    try:
        print_header(args, port, args.sizes)
        worlds = {(size, name): build_world(name, size, port, args) for size in args.sizes for name in args.world_names}
        for i, (size, name, r, tool) in enumerate(plan):
            run = run_one(args, tool, worlds[size, name], r, port, server.pid)
            print_run(run)
            if last_of_tool[tool] == i and not args.no_check:
                checks.append(check_line(run))
            shutil.rmtree(run["out"], ignore_errors=True)  # disk: the big sizes' outputs add up
            runs.append({k: v for k, v in run.items() if k != "stdout"})
    finally:
        for proc in filter(None, (server, prefect_server, run_cluster)):
            proc.terminate()
            proc.wait()
    print()
    print_table(runs)
    print_success_counts(runs)
    for line in checks:
        print(line)
    if args.json:
        commands = {
            BASELINE: img2dataset_cmd(args.img2dataset, "PAIRS.parquet", "OUT"),
            CLIPCRAWL_CLI: clipcrawl_cmd("PAIRS_DIR", "OUT", None),
        }
        Path(args.json).write_text(json.dumps({"cores": os.cpu_count(), "commands": commands, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
