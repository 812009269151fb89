"""kNN indices over the embeddings: choose a faiss index for the vector count and memory budget (like autofaiss),
train it on a sample, add the vectors shard by shard (memory-mapped, never all in RAM), and tune its search
parameters against exact search. Metric: inner product (cosine on the L2-normalised embeddings).

With a faiss built for GPUs (faiss-gpu) and a visible GPU, the two costly parts of a build run on the
GPUs: the k-means that trains an IVF index's coarse quantizer (faiss's clustering_index), and the exact
search that measures recall (knn_ground_truth). The index itself stays a CPU index, so the files are
the same whichever machine built them and search anywhere."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from clipcrawl.tasks.core import uri as uris
from clipcrawl.tasks.core.config import IndexSettings

log = logging.getLogger(__name__)

METRIC = faiss.METRIC_INNER_PRODUCT
# Exact search of one query costs n*d multiply-adds: 10M is ~1.5 ms on one loaded core (20k vectors of dim 512).
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
EF_SEARCH = (16, 32, 64, 128, 256, 512, 1024)
LATENCY_QUERIES = 200
RECALL_SATURATED = 0.999
# Embeddings in an object store are read by row ranges: rows closer than REMOTE_GAP_BYTES are read in one request
# (reading the gap costs less than another request), and a request reads at most REMOTE_RANGE_BYTES.
REMOTE_GAP_BYTES = 1 << 20
REMOTE_RANGE_BYTES = 32 << 20
NPY_HEAD_BYTES = 4096  # the first read of a .npy: its header (128 bytes as np.save writes an (n, d) array)


@dataclass(frozen=True, eq=False)
class Part:
    """One embedding shard: the .npy of its vectors and, optionally, the ascending rows of it to index."""

    stem: str
    vectors: str
    rows: np.ndarray | None = None

    def __post_init__(self):
        if self.rows is not None:
            rows = np.asarray(self.rows, dtype=np.int64)
            if rows.ndim != 1 or (len(rows) > 1 and np.any(np.diff(rows) <= 0)):
                raise ValueError(f"{self.vectors}: rows must be a 1-d strictly ascending array")
            object.__setattr__(self, "rows", rows)

    @cached_property
    def count(self) -> int:
        """Vectors indexed from this part (reads only the .npy header when all rows are)."""
        return npy_shape(self.vectors)[0] if self.rows is None else len(self.rows)


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy whose bytes `f` reads, leaving f at the data."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(f)


def npy_shape(uri: str) -> tuple[int, ...]:
    """The shape of a .npy file, from its header only."""
    if not uris.is_local(uri):
        return RemoteVectors(uri, check=False).shape  # one small range request, not a read-ahead block
    with uris.open_uri(uri) as f:
        return _npy_header(f)[0]


class RemoteVectors:
    """The (n, d) array of a .npy in an object store, read as it is indexed: the rows asked for, in range
    requests of at most REMOTE_RANGE_BYTES sent side by side (rows closer than REMOTE_GAP_BYTES share one),
    never the whole file. What a memory map is to a local .npy: `vectors[a:b]`, `vectors[rows]`, len, shape."""

    def __init__(self, uri: str, check: bool = True):
        self.uri = uri
        self._fs, self._path = uris.filesystem(uri)
        head = self._fs.cat_file(self._path, start=0, end=NPY_HEAD_BYTES)
        try:
            f = io.BytesIO(head)
            shape, fortran, dtype = _npy_header(f)
            self._offset = f.tell()
        except ValueError:  # a header longer than the first read (np.save writes 128 bytes for an (n, d) array)
            with uris.open_uri(uri) as f:
                shape, fortran, dtype = _npy_header(f)
                self._offset = f.tell()
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        if check and (self.ndim != 2 or fortran or self.dtype.hasobject):
            raise ValueError(
                f"{uri}: expected a C-order (n, d) array of numbers, got shape {self.shape}"
                + (" in Fortran order" if fortran else "")
                + f" of {self.dtype}"
            )
        self._row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(n)
            stop = max(start, stop)
            cut = max(1, REMOTE_RANGE_BYTES // max(1, self._row_bytes))
            starts = np.arange(start, stop, cut, dtype=np.int64)
            return self._runs(starts, np.minimum(starts + cut, stop), stop - start, None)
        if isinstance(key, slice):
            key = np.arange(*key.indices(n))
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"{self.uri}: index rows with a slice or a 1-d array of row numbers")
        rows = np.where(rows < 0, rows + n, rows).astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"{self.uri}: rows out of range for {n} vectors")
        unique, inverse = np.unique(rows, return_inverse=True)  # ascending, each row read once
        gap = max(1, REMOTE_GAP_BYTES // max(1, self._row_bytes))
        cut = max(1, REMOTE_RANGE_BYTES // max(1, self._row_bytes))
        starts, stops, first = [], [], 0
        for last in [*(np.flatnonzero(np.diff(unique) > gap) + 1).tolist(), len(unique)]:  # runs of close rows
            lo = first
            while lo < last:  # a run longer than a range request is cut in several
                hi = lo + int(np.searchsorted(unique[lo:last], unique[lo] + cut))
                starts.append(int(unique[lo]))
                stops.append(int(unique[hi - 1]) + 1)
                lo = hi
            first = last
        return self._runs(np.array(starts, np.int64), np.array(stops, np.int64), len(unique), unique)[inverse]

    def _runs(self, starts: np.ndarray, stops: np.ndarray, count: int, rows: np.ndarray | None) -> np.ndarray:
        """Read the row ranges [starts[i], stops[i]) side by side; keep `rows` of them (None: every row)."""
        out = np.empty((count, *self.shape[1:]), dtype=self.dtype)
        if count == 0:
            return out
        blobs = self._fs.cat_ranges(
            [self._path] * len(starts),
            (self._offset + starts * self._row_bytes).tolist(),
            (self._offset + stops * self._row_bytes).tolist(),
            on_error="raise",
        )
        filled = 0
        for start, stop, blob in zip(starts.tolist(), stops.tolist(), blobs):
            if len(blob) != (stop - start) * self._row_bytes:
                raise OSError(f"{self.uri}: rows {start}-{stop} are cut short ({len(blob)} bytes): a truncated .npy")
            block = np.frombuffer(blob, self.dtype).reshape(stop - start, *self.shape[1:])
            if rows is None:
                out[filled : filled + len(block)] = block
                filled += len(block)
            else:
                end = filled + int(np.searchsorted(rows[filled:], stop))
                out[filled:end] = block[rows[filled:end] - start]
                filled = end
        return out


def read_vectors(uri: str) -> np.ndarray | RemoteVectors:
    """The (n, d) array of a .npy: memory-mapped when local; in an object store, a RemoteVectors that reads
    the rows asked for in range requests (as a memory map reads pages), never the whole file at once."""
    if not uris.is_local(uri):
        return RemoteVectors(uri)
    vectors = np.load(_local_path(uri), mmap_mode="r")
    if vectors.ndim != 2:
        raise ValueError(f"{uri}: expected an (n, d) array of vectors, got shape {vectors.shape}")
    return vectors


def dimension(parts: Iterable[Part]) -> int:
    """The vector dimension of the parts (all must agree)."""
    dims = {npy_shape(part.vectors)[1] for part in parts}
    if len(dims) != 1:
        raise ValueError(f"parts have vector dimensions {sorted(dims)}: expected exactly one")
    return dims.pop()


def vector_batches(parts: Iterable[Part], batch_rows: int) -> Iterator[np.ndarray]:
    """The selected rows of the parts in part order as float32 C-contiguous batches of at most batch_rows rows
    (batches span parts, so small shards still give full batches)."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    pending: list[np.ndarray] = []
    held = 0
    d = None
    for part in parts:
        vectors = read_vectors(part.vectors)
        if d is not None and vectors.shape[1] != d:
            raise ValueError(f"{part.vectors}: vectors of dimension {vectors.shape[1]}, earlier parts have {d}")
        d = vectors.shape[1]
        count = len(vectors) if part.rows is None else len(part.rows)
        start = 0
        while start < count:
            take = min(batch_rows - held, count - start)
            chunk = vectors[start : start + take] if part.rows is None else vectors[part.rows[start : start + take]]
            pending.append(np.asarray(chunk, dtype=np.float32))
            held += take
            start += take
            if held == batch_rows:
                yield _concat(pending)
                pending, held = [], 0
    if held:
        yield _concat(pending)


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))


def sample_vectors(parts: list[Part], n: int, seed: int) -> np.ndarray:
    """A uniform sample without replacement of min(n, total) selected vectors (float32), reading only those rows."""
    counts = [part.count for part in parts]
    total = sum(counts)
    n = min(n, total)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    out = np.empty((n, dimension(parts)), dtype=np.float32)
    offsets = np.cumsum([0, *counts])
    for part, lo_id, hi_id in zip(parts, offsets[:-1], offsets[1:]):
        lo, hi = np.searchsorted(picks, [lo_id, hi_id])
        if lo == hi:
            continue
        local = picks[lo:hi] - lo_id
        out[lo:hi] = read_vectors(part.vectors)[local if part.rows is None else part.rows[local]]
    return out


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


def _nlist_of(index_key: str) -> int:
    m = re.search(r"IVF(\d+)", index_key)
    return int(m[1]) if m else 0


def train_size(index_key: str, n: int) -> int:
    """Default training sample: 64 vectors per inverted list, at least 256*256 for PQ/OPQ codebooks, at most 1M."""
    need = TRAIN_PER_LIST * _nlist_of(index_key)
    if "PQ" in index_key or need == 0:
        need = max(need, PQ_TRAIN_VECTORS)
    return min(n, MAX_TRAIN_VECTORS, need)


def build(parts: list[Part], settings: IndexSettings) -> tuple[faiss.Index, str]:
    """Choose the index (or take settings.index_key), train it on a sample and add every selected vector."""
    total = sum(part.count for part in parts)
    if total == 0:
        raise ValueError("no vectors to index")
    d = dimension(parts)
    key = settings.index_key or choose_index_key(total, d, settings.max_index_memory_gb * 2**30)
    log.info("index %s for %d vectors of dimension %d (~%d bytes)", key, total, d, index_memory(key, total, d))
    index = faiss.index_factory(d, key, METRIC)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf = faiss.downcast_index(ivf)
            # Polysemous training only serves Hamming-threshold filtering (the ht parameter), which is not used;
            # it costs more than the PQ training itself.
            if isinstance(ivf, faiss.IndexIVFPQ):
                ivf.do_polysemous_training = False
        size = settings.train_vectors or train_size(key, total)
        nlist = _nlist_of(key)
        if min(size, total) < nlist:
            raise ValueError(f"{key}: {min(size, total)} training vectors cannot train {nlist} inverted lists")
        start = time.perf_counter()
        gpus = index_gpus(settings)
        _train(index, sample_vectors(parts, size, settings.seed), gpus)
        log.info(
            "trained %s on %d vectors in %.1f s%s",
            key,
            min(size, total),
            time.perf_counter() - start,
            f" (k-means on {gpus} GPUs)" if gpus else "",
        )
    add(index, parts, settings.add_batch_rows)
    return index, key


def index_gpus(settings: IndexSettings) -> int:
    """GPUs the build uses: all that faiss sees for device auto/cuda (none with faiss-cpu), none for cpu."""
    if settings.device == "cpu":
        return 0
    found = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if settings.device == "cuda" and found == 0:
        raise ValueError(
            "index device=cuda, but this faiss sees no GPU "
            + (
                "(faiss.get_num_gpus() is 0)"
                if hasattr(faiss, "StandardGpuResources")
                else f"(faiss {faiss.__version__} is built without GPU support: install faiss-gpu in place of faiss-cpu)"
            )
        )
    return found


def _train(index: faiss.Index, vectors: np.ndarray, gpus: int) -> None:
    """index.train, with an IVF index's coarse k-means run on `gpus` GPUs (none: on the CPU)."""
    ivf = faiss.try_extract_index_ivf(index)
    if not gpus or ivf is None:
        index.train(vectors)
        return
    # faiss's way to train the coarse quantizer on GPUs: k-means assigns points with clustering_index,
    # then the centroids go into the (CPU) quantizer. Kept referenced here while faiss uses it.
    clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type), ngpu=gpus)
    ivf.clustering_index = clustering
    try:
        index.train(vectors)
    finally:
        ivf.clustering_index = None


def add(index: faiss.Index, parts: list[Part], batch_rows: int) -> int:
    """Add the parts' vectors to the index (ids continue after index.ntotal); returns the number added."""
    total = sum(part.count for part in parts)
    added = 0
    start = time.perf_counter()
    for batch in vector_batches(parts, batch_rows):
        index.add(batch)
        added += len(batch)
        log.info("added %d/%d vectors (%.1f s)", added, total, time.perf_counter() - start)
    return added


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


def write_index(index: faiss.Index, uri: str) -> None:
    """Publish the index atomically at any fsspec URI (streamed by faiss into the file, no temporary copy)."""
    with uris.atomic_write(uri, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def read_index(uri: str) -> faiss.Index:
    """Read an index from any fsspec URI (streamed from remote storage, no temporary copy)."""
    if uris.is_local(uri):
        return faiss.read_index(_local_path(uri))
    with uris.open_uri(uri) as f:
        return faiss.read_index(faiss.PyCallbackIOReader(f.read))


def set_threads(settings: IndexSettings, side_by_side: int = 1) -> None:
    """faiss (OpenMP) threads: settings.threads, else the cores shared among the tasks running side by side
    (Dask starts its workers with OMP_NUM_THREADS=1; oversubscribed OpenMP threads slow faiss many times)."""
    faiss.omp_set_num_threads(settings.threads or max(1, (os.cpu_count() or 1) // side_by_side))
