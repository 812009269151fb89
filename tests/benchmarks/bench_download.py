"""Benchmark: the download stage (fetch + check + resize + encode + write shards), ours vs img2dataset.

    python tests/benchmarks/bench_download.py [--urls 20000] [--repeat 1] [--threads 64]
        [--img2dataset /work/venvs/img2dataset/bin/img2dataset] [--no-cli] [--no-img2dataset]

Both tools download the same URL list (one parquet file, url + text columns) from the same local
image server and write img2dataset-layout webdataset shards with the same settings (image_size
256, resize_mode border, jpg quality 95, 10,000 samples per shard). Measured per run:

  wall      seconds from start to exit of the tool's process
  cpu       user + system seconds of the tool's whole process tree (every descendant, also those
            that exit early: the harness is a child subreaper and collects them all with
            getrusage(RUSAGE_CHILDREN)); the image server's CPU is excluded
  peak RSS  maximum over time of the summed RSS of the tree, sampled every 0.1 s (psutil)
  img/s     successes / wall
  img/s/core  successes / cpu, i.e. images per CPU-second: the throughput one fully busy core gives

The image server (tests/benchmarks/download_server.py) is a separate process on 127.0.0.1: a pool
of photo-like ~1000x800 JPEGs of 50-500 KB (made once, cached under --workdir), served from
memory over keep-alive connections as URLs /img/{i}.jpg -> pool[i % n]; /robots.txt is 404.
All URLs name 127.0.0.1 (img2dataset has no DNS override), so clipcrawl runs with
allow_addresses=["127.0.0.1/32"] and per_host raised to its concurrency (the politeness cap
would otherwise hold it to 8 connections to the single host while img2dataset uses all of its
threads).

Lines of the table:
  clipcrawl engine   clipcrawl.tasks.download.stage.download_shard for each shard in one process (what a Dask
                     worker runs), processes=2 image workers, concurrency requests in flight
  clipcrawl CLI      `clipcrawl download` end to end: Prefect flow + a local Dask cluster
  img2dataset        --processes_count 2 --thread_count N, multiprocessing distributor
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

IMG2DATASET = "/work/venvs/img2dataset/bin/img2dataset"
CLIPCRAWL = os.path.join(os.path.dirname(sys.executable), "clipcrawl")
IMAGE_SIZE, RESIZE_MODE, ENCODE_FORMAT, ENCODE_QUALITY, SHARD_SIZE = 256, "border", "jpg", 95, 10_000

ENGINE_SCRIPT = """
# Imports inside the main guard, like a Dask worker: the image pool's spawned processes re-import
# this file as __mp_main__, and must not pay for importing Prefect (~3 s CPU each) on the way.
if __name__ == "__main__":
    import json, sys
    sys.path.insert(0, {root!r})
    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.download.stage import download_shard
    from clipcrawl.tasks.download.shards import plan_shards
    pairs, out, settings = sys.argv[1], sys.argv[2], DownloadSettings(**json.loads(sys.argv[3]))
    stats = []
    for spec in plan_shards([pairs], settings.shard_size):
        stats.append(download_shard(spec, out, settings))
    print(json.dumps(stats))
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


class TreeSampler(threading.Thread):
    """Every `interval` s: the summed RSS of our descendants (but the excluded ones' subtrees)."""

    def __init__(self, exclude: set[int], interval: float = 0.1):
        super().__init__(daemon=True)
        self.exclude, self.interval = exclude, interval
        self.peak_rss, self.peak_procs, self.samples = 0, 0, 0
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> last user+system seen
        self._stop_event = threading.Event()

    def tree(self) -> list[psutil.Process]:
        me = psutil.Process()
        procs = []
        for child in me.children():
            if child.pid in self.exclude:
                continue
            procs.append(child)
            with contextlib.suppress(psutil.Error):
                procs.extend(child.children(recursive=True))
        return procs

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, n = 0, 0
            for p in self.tree():
                with contextlib.suppress(psutil.Error):
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu[p.pid, p.create_time()] = t.user + t.system
                    n += 1
            self.peak_rss, self.peak_procs = max(self.peak_rss, rss), max(self.peak_procs, n)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def measure(cmd: list[str], exclude: set[int], env: dict | None = None, log: str | None = None) -> dict:
    """Run `cmd` to completion; wall, CPU of its whole tree, peak RSS of the tree, its stdout."""
    cpu0 = _children_cpu()
    sampler = TreeSampler(exclude)
    started = time.perf_counter()
    out_path = (log or os.path.join("/tmp", f"bench-{os.getpid()}.log")) + ".stdout"
    with open(log or os.devnull, "wb") as err, open(out_path, "wb") as out:
        # stdout to a file, not a pipe: a leaked grandchild holding a pipe open would hang us
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        sampler.start()
        proc.wait()
    wall = time.perf_counter() - started
    with open(out_path) as f:
        stdout = f.read()
    # reap what is left of the tree (orphans reparented to us, the subreaper); after 15 s, kill it
    deadline, leaked = time.monotonic() + 15, 0
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
    sampler.stop()
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise SystemExit(f"{cmd[0]} exited with {proc.returncode}\n{tail}")
    return {
        "wall": wall,
        "cpu": cpu,
        "cpu_sampled": sum(sampler.cpu.values()),
        "peak_rss": sampler.peak_rss,
        "peak_procs": sampler.peak_procs,
        "stdout": stdout,
        "leaked": leaked,
    }


# ------------------------------------------------------------------------------ the runs


def start_server(workdir: str, urls: int, pool_size: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HERE, "download_server.py"),
            "--pool",
            workdir,
            "--pool-size",
            str(pool_size),
            "--urls",
            str(urls),
        ],
        stdout=subprocess.PIPE,
    )
    line = proc.stdout.readline().decode()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"image server did not start: {line!r}")
    return proc, int(line.split()[1])


def write_pairs(path: str, port: int, urls: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table(
        {
            "url": [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(urls)],
            "text": [f"a photo number {i} of a synthetic scene" for i in range(urls)],
        }
    )
    pq.write_table(table, path)


def clipcrawl_settings(args) -> dict:
    return {
        "shard_size": SHARD_SIZE,
        "image_size": IMAGE_SIZE,
        "resize_mode": RESIZE_MODE,
        "encode_format": ENCODE_FORMAT,
        "encode_quality": ENCODE_QUALITY,
        "processes": args.processes,
        "concurrency": args.concurrency,
        "per_host": args.concurrency,
        "allow_addresses": ["127.0.0.1/32"],
    }


def run_engine(args, pairs: str, out: str, exclude: set[int]) -> dict:
    script = os.path.join(args.workdir, "engine.py")
    with open(script, "w") as f:
        f.write(ENGINE_SCRIPT.format(root=ROOT))
    m = measure(
        [sys.executable, script, pairs, out, json.dumps(clipcrawl_settings(args))],
        exclude,
        log=os.path.join(args.workdir, "engine.log"),
    )
    m["successes"] = sum(s["successes"] for s in json.loads(m["stdout"]))
    return m


def run_cli(args, pairs_dir: str, out: str, exclude: set[int]) -> dict:
    import yaml

    config = os.path.join(args.workdir, "clipcrawl.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"download": clipcrawl_settings(args)}, f)
    m = measure(
        [CLIPCRAWL, "download", "--pairs", pairs_dir, "--out", out, "--config", config],
        exclude,
        log=os.path.join(args.workdir, "cli.log"),
    )
    m["successes"] = json.loads(m["stdout"][m["stdout"].index("{") :])["successes"]
    return m


def img2dataset_cmd(args, pairs: str, out: str) -> list[str]:
    return [
        args.img2dataset,
        "--url_list",
        pairs,
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "text",
        "--output_format",
        "webdataset",
        "--output_folder",
        out,
        "--processes_count",
        str(args.processes),
        "--thread_count",
        str(args.threads),
        "--image_size",
        str(IMAGE_SIZE),
        "--resize_mode",
        RESIZE_MODE,
        "--encode_format",
        ENCODE_FORMAT,
        "--encode_quality",
        str(ENCODE_QUALITY),
        "--number_sample_per_shard",
        str(SHARD_SIZE),
        "--distributor",
        "multiprocessing",
        "--extract_exif",
        "False",
        "--compute_hash",
        "sha256",
        "--timeout",
        "10",
        "--retries",
        "0",
        "--enable_wandb",
        "False",
    ]


def run_img2dataset(args, pairs: str, out: str, exclude: set[int]) -> dict:
    env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    m = measure(img2dataset_cmd(args, pairs, out), exclude, env=env, log=os.path.join(args.workdir, "img2dataset.log"))
    m["successes"] = 0
    for name in sorted(os.listdir(out)):
        if name.endswith("_stats.json"):
            with open(os.path.join(out, name)) as f:
                m["successes"] += json.load(f)["successes"]
    return m


# ------------------------------------------------------------------------------ checking


def check_output(folder: str) -> dict:
    """Tar members per extension and every image's size, read from the tars themselves."""
    from PIL import Image

    members: dict[str, int] = {}
    sizes: dict[tuple[int, int], int] = {}
    tars = sorted(os.path.join(root, n) for root, _, names in os.walk(folder) for n in names if n.endswith(".tar"))
    for path in tars:
        with tarfile.open(path) as tar:
            for info in tar:
                ext = info.name.rsplit(".", 1)[-1]
                members[ext] = members.get(ext, 0) + 1
                if ext == "jpg":
                    size = Image.open(io.BytesIO(tar.extractfile(info).read())).size
                    sizes[size] = sizes.get(size, 0) + 1
    return {"tars": len(tars), "members": members, "sizes": sizes}


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--urls", type=int, default=20_000)
    ap.add_argument("--pool-size", type=int, default=80, help="distinct JPEGs behind the URLs")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool (all are printed)")
    ap.add_argument("--processes", type=int, default=2, help="img2dataset processes_count = clipcrawl processes")
    ap.add_argument("--threads", type=int, default=64, help="img2dataset thread_count (per process)")
    ap.add_argument("--concurrency", type=int, default=128, help="clipcrawl requests in flight (= per_host)")
    ap.add_argument("--img2dataset", default=IMG2DATASET)
    ap.add_argument("--no-img2dataset", action="store_true")
    ap.add_argument("--no-cli", action="store_true", help="skip the `clipcrawl download` CLI run")
    ap.add_argument("--no-check", action="store_true", help="skip reading back every output image")
    ap.add_argument("--workdir", default="/tmp/clipcrawl-bench-download")
    args = ap.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    become_subreaper()
    t = time.perf_counter()
    server, port = start_server(args.workdir, args.urls, args.pool_size)
    print(
        f"image server on 127.0.0.1:{port} (pid {server.pid}, ready in {time.perf_counter() - t:.1f} s; "
        f"its CPU is excluded)",
        flush=True,
    )
    from download_server import make_pool

    pool = [len(b) for b in make_pool(args.workdir, args.pool_size)]
    pool.sort()
    pairs_dir = os.path.join(args.workdir, "pairs")
    pairs = os.path.join(pairs_dir, "urls.parquet")
    write_pairs(pairs, port, args.urls)
    served = sum(pool[i % len(pool)] for i in range(args.urls))  # not sorted order, but same total per cycle

    print(
        f"{args.urls} URLs over {len(pool)} distinct JPEGs of ~1000x800, {pool[0] / 1e3:.0f}-{pool[-1] / 1e3:.0f} KB "
        f"(median {pool[len(pool) // 2] / 1e3:.0f} KB), ~{served / 1e9:.2f} GB served per run; "
        f"{psutil.cpu_count()} cores"
    )
    print(
        f"common: image_size {IMAGE_SIZE}, resize_mode {RESIZE_MODE}, encode {ENCODE_FORMAT} q{ENCODE_QUALITY}, "
        f"{SHARD_SIZE} samples/shard, sha256 per image, X-Robots-Tag checked, no retries needed"
    )
    print(
        f"clipcrawl: processes={args.processes} concurrency={args.concurrency} per_host={args.concurrency} "
        f"(raised from 8: every URL is on 127.0.0.1) allow_addresses=[127.0.0.1/32], robots.txt fetched (404)"
    )
    print(f"img2dataset: {' '.join(img2dataset_cmd(args, 'PAIRS', 'OUT')[1:])}")
    print("  (extract_exif False: clipcrawl stores no EXIF; img2dataset's default True would cost it CPU)")
    print(
        "img/s = successes / wall s; img/s/core = successes / CPU s of the tool's process tree "
        "(user+sys, all descendants); RSS = peak of the tree's summed RSS",
        flush=True,
    )

    runs: list[tuple[str, dict, str]] = []
    exclude = {server.pid}
    try:
        for r in range(args.repeat):
            plan = [("clipcrawl engine", run_engine, pairs)]
            if not args.no_img2dataset:
                plan.append(("img2dataset", run_img2dataset, pairs))
            if not args.no_cli:
                plan.append(("clipcrawl CLI", run_cli, pairs_dir))
            for name, fn, source in plan:
                out = os.path.join(args.workdir, "out-" + name.replace(" ", "-"))
                shutil.rmtree(out, ignore_errors=True)
                m = fn(args, source, out, exclude)
                runs.append((name, m, out))
                print(
                    f"  run {r + 1} {name}: {m['successes']} ok, {m['wall']:.1f} s wall, {m['cpu']:.1f} s CPU "
                    f"(sampled {m['cpu_sampled']:.1f}), peak RSS {m['peak_rss'] / 2**20:.0f} MiB "
                    f"over {m['peak_procs']} processes"
                    + (f"; {m['leaked']} processes outlived it >15 s (killed)" if m["leaked"] else ""),
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()

    base = {name: m for name, m, _ in runs if name == "img2dataset"}  # the last img2dataset run
    base_rate = base["img2dataset"]["successes"] / base["img2dataset"]["cpu"] if base else None
    print()
    print(
        f"{'tool':<18} {'run':>3} {'ok':>6} {'wall s':>7} {'CPU s':>7} {'img/s':>7} {'img/s/core':>10} "
        f"{'peak RSS MiB':>12} {'x img2dataset/core':>18}"
    )
    counts: dict[str, int] = {}
    for name, m, _ in runs:
        counts[name] = counts.get(name, 0) + 1
        per_core = m["successes"] / m["cpu"]
        ratio = f"{per_core / base_rate:.2f}x" if base_rate else "-"
        print(
            f"{name:<18} {counts[name]:>3} {m['successes']:>6} {m['wall']:>7.1f} {m['cpu']:>7.1f} "
            f"{m['successes'] / m['wall']:>7.0f} {per_core:>10.0f} {m['peak_rss'] / 2**20:>12.0f} {ratio:>18}"
        )
    totals = {m["successes"] for _, m, _ in runs}
    listed = ", ".join(f"{n} {m['successes']}" for n, m, _ in runs)
    print(f"success counts: {'all equal' if len(totals) == 1 else 'DIFFERENT'} ({listed})")

    if not args.no_check:
        seen = set()
        for name, m, out in reversed(runs):
            if name in seen:
                continue
            seen.add(name)
            c = check_output(out)
            good = c["members"].get("jpg", 0) == c["members"].get("txt", 0) == m["successes"] and set(c["sizes"]) == {
                (IMAGE_SIZE, IMAGE_SIZE)
            }
            print(
                f"check {name}: {c['tars']} tars, members {c['members']}, image sizes "
                f"{ {f'{w}x{h}': n for (w, h), n in c['sizes'].items()} } -> {'OK' if good else 'MISMATCH'}"
            )


if __name__ == "__main__":
    main()
