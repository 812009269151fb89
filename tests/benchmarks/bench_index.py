"""Benchmark: the index stage's kNN index (clipcrawl.tasks.index: choice, train, tune) against autofaiss, side by side on the same embeddings.

    python tests/benchmarks/bench_index.py [--n 1000000] [--max-index-memory 2G[,512M]] [--queries 1000]
        [--memory-available 16G] [--threads N] [--work DIR] [--seed 0] [--no-incremental]
        [--autofaiss-python /work/venvs/autofaiss/bin/python]

Data (made once per --n and --seed, reused with --work): N x 512 float16 L2-normalised vectors clustered
like CLIP image embeddings, in clip-retrieval's layout (data/img_emb/img_emb_{i:05d}.npy, 100,000 rows
each): 4,000 cluster centres on the sphere around a common direction (random pairs have cosine ~0.3),
cluster sizes log-normal, anisotropic noise with a power-law spectrum, 2% near-duplicates; the top-1
neighbour cosine of a held-out vector is 0.77-0.94 (5th-95th percentile) at 1M, its 10th ~0.85. Besides
the indexed shards and from the same distribution: --queries held-out evaluation queries, as many tuning
queries for our tune() (the stage tunes on the other modality's embeddings, never on its own rows), and
an extra shard of N/10 vectors for the incremental test.

Each build runs alone in its own process, one after another, with the same memory budget and threads:

  clipcrawl   clipcrawl.tasks.index.train.build(parts, IndexSettings(max_index_memory_gb=budget)) + exact_knn and tune()
              on the tuning queries (the stage's build includes its tuning) + write_index
  autofaiss   autofaiss.build_index(dir, max_index_memory_usage=budget, metric_type="ip") in its own venv
              (tests/benchmarks/index_peer.py): its own index choice, hyper-parameters and metrics

  wall        seconds from start to exit of the builder's process (imports and writing the index included)
  peak RSS    the process's VmHWM (sampled every 0.1 s and read by the process at its end); "anon" = the
              peak of RssAnon sampled every 0.1 s, i.e. without the pages of memory-mapped embedding files,
              which the kernel can drop at will

Both saved indices are then evaluated by one harness in this process (this venv's faiss): exact top-10 of
the held-out queries over the shards (faiss.contrib.exhaustive_search, not the code under test),
each index read from disk with the search parameters its builder chose (ours: tune()'s "params";
autofaiss: "index_param" of its index_infos), faiss on 1 thread, queries one at a time:
recall@10 = mean |found top-10 ∩ true top-10| / 10, latency p50/p99 of one search call.

Incremental (unless --no-incremental; with the first budget only): clipcrawl.tasks.index.train.add(index, [extra shard]) on
our saved index in its own process versus a full rebuild of ours on the N + N/10 vectors (also its own
process), and the recall@10 of both against exact search over all N + N/10.

The machine may be shared: the load average is printed; ratios matter more than absolute figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

AUTOFAISS_PYTHON = "/work/venvs/autofaiss/bin/python"
DIM, SHARD_ROWS, K = 512, 100_000, 10


# ------------------------------------------------------------------------------ data


class ClipLikeVectors:
    """A deterministic mixture of anisotropic clusters on the sphere, shaped like CLIP image embeddings."""

    def __init__(
        self,
        seed: int,
        clusters: int = 4000,
        alpha: float = 0.6,
        mean_weight: float = 0.9,
        spread: float = 0.6,
        duplicates: float = 0.02,
    ):
        rng = np.random.default_rng([seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        spectrum = np.arange(1, DIM + 1) ** -alpha  # power-law variances: a low effective dimension
        spectrum /= np.sqrt((spectrum**2).sum())
        self.basis = (spectrum[:, None] * q).astype(np.float32)  # z @ basis: noise of norm ~1
        mean = rng.standard_normal(DIM)
        g = rng.standard_normal((clusters, DIM)).astype(np.float32) @ self.basis
        c = mean_weight * mean / np.linalg.norm(mean) + g / np.linalg.norm(g, axis=1, keepdims=True)
        self.centres = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
        w = rng.lognormal(0, 1.0, clusters)
        self.weights = w / w.sum()
        self.scale = (spread * rng.lognormal(0, 0.25, clusters)).astype(np.float32)
        self.duplicates = duplicates

    def sample(self, n: int, seed: list[int]) -> np.ndarray:
        """(n, DIM) float16, L2-normalised; the same rows for the same seed."""
        rng = np.random.default_rng(seed)
        j = rng.choice(len(self.centres), n, p=self.weights)
        x = self.centres[j] + self.scale[j, None] * (rng.standard_normal((n, DIM), dtype=np.float32) @ self.basis)
        dups = int(n * self.duplicates)
        if dups:  # near-duplicates: re-uploads, crops and resizes of one image
            src, dst = rng.integers(0, n, dups), rng.integers(0, n, dups)
            x[dst] = x[src] + 0.05 * (rng.standard_normal((dups, DIM), dtype=np.float32) @ self.basis)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float16)


def write_npy(path: str, x: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, x)
    os.replace(tmp, path)


def make_data(work: str, n: int, queries: int, seed: int) -> dict:
    """The shards, the extra shard and the query sets under work/data-{n}-{seed}/ (made once)."""
    root = os.path.join(work, f"data-{n}-{seed}")
    paths = {
        "dir": os.path.join(root, "img_emb"),
        "extra_dir": os.path.join(root, "extra"),
        "queries": os.path.join(root, f"queries-{queries}.npy"),
        "tune_queries": os.path.join(root, f"tune-queries-{queries}.npy"),
    }
    os.makedirs(paths["dir"], exist_ok=True)
    os.makedirs(paths["extra_dir"], exist_ok=True)
    shards = (n + SHARD_ROWS - 1) // SHARD_ROWS
    paths["shards"] = [os.path.join(paths["dir"], f"img_emb_{i:05d}.npy") for i in range(shards)]
    paths["extra"] = os.path.join(paths["extra_dir"], f"img_emb_{shards:05d}.npy")
    model, started, made = None, time.perf_counter(), 0
    todo = [(p, min(SHARD_ROWS, n - i * SHARD_ROWS), [seed, 1, i]) for i, p in enumerate(paths["shards"])]
    todo += [
        (paths["extra"], n // 10, [seed, 2]),
        (paths["queries"], queries, [seed, 3]),
        (paths["tune_queries"], queries, [seed, 4]),
    ]
    for path, rows, stream in todo:
        if not os.path.exists(path):
            model = model or ClipLikeVectors(seed)
            write_npy(path, model.sample(rows, stream))
            made += rows
    paths["made_s"] = time.perf_counter() - started if made else 0.0
    return paths


def ground_truth(paths: list[str], queries: np.ndarray, cache: str) -> np.ndarray:
    """Exact top-K ids (inner product) of `queries` over the concatenation of the .npy files at `paths`."""
    if os.path.exists(cache):
        return np.load(cache)
    from faiss.contrib.exhaustive_search import knn_ground_truth

    def blocks():
        for p in paths:
            x = np.load(p, mmap_mode="r")
            for i in range(0, len(x), 50_000):
                yield np.ascontiguousarray(x[i : i + 50_000], dtype=np.float32)

    _, ids = knn_ground_truth(queries, blocks(), K, metric_type=__import__("faiss").METRIC_INNER_PRODUCT)
    write_npy(cache, ids)
    return ids


# ------------------------------------------------------------------------------ measuring


def memory_bytes(text: str) -> int:
    """'2G', '512M', '1.5G' -> bytes (binary units, as autofaiss reads them)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 2G, 512M)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def peak_memory(pid: int | str = "self") -> dict:
    """VmHWM (peak RSS of the process's memory since its exec) and RssAnon of a live process, in bytes."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "RssAnon"):
                    found[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def measure(cmd: list[str], log: str) -> dict:
    """Run `cmd` alone to completion: wall seconds, CPU seconds, and VmHWM / RssAnon sampled every 0.1 s.

    Not ru_maxrss: the kernel carries the parent's RSS at fork into the child's ru_maxrss across exec, so a
    child of a parent that holds 1 GB reports at least 1 GB. The workers also report their own VmHWM at exit,
    which closes the gap after the last sample.
    """
    peak, done = {"VmHWM": 0, "RssAnon": 0}, threading.Event()
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

        def sample():
            while not done.is_set():
                for name, value in peak_memory(proc.pid).items():
                    peak[name] = max(peak[name], value)
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        with open(log, errors="replace") as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}; log {log}:\n{tail}")
    return {
        "wall": wall,
        "peak_rss": peak["VmHWM"],
        "peak_anon": peak["RssAnon"],
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def finish(m: dict, result: dict) -> dict:
    """The run's figures and the worker's result; the peak RSS includes the worker's own VmHWM at exit."""
    own = result.pop("vm_hwm", 0)
    return {**m, **result, "peak_rss": max(m["peak_rss"], own)}


def evaluate(index_path: str, params: str, queries: np.ndarray, truth: np.ndarray) -> dict:
    """recall@K and per-query latency of a saved index with its builder's search parameters, on 1 thread."""
    import faiss

    index = faiss.read_index(index_path)
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    faiss.omp_set_num_threads(1)
    for q in queries[:20]:  # warm-up: page in the index
        index.search(q[None], K)
    found, times = np.empty((len(queries), K), dtype=np.int64), np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        found[i] = index.search(q[None], K)[1][0]
        times[i] = time.perf_counter() - t
    recall = float(np.mean([len(set(f) & set(t)) for f, t in zip(found, truth)]) / K)
    return {
        "recall": recall,
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "disk_bytes": os.path.getsize(index_path),
        "ntotal": index.ntotal,
    }


# ------------------------------------------------------------------------------ our side (own processes)


def ours_budget_gb(budget: int) -> float:
    """The byte budget in IndexSettings.max_index_memory_gb's unit."""
    return budget / 2**30


def worker_build(spec: dict) -> None:
    """Build + tune + write our index; run as `bench_index.py --worker build SPEC.json`."""
    from clipcrawl.tasks.core.config import IndexSettings
    from clipcrawl.tasks.index.train import build, set_threads, write_index
    from clipcrawl.tasks.index.tune import exact_knn, tune
    from clipcrawl.tasks.index.vectors import Part

    settings = IndexSettings(**spec["settings"])
    set_threads(settings)
    parts = [Part(os.path.basename(p)[8:-4], p) for p in spec["shards"]]
    t0 = time.perf_counter()
    index, key = build(parts, settings)
    t1 = time.perf_counter()
    queries = np.load(spec["tune_queries"]).astype(np.float32)
    _, truth = exact_knn(queries, parts, settings.k, settings.add_batch_rows)
    tuned = tune(index, queries, truth, settings)
    t2 = time.perf_counter()
    write_index(index, spec["index"])
    t3 = time.perf_counter()
    result = {
        "index_key": key,
        "params": tuned["params"],
        "build_s": t1 - t0,
        "tune_s": t2 - t1,
        "write_s": t3 - t2,
        "tuned": {k: v for k, v in tuned.items() if k != "tuning"},
        "tuning": tuned.get("tuning"),
        "ntotal": index.ntotal,
        "vm_hwm": peak_memory().get("VmHWM", 0),
    }
    with open(spec["result"], "w") as f:
        json.dump(result, f, default=str)


def worker_add(spec: dict) -> None:
    """Read our index, add the extra shard, write it; run as `bench_index.py --worker add SPEC.json`."""
    from clipcrawl.tasks.core.config import IndexSettings
    from clipcrawl.tasks.index.train import add, read_index, set_threads, write_index
    from clipcrawl.tasks.index.vectors import Part

    settings = IndexSettings(**spec["settings"])
    set_threads(settings)
    t0 = time.perf_counter()
    index = read_index(spec["index"])
    t1 = time.perf_counter()
    added = add(index, [Part(os.path.basename(p)[8:-4], p) for p in spec["shards"]], settings.add_batch_rows)
    t2 = time.perf_counter()
    write_index(index, spec["out"])
    t3 = time.perf_counter()
    with open(spec["result"], "w") as f:
        json.dump(
            {
                "read_s": t1 - t0,
                "add_s": t2 - t1,
                "write_s": t3 - t2,
                "added": added,
                "ntotal": index.ntotal,
                "vm_hwm": peak_memory().get("VmHWM", 0),
            },
            f,
        )


def run_worker(kind: str, spec: dict, runs: str, name: str) -> dict:
    spec = {**spec, "result": os.path.join(runs, f"{name}.json")}
    spec_path = os.path.join(runs, f"{name}.spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    m = measure(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, spec_path], os.path.join(runs, f"{name}.log")
    )
    with open(spec["result"]) as f:
        return finish(m, json.load(f))


def run_autofaiss(args, data: dict, budget: str, runs: str, name: str) -> dict:
    result = os.path.join(runs, f"{name}.json")
    m = measure(
        [
            args.autofaiss_python,
            os.path.join(HERE, "index_peer.py"),
            "--embeddings",
            data["dir"],
            "--index",
            os.path.join(runs, f"{name}.index"),
            "--infos",
            os.path.join(runs, f"{name}.infos.json"),
            "--max-index-memory",
            budget,
            "--memory-available",
            args.memory_available,
            "--threads",
            str(args.threads),
            "--result",
            result,
        ],
        os.path.join(runs, f"{name}.log"),
    )
    with open(result) as f:
        return finish(m, json.load(f))


# ------------------------------------------------------------------------------ report


def gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def row(name: str, r: dict) -> str:
    return (
        f"{name:<17} {r['index_key']:<34} {r['params'] or '-':<32} {r['wall']:>7.1f} "
        f"{gb(r['peak_rss']):>6} ({gb(r['peak_anon'])}) {r['recall']:>9.4f} {r['p50_ms']:>7.2f} "
        f"{r['p99_ms']:>7.2f} {r['disk_bytes'] / 1e6:>8.0f}"
    )


def bench_budget(
    args, data: dict, budget: str, queries: np.ndarray, truth: np.ndarray, runs: str, incremental: bool
) -> dict:
    settings = {
        "max_index_memory_gb": ours_budget_gb(memory_bytes(budget)),
        "threads": args.threads,
        "queries": args.queries,
        "k": K,
        "seed": args.seed,
    }
    if args.target_recall:
        settings["target_recall"] = args.target_recall
    tag = budget.replace(".", "_")
    print(f"\n== budget {budget}: building (one process at a time) ...", flush=True)
    ours = run_worker(
        "build",
        {
            "settings": settings,
            "shards": data["shards"],
            "tune_queries": data["tune_queries"],
            "index": os.path.join(runs, f"ours-{tag}.index"),
        },
        runs,
        f"ours-{tag}",
    )
    print(
        f"   clipcrawl: {ours['index_key']} {ours['params']} in {ours['wall']:.1f} s (build {ours['build_s']:.1f}, "
        f"tune {ours['tune_s']:.1f}, write {ours['write_s']:.1f}), peak RSS {gb(ours['peak_rss'])} GB",
        flush=True,
    )
    peer = run_autofaiss(args, data, budget, runs, f"autofaiss-{tag}")
    print(
        f"   autofaiss: {peer['index_key']} {peer['params']} in {peer['wall']:.1f} s "
        f"(build_index {peer['build_s']:.1f}), peak RSS {gb(peer['peak_rss'])} GB",
        flush=True,
    )
    ours.update(evaluate(os.path.join(runs, f"ours-{tag}.index"), ours["params"], queries, truth))
    peer.update(evaluate(os.path.join(runs, f"autofaiss-{tag}.index"), peer["params"], queries, truth))
    result = {"budget": budget, "clipcrawl": ours, "autofaiss": peer}
    # the cheapest of our tuning sweep's settings that reached autofaiss's recall (on the tuning queries)
    matched = [t for t in ours.get("tuning") or [] if t["recall_at_k"] >= peer["recall"]]
    if matched and matched[0]["params"] != ours["params"]:
        result["matched"] = {
            **ours,
            "params": matched[0]["params"],
            **evaluate(os.path.join(runs, f"ours-{tag}.index"), matched[0]["params"], queries, truth),
        }

    if incremental:
        print("   incremental: add the extra shard to ours, and rebuild ours on all ...", flush=True)
        added = run_worker(
            "add",
            {
                "settings": settings,
                "shards": [data["extra"]],
                "index": os.path.join(runs, f"ours-{tag}.index"),
                "out": os.path.join(runs, f"ours-{tag}-added.index"),
            },
            runs,
            f"ours-{tag}-add",
        )
        rebuilt = run_worker(
            "build",
            {
                "settings": settings,
                "shards": data["shards"] + [data["extra"]],
                "tune_queries": data["tune_queries"],
                "index": os.path.join(runs, f"ours-{tag}-rebuilt.index"),
            },
            runs,
            f"ours-{tag}-rebuild",
        )
        all_truth = ground_truth(
            data["shards"] + [data["extra"]],
            queries,
            os.path.join(os.path.dirname(data["dir"]), f"truth-all-{len(queries)}.npy"),
        )
        added.update(evaluate(os.path.join(runs, f"ours-{tag}-added.index"), ours["params"], queries, all_truth))
        added.update(index_key=ours["index_key"], params=ours["params"])
        rebuilt.update(evaluate(os.path.join(runs, f"ours-{tag}-rebuilt.index"), rebuilt["params"], queries, all_truth))
        result.update(added=added, rebuilt=rebuilt)
    return result


def report(args, n: int, results: list[dict]) -> None:
    print(
        f"\n{n:,} x {DIM} float16 vectors, {args.queries} held-out queries, recall@{K} against exact search; "
        f"builds on {args.threads} threads, latency on 1 thread, one query at a time"
    )
    head = (
        f"{'':<17} {'index key':<34} {'params':<32} {'wall s':>7} {'peak RSS GB (anon)':>18} "
        f"{'recall@10':>9} {'p50 ms':>7} {'p99 ms':>7} {'disk MB':>8}"
    )
    for r in results:
        ours, peer = r["clipcrawl"], r["autofaiss"]
        print(f"\nbudget {r['budget']}\n{head}")
        if ours.get("tuning"):
            print(
                "clipcrawl tuning sweep (tuning queries; recall@10 / p99 ms): "
                + ", ".join(f"{t['params']} {t['recall_at_k']:.3f}/{t['p99_ms']:.2f}" for t in ours["tuning"])
            )
        print(row("clipcrawl", ours))
        print(row(f"autofaiss {peer['autofaiss']}", peer))
        if "matched" in r:
            print(
                row("clipcrawl matched", r["matched"]) + "   <- our tuning sweep's cheapest setting at "
                "autofaiss's recall (same build)"
            )
        anon = ours["peak_anon"] / max(peer["peak_anon"], 1)
        print(
            f"clipcrawl / autofaiss: build wall {ours['wall'] / peer['wall']:.2f}x, peak RSS "
            f"{ours['peak_rss'] / peer['peak_rss']:.2f}x (anon {anon:.2f}x), CPU {ours['cpu'] / peer['cpu']:.2f}x, "
            f"recall@10 {ours['recall'] - peer['recall']:+.4f}, p99 {ours['p99_ms'] / peer['p99_ms']:.2f}x  "
            f"(target: wall <= 1x, RSS <= 1x, recall >= +0)"
        )
        if "added" in r:
            added, rebuilt = r["added"], r["rebuilt"]
            print(
                f"incremental +{added['added']:,} vectors ({added['added'] / ours['ntotal']:.0%}): "
                f"add() {added['add_s']:.1f} s ({added['wall']:.1f} s process: read, add, write) vs rebuild "
                f"build() {rebuilt['build_s']:.1f} s ({rebuilt['wall']:.1f} s process with tune and write): "
                f"{added['add_s'] / rebuilt['build_s']:.2f}x, process {added['wall'] / rebuilt['wall']:.2f}x"
            )
            print(row("  after add", added))
            print(row("  rebuilt", rebuilt))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors indexed")
    ap.add_argument(
        "--max-index-memory",
        default="2G",
        help="memory budget(s) of the index, comma-separated (autofaiss's units: 2G, 512M); "
        "a budget under N*512*4 bytes makes autofaiss quantize (OPQ+PQ)",
    )
    ap.add_argument("--memory-available", default="16G", help="autofaiss's current_memory_available")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (and as many tuning queries)")
    ap.add_argument(
        "--target-recall",
        type=float,
        default=None,
        help="IndexSettings.target_recall of our tune() (default: IndexSettings' own)",
    )
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads of both builders")
    ap.add_argument(
        "--no-incremental",
        action="store_true",
        help="skip the add-versus-rebuild test (otherwise run with the first budget)",
    )
    ap.add_argument("--autofaiss-python", default=AUTOFAISS_PYTHON)
    ap.add_argument("--work", help="keep the data (and the indices) here and reuse the data across runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        with open(args.worker[1]) as f:
            {"build": worker_build, "add": worker_add}[args.worker[0]](json.load(f))
        return

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="clipcrawl-bench-index-")
    work = args.work or tmp.name
    data = make_data(work, args.n, args.queries, args.seed)
    print(
        f"data: {args.n:,} x {DIM} float16 in {len(data['shards'])} shards under {data['dir']} "
        f"({sum(os.path.getsize(p) for p in data['shards']) / 1e9:.2f} GB), extra shard {data['extra']}, "
        + (f"made in {data['made_s']:.0f} s" if data["made_s"] else "reused")
    )
    queries = np.load(data["queries"]).astype(np.float32)
    t = time.perf_counter()
    truth = ground_truth(
        data["shards"], queries, os.path.join(os.path.dirname(data["dir"]), f"truth-{len(queries)}.npy")
    )
    print(f"exact top-{K} of {len(queries)} held-out queries in {time.perf_counter() - t:.1f} s")
    probe = "import autofaiss, faiss; print(autofaiss.__version__, faiss.__version__)"
    peer_versions = subprocess.run(
        [args.autofaiss_python, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    import faiss

    print(
        f"autofaiss {peer_versions[0]} (faiss {peer_versions[1]}), clipcrawl's faiss {faiss.__version__}; "
        f"machine: {len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.1f}"
    )

    runs = os.path.join(work, f"runs-{args.n}-{args.seed}")
    os.makedirs(runs, exist_ok=True)
    budgets = [b.strip() for b in args.max_index_memory.split(",")]
    results = [
        bench_budget(args, data, b, queries, truth, runs, i == 0 and not args.no_incremental)
        for i, b in enumerate(budgets)
    ]
    report(args, args.n, results)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(
        json.dumps(
            {
                "bench": "index",
                "n": args.n,
                "dim": DIM,
                "queries": args.queries,
                "threads": args.threads,
                "autofaiss": peer_versions[0],
                "autofaiss_faiss": peer_versions[1],
                "results": [
                    {
                        name: {k: v for k, v in r[name].items() if k not in ("infos", "tuning")}
                        if isinstance(r[name], dict)
                        else r[name]
                        for name in r
                    }
                    for r in results
                ],
            },
            default=str,
        )
    )
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
