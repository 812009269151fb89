"""autofaiss's side of bench_index.py: build_index over a directory of .npy shards, in autofaiss's own venv.

    /work/venvs/autofaiss/bin/python tests/benchmarks/index_peer.py --embeddings DIR --index PATH
        --infos PATH --max-index-memory 2G --memory-available 16G --threads 2 --result PATH

Runs autofaiss.build_index as a user of it would (index key, search parameters and metrics chosen
by autofaiss itself, metric inner product) and writes a small JSON result: the key and the
index_param autofaiss chose, its own figures, and the seconds build_index took. Imports nothing
from the project: this file runs where only autofaiss and its faiss are installed.

autofaiss 2.18.0 builds its OPQ indices with faiss.OPQMatrix(d, M=..., d2=...), keyword arguments that
faiss-cpu 1.14 and later no longer accept (TypeError), so its venv pins the last faiss-cpu it runs with:
    python3 -m venv /work/venvs/autofaiss
    /work/venvs/autofaiss/bin/pip install autofaiss "pyarrow<16" "faiss-cpu==1.13.2"
"""

from __future__ import annotations

import argparse
import json
import time


def vm_hwm() -> int:
    """Peak RSS of this process since its exec, in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", required=True, help="directory of (n, d) .npy files")
    ap.add_argument("--index", required=True)
    ap.add_argument("--infos", required=True)
    ap.add_argument("--max-index-memory", default="2G")
    ap.add_argument("--memory-available", default="16G")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()

    import autofaiss
    import faiss
    from autofaiss import build_index

    started = time.perf_counter()
    index, infos = build_index(
        embeddings=args.embeddings,
        index_path=args.index,
        index_infos_path=args.infos,
        max_index_memory_usage=args.max_index_memory,
        current_memory_available=args.memory_available,
        metric_type="ip",
        nb_cores=args.threads,
    )
    build_s = time.perf_counter() - started
    if index is None:
        raise SystemExit(f"autofaiss build_index built nothing for {args.embeddings} (see its log above)")
    result = {
        "autofaiss": autofaiss.__version__,
        "faiss": faiss.__version__,
        "index_key": infos["index_key"],
        "params": infos.get("index_param") or "",
        "build_s": build_s,
        "ntotal": index.ntotal,
        "infos": infos,
        "vm_hwm": vm_hwm(),
    }
    with open(args.result, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main()
