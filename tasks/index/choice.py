"""Which faiss index to build for n vectors of dimension d within a memory budget (like autofaiss): exact search
(Flat) while it is fast, an HNSW graph for mid-size sets, IVF with fp16 codes while they fit, else OPQ-IVF-PQ with
the largest codes that fit; and how many vectors train it. Metric: inner product (cosine on the L2-normalised
embeddings)."""

from __future__ import annotations

import math
import re

import faiss

METRIC = faiss.METRIC_INNER_PRODUCT
# Exact search of one query costs n*d multiply-adds: up to this many it stays within a query's latency budget on one
# core (see docs/benchmarks.md).
FLAT_MAX_SCANNED = 10_000_000
# Beyond 1M vectors an HNSW graph takes long to build and holds float32 vectors (2x the fp16 of IVF-SQfp16);
# faiss' guidelines and autofaiss switch to IVF there.
HNSW_MAX_VECTORS = 1_000_000
HNSW_M = 32
MAX_TRAIN_VECTORS = 1_000_000
TRAIN_PER_LIST = 64
MIN_TRAIN_PER_LIST = 39  # faiss k-means warns below this many points per centroid
PQ_TRAIN_VECTORS = 256 * 256  # faiss k-means samples at most 256 points for each of a sub-quantizer's 256 centroids
OPQ_MAX_DIMS_PER_SUBQUANTIZER = 7
PQ_M = (256, 128, 64, 32, 16, 8)


def index_memory(index_key: str, n: int, d: int) -> int:
    """Estimated bytes of the built index: codes, ids (8 B per vector in inverted lists), centroids,
    HNSW links (~M*2 int32 per vector), PQ codebooks and the OPQ matrix."""
    fixed = 0
    per_vector = 0.0
    code: float | None = None
    for component in index_key.split(","):
        if m := re.fullmatch(r"OPQ(\d+)(?:_(\d+))?", component):
            out_d = int(m[2] or d)
            fixed += d * out_d * 4
            d = out_d
        elif m := re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?", component):
            nlist = int(m[1])
            fixed += nlist * d * 4 + (nlist * _hnsw_links(int(m[2])) if m[2] else 0)
            per_vector += 8
        elif m := re.fullmatch(r"HNSW(\d+)", component):
            per_vector += _hnsw_links(int(m[1]))
        elif component == "Flat":
            code = d * 4
        elif m := re.fullmatch(r"SQ(fp16|bf16|8|6|4)", component):
            code = d * {"fp16": 16, "bf16": 16, "8": 8, "6": 6, "4": 4}[m[1]] / 8
        elif m := re.fullmatch(r"PQ(\d+)(?:x(\d+))?(?:np)?", component):
            nbits = int(m[2] or 8)
            code = math.ceil(int(m[1]) * nbits / 8)
            fixed += (1 << nbits) * d * 4
        else:
            raise ValueError(f"index_memory: unsupported component {component!r} in index_key {index_key!r}")
    code = d * 4 if code is None else code
    return int(fixed + n * (per_vector + code))


def _hnsw_links(m: int) -> int:
    """Bytes per vector of an HNSW graph: 2*M int32 neighbours on level 0, ~4 B on upper levels, offset and level."""
    return m * 2 * 4 + 16


def ivf_nlist(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 4*sqrt(n), with at least 39 training vectors per list
    (the training sample holds at most MAX_TRAIN_VECTORS)."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    while nlist > 1 and nlist * MIN_TRAIN_PER_LIST > min(n, MAX_TRAIN_VECTORS):
        nlist //= 2
    return nlist


def choose_index_key(n: int, d: int, max_memory_bytes: float) -> str:
    """The faiss index_factory key for n vectors of dimension d within max_memory_bytes: Flat when exact search is
    fast, HNSW32 for mid-size sets, IVF-SQfp16 while the fp16 vectors fit, else OPQ-IVF-PQ with the largest codes
    that fit."""
    if n < 1:
        raise ValueError(f"cannot choose an index for {n} vectors")
    if n * d <= FLAT_MAX_SCANNED and index_memory("Flat", n, d) <= max_memory_bytes:
        return "Flat"
    hnsw = f"HNSW{HNSW_M}"
    if n < HNSW_MAX_VECTORS and index_memory(hnsw, n, d) <= max_memory_bytes:
        return hnsw
    nlist = ivf_nlist(n)
    key = f"IVF{nlist},SQfp16"
    if index_memory(key, n, d) <= max_memory_bytes:
        return key
    for m in PQ_M:
        if m > d:
            continue
        key = f"OPQ{m}_{opq_dim(m, d)},IVF{nlist}_HNSW{HNSW_M},PQ{m}x8"
        if index_memory(key, n, d) <= max_memory_bytes:
            return key
    raise ValueError(
        f"no index of {n} vectors of dimension {d} fits the memory budget of {int(max_memory_bytes)} "
        f"bytes (max_index_memory_gb): the smallest, {key}, needs {index_memory(key, n, d)} bytes"
    )


def opq_dim(m: int, d: int) -> int:
    """OPQ output dimension for PQ with m sub-quantizers: a multiple of m, at most d and at most 7 dimensions per
    sub-quantizer (as autofaiss: short codes quantize a rotated, reduced space better than all of d)."""
    return min(d // m, OPQ_MAX_DIMS_PER_SUBQUANTIZER) * m


def nlist_of(index_key: str) -> int:
    """The inverted lists of an index_factory key (0: not an IVF index)."""
    m = re.search(r"IVF(\d+)", index_key)
    return int(m[1]) if m else 0


def train_size(index_key: str, n: int) -> int:
    """Default training sample: 64 vectors per inverted list, at least 256*256 for PQ/OPQ codebooks, at most 1M."""
    need = TRAIN_PER_LIST * nlist_of(index_key)
    if "PQ" in index_key or need == 0:
        need = max(need, PQ_TRAIN_VECTORS)
    return min(n, MAX_TRAIN_VECTORS, need)
