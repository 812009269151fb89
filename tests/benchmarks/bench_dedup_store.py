"""Benchmark: the uid store at crawl scale. Time and peak RSS of building a store and of one run's dedup against it.

The one command, from the repository root:

    .venv/bin/python tests/benchmarks/bench_dedup_store.py

    options: --uids 100000000   uids in the store        --files 10000   synthetic published files they belong to
             --new 10000000     uids of the new batch (--seen of them already in the store), over --new-files files
             --seen 0.5         --new-files 1000         --partitions 256   --rows-per-task 20000000
             --workdir /tmp/clipcrawl-bench-dedup-store   (emptied first)

Two phases, each in a process of its own so that each peak RSS is its own (resource.getrusage ru_maxrss):
  build  one partition at a time: the partition's share of random uint64 uids (drawn in its uid range, so the
         store is what hashing gives), each given one of --files file keys, sorted, written with
         uidstore.write_partition; files.parquet lists the files. --seen of the new batch is sampled from the
         partitions as they are built, the rest drawn fresh; the batch is spread over --new-files files, each
         written as a file's uid list (dedup.write_uids), as extraction leaves it.
  dedup  what a run does after extraction, with the flow's functions and no Prefect: the new files recorded
         (uidstore.write_new_files), dedup.dedup_partitions for each task range (dedup.task_ranges), then every
         partition committed (uidstore.commit_partition). Checks that the losers are the sampled uids.
Memory of the dedup phase is one task's range of the new uids plus one partition, not the store.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.ingest import dedup, uidstore

UINT64_MAX = (1 << 64) - 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(args) -> dict:
    store = os.path.join(args.workdir, "store")
    uidstore.open_store(store, args.partitions)
    rng = np.random.default_rng(1)
    keys = rng.integers(1, UINT64_MAX, args.files, dtype=np.uint64, endpoint=True)
    seen = []
    for p in range(args.partitions):
        lo, hi = dedup.bucket_bounds(p, args.partitions)
        count = args.uids * (p + 1) // args.partitions - args.uids * p // args.partitions
        uids = np.unique(rng.integers(lo, UINT64_MAX if hi is None else hi - 1, count, dtype=np.uint64, endpoint=True))
        uidstore.write_partition(layout.store_partition(store, p), uids, keys[rng.integers(0, args.files, len(uids))])
        share = (
            int(args.new * args.seen) * (p + 1) // args.partitions - int(args.new * args.seen) * p // args.partitions
        )
        seen.append(rng.choice(uids, share, replace=False))
    files = pa.table(
        {
            "key": pa.array(keys, pa.uint64()),
            "pairs": ["/bench/pairs"] * args.files,
            "name": [f"file-{i:05d}" for i in range(args.files)],
            "uri": [""] * args.files,
            "rows": [args.uids // args.files] * args.files,
            "digest": ["bench"] * args.files,
        }
    )
    uidstore.write_files(store, files)
    seen = np.concatenate(seen)
    fresh = rng.integers(0, UINT64_MAX, args.new - len(seen), dtype=np.uint64, endpoint=True)
    batch = np.concatenate([seen, fresh])
    rng.shuffle(batch)
    for i, part in enumerate(np.array_split(batch, args.new_files)):
        dedup.write_uids(os.path.join(args.workdir, "new", f"new-{i:05d}.uids.parquet"), part)
    np.save(os.path.join(args.workdir, "seen.npy"), np.sort(seen))
    return {"store_uids": args.uids, "new_uids": args.new}


def dedup_run(args) -> dict:
    store = os.path.join(args.workdir, "store")
    new = sorted(str(p) for p in Path(args.workdir, "new").glob("*.uids.parquet"))
    keys = [uidstore.file_key("/bench/new", Path(uri).name) for uri in new]
    uidstore.write_new_files(store, keys, new)
    ranges = dedup.task_ranges(uidstore.partition_count(store), args.new, args.rows_per_task)
    started = time.monotonic()
    results = [
        dedup.dedup_partitions(store, first, last, os.path.join(args.workdir, f"losers-{t:05d}.parquet"))
        for t, (first, last) in enumerate(ranges)
    ]
    dedup_s = time.monotonic() - started
    for p in range(uidstore.partition_count(store)):
        uidstore.commit_partition(store, p)
    losers = np.concatenate([pq.read_table(r["uri"]).column("uid").to_numpy() for r in results])
    seen = np.load(os.path.join(args.workdir, "seen.npy"))
    return {
        "tasks": len(ranges),
        "dedup_seconds": round(dedup_s, 1),
        "commit_seconds": round(time.monotonic() - started - dedup_s, 1),
        "duplicates": int(sum(r["duplicates"] for r in results)),
        "losers_are_the_seen_uids": bool(len(losers) == len(seen) and np.array_equal(np.sort(losers), seen)),
        "store_rows_after": int(sum(r["rows"] for r in results)),
    }


def phase(args) -> None:
    started = time.monotonic()
    result = (build if args.phase == "build" else dedup_run)(args)
    result |= {"seconds": round(time.monotonic() - started, 1), "peak_rss_mib": round(peak_rss_mib())}
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uids", type=int, default=100_000_000)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--new", type=int, default=10_000_000)
    p.add_argument("--seen", type=float, default=0.5)
    p.add_argument("--new-files", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=256)
    p.add_argument("--rows-per-task", type=int, default=20_000_000)
    p.add_argument("--workdir", default="/tmp/clipcrawl-bench-dedup-store")
    p.add_argument("--phase", choices=("build", "dedup"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        return phase(args)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(os.path.join(args.workdir, "new"))
    print(
        f"store of {args.uids:,} uids over {args.files:,} files, {args.partitions} partitions; new batch of "
        f"{args.new:,} uids ({args.seen:.0%} in the store) over {args.new_files:,} files",
        flush=True,
    )
    for name in ("build", "dedup"):
        out = subprocess.run([sys.executable, *sys.argv, "--phase", name], check=True, capture_output=True, text=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {figures}", flush=True)
    store = Path(args.workdir, "store")
    size = sum(f.stat().st_size for f in store.iterdir() if f.is_file())
    rows = args.uids + args.new * (1 - args.seen)
    print(f"store on disk: {size / 2**20:,.0f} MiB ({size / rows:.1f} bytes a uid)")


if __name__ == "__main__":
    main()
