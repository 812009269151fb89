"""Near-duplicate groups found through an index: planted duplicates are grouped, others are not,
groups are named by their first id, and a later batch can only join groups, never reorder them."""

from __future__ import annotations

import faiss
import numpy as np

from clipcrawl.tasks.index.neardup import link, near_duplicate_groups, roots


def unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(x)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n_unique: int, copies: dict[int, int], dim: int = 32, noise: float = 0.01, seed: int = 0):
    """n_unique random directions; copies[i] extra noisy copies of vector i appended at the end."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(n_unique, dim)))
    extra = [(i, unit(base[i] + noise * rng.normal(size=dim))[0]) for i, c in copies.items() for _ in range(c)]
    vectors = np.vstack([base] + [v[None] for _, v in extra])
    truth = np.arange(len(vectors))
    for j, (i, _) in enumerate(extra):
        truth[n_unique + j] = i
    return vectors, truth


def index_of(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def test_link_joins_chains_under_the_smallest_id():
    parent = np.arange(6)
    link(parent, np.array([4, 2, 5]), np.array([2, 0, 3]))
    assert roots(parent).tolist() == [0, 1, 0, 3, 0, 3]


def test_planted_duplicates_are_grouped_and_nothing_else():
    vectors, truth = planted(200, {3: 2, 17: 1, 150: 3})
    groups, links = near_duplicate_groups(index_of(vectors), [(0, vectors)], np.arange(len(vectors)), 0.96, 8)
    assert groups.tolist() == truth.tolist()
    assert links == 3 * 2 + 2 * 1 + 4 * 3  # every ordered pair inside the groups of 3, 2 and 4


def test_threshold_decides():
    vectors, _ = planted(50, {5: 1}, noise=0.5)  # a loose copy: cosine well under 0.96
    cos = float(vectors[5] @ vectors[-1])
    assert cos < 0.96
    groups, _ = near_duplicate_groups(index_of(vectors), [(0, vectors)], np.arange(len(vectors)), 0.96, 8)
    assert groups[-1] == len(vectors) - 1
    groups, _ = near_duplicate_groups(index_of(vectors), [(0, vectors)], np.arange(len(vectors)), cos - 0.01, 8)
    assert groups[-1] == 5


def test_a_later_batch_joins_existing_groups_without_renaming_the_first():
    vectors, _ = planted(100, {})
    index = index_of(vectors)
    first, _ = near_duplicate_groups(index, [(0, vectors)], np.arange(100), 0.96, 4)
    assert first.tolist() == list(range(100))
    # a new vector halfway between 10 and 20 after they were made near-duplicates of each other
    close = unit(vectors[10] + 0.05 * vectors[20])
    index.add(close)
    groups, _ = near_duplicate_groups(index, [(100, close)], np.append(first, 100), 0.96, 4)
    assert groups[100] == 10 and groups[10] == 10
    assert (groups[:100] == np.arange(100)).all()  # an old sample never becomes the duplicate of a new one
