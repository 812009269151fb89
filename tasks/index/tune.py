"""Tune a built index's search parameters against exact search: the exact k nearest neighbours of sample queries
(on the GPUs when faiss sees them), recall@k of each setting cheapest first, and the latency of single queries."""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.index.choice import METRIC
from clipcrawl.tasks.index.vectors import Part, vector_batches

log = logging.getLogger(__name__)

EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
LATENCY_QUERIES = 200
RECALL_SATURATED = 0.999


def exact_knn(
    queries: np.ndarray, parts: list[Part], k: int, batch_rows: int, gpus: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k nearest neighbours of the queries, streaming over the parts (on `gpus` GPUs, none:
    the CPU): (D, I), where ids are positions in the concatenation of the parts' selected rows."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return knn_ground_truth(queries, vector_batches(parts, batch_rows), k, metric_type=METRIC, ngpu=gpus)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (missing results, id -1, never count)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if len(found) == 0 or len(found) != len(truth):
        raise ValueError(f"recall_at_k needs as many result rows as truth rows, got {len(found)} and {len(truth)}")
    hits = ((found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)).any(axis=2).sum()
    return float(hits / (k * len(found)))


def apply_params(index: faiss.Index, params: str) -> None:
    """Set search parameters such as 'nprobe=16,quantizer_efSearch=32' ('' sets nothing)."""
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)


def search_params(index: faiss.Index) -> list[str]:
    """Search parameter settings worth trying, cheapest first."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        nprobes = [1 << i for i in range(ivf.nlist.bit_length()) if 1 << i < ivf.nlist] + [ivf.nlist]
        return [f"nprobe={p}" + (f",quantizer_efSearch={max(16, 2 * p)}" if hnsw_quantizer else "") for p in nprobes]
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if isinstance(base, faiss.IndexHNSW):
        return [f"efSearch={ef}" for ef in EF_SEARCH]
    return [""]


def _measure(index: faiss.Index, params: str, queries: np.ndarray, truth: np.ndarray, k: int) -> dict:
    apply_params(index, params)
    _, found = index.search(queries, k)
    recall = recall_at_k(found, truth, k)
    singles = queries[:LATENCY_QUERIES]
    index.search(singles[:1], k)  # warm caches before timing
    times = []
    for i in range(len(singles)):
        start = time.perf_counter()
        index.search(singles[i : i + 1], k)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(times) * 1000, [50, 99])
    return {
        "params": params,
        "recall_at_k": round(recall, 4),
        "p50_ms": round(float(p50), 4),
        "p99_ms": round(float(p99), 4),
    }


def tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, settings: IndexSettings) -> dict:
    """Sweep the search parameters cheapest first, measuring recall@k against `truth` (exact search) and the latency
    of single queries; take the cheapest setting reaching target_recall within max_query_latency_ms at p99, else the
    best recall within the latency budget, else the fastest. Leaves the index set to the chosen parameters."""
    k = settings.k
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    tuning = []
    for params in search_params(index):
        result = _measure(index, params, queries, truth, k)
        tuning.append(result)
        log.info(
            "tuning %s: recall@%d %.4f, p50 %.3f ms, p99 %.3f ms",
            params or "(none)",
            k,
            result["recall_at_k"],
            result["p50_ms"],
            result["p99_ms"],
        )
        if result["recall_at_k"] >= RECALL_SATURATED or result["p99_ms"] > settings.max_query_latency_ms:
            break
    in_budget = [r for r in tuning if r["p99_ms"] <= settings.max_query_latency_ms]
    reaching = [r for r in in_budget if r["recall_at_k"] >= settings.target_recall]
    if reaching:
        chosen = reaching[0]
    elif in_budget:
        chosen = max(in_budget, key=lambda r: r["recall_at_k"])  # the first (cheapest) of equal recalls
    else:
        chosen = min(tuning, key=lambda r: r["p99_ms"])
    apply_params(index, chosen["params"])
    log.info(
        "chose %s: recall@%d %.4f, p99 %.3f ms",
        chosen["params"] or "(none)",
        k,
        chosen["recall_at_k"],
        chosen["p99_ms"],
    )
    return {**chosen, "k": k, "tuning": tuning}
