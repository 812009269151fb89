"""Build a faiss index: train it on a sample of the vectors (an IVF index's coarse k-means on the GPUs when faiss
is built for them and one is visible), add the vectors part by part (memory-mapped or read by ranges, never all in
RAM), and read or write it at any fsspec URI. The index itself stays a CPU index, so the files are the same whichever
machine built them and search anywhere."""

from __future__ import annotations

import logging
import os
import time

import faiss
import numpy as np

from clipcrawl.tasks.core import uri as uris
from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.index.choice import METRIC, choose_index_key, index_memory, nlist_of, train_size
from clipcrawl.tasks.index.vectors import Part, dimension, local_path, sample_vectors, vector_batches

log = logging.getLogger(__name__)


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
        nlist = nlist_of(key)
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


def write_index(index: faiss.Index, uri: str) -> None:
    """Publish the index atomically at any fsspec URI (streamed by faiss into the file, no temporary copy)."""
    with uris.atomic_write(uri, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def read_index(uri: str) -> faiss.Index:
    """Read an index from any fsspec URI (streamed from remote storage, no temporary copy)."""
    if uris.is_local(uri):
        return faiss.read_index(local_path(uri))
    with uris.open_uri(uri) as f:
        return faiss.read_index(faiss.PyCallbackIOReader(f.read))


def set_threads(settings: IndexSettings, side_by_side: int = 1) -> None:
    """faiss (OpenMP) threads: settings.threads, else the cores shared among the tasks running side by side
    (Dask starts its workers with OMP_NUM_THREADS=1; oversubscribed OpenMP threads slow faiss many times)."""
    faiss.omp_set_num_threads(settings.threads or max(1, (os.cpu_count() or 1) // side_by_side))
