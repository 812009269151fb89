"""The embeddings an index is built from, read where they lie: a local .npy memory-mapped, a .npy in an object store
read by row ranges (RemoteVectors), never the whole file at once. A Part is one embedding shard and the rows of it
to index; batches and samples of the parts' vectors are what training, adding and exact search consume."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from clipcrawl.tasks.core import uri as uris

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


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (a plain path or file://)."""
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
    vectors = np.load(local_path(uri), mmap_mode="r")
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
