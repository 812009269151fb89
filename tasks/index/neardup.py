"""Near-duplicate images by CLIP embedding, found through the image index (no all-pairs comparison).

Each image's nearest neighbours in the index are searched; two images whose embeddings are at
least `threshold` cosine-similar are linked, and linked images form a group (union-find, so
chains join). A group is named by its smallest index id: the first sample indexed stays the
original, so indexing a new crawl never turns an earlier sample into a duplicate of a later one.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


def link(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the groups of each pair (a[j], b[j]); the smaller root becomes the group's root."""
    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = _root(parent, x), _root(parent, y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)


def roots(parent: np.ndarray) -> np.ndarray:
    """Every id's group root (pointer jumping until stable), as a new array."""
    out = parent.copy()
    while True:
        nxt = out[out]
        if np.array_equal(nxt, out):
            return out
        out = nxt


def near_duplicate_groups(
    index: faiss.Index, batches: Iterable[tuple[int, np.ndarray]], groups: np.ndarray, threshold: float, neighbours: int
) -> tuple[np.ndarray, int]:
    """Extend `groups` (group root id per index id) with the links of the searched vectors.

    `batches` yields (first id, float32 vectors) of the vectors to search, already in the index;
    `groups` holds the earlier groups (each id its own root when new). Returns (the new groups,
    the number of links found).
    """
    parent = groups.astype(np.int64, copy=True)
    links = 0
    for first, vectors in batches:
        sims, ids = index.search(vectors, neighbours)
        own = np.arange(first, first + len(vectors), dtype=np.int64)[:, None]
        hit = (sims >= threshold) & (ids >= 0) & (ids != own)
        a, b = np.broadcast_to(own, ids.shape)[hit], ids[hit]
        links += len(a)
        link(parent, a, b)
    return roots(parent), links
