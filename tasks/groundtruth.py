"""Compare a run's outputs with the synthetic world's ground-truth manifest."""

from __future__ import annotations

import pyarrow.parquet as pq

from tasks.uri import join, listdir, open_uri


def read_pair_set(out: str) -> tuple[set[tuple[str, str]], int]:
    """The (url, text) pairs published under OUT/pairs/, and the row count (to spot duplicates)."""
    found: set[tuple[str, str]] = set()
    rows = 0
    for uri in listdir(join(out, "pairs"), ".parquet"):
        with open_uri(uri) as f:
            table = pq.read_table(f, columns=["url", "text"])
        rows += table.num_rows
        found.update(zip(table.column("url").to_pylist(), table.column("text").to_pylist()))
    return found, rows


def compare_pairs(world, out: str, examples: int = 5) -> dict:
    """Whether the published pairs equal the pairs a correct extractor keeps, with examples of any gap."""
    expected = world.expected_pairs()
    found, rows = read_pair_set(out)
    missing, extra = sorted(expected - found), sorted(found - expected)
    return {
        "equal": not missing and not extra and rows == len(found),
        "expected": len(expected),
        "extracted": len(found),
        "duplicate_rows": rows - len(found),
        "missing": missing[:examples],
        "extra": extra[:examples],
    }


def read_download_statuses(out: str) -> list[tuple[str, str]]:
    """(url, status) of every sample row under OUT/images/."""
    rows: list[tuple[str, str]] = []
    for uri in listdir(join(out, "images"), ".parquet"):
        with open_uri(uri) as f:
            table = pq.read_table(f, columns=["url", "status"])
        rows.extend(zip(table.column("url").to_pylist(), table.column("status").to_pylist()))
    return rows


def compare_downloads(world, out: str, examples: int = 5) -> dict:
    """Whether every downloaded sample got the status the world's image server should cause."""
    expected = world.expected_downloads()
    rows = read_download_statuses(out)
    wrong = [(url, status, expected.get(url)) for url, status in rows if expected.get(url) != status]
    seen = {url for url, _ in rows}
    by_status: dict[str, int] = {}
    for _, status in rows:
        by_status[status] = by_status.get(status, 0) + 1
    return {
        "equal": not wrong and seen == set(expected),
        "samples": len(rows),
        "urls": len(seen),
        "expected_urls": len(expected),
        "status": dict(sorted(by_status.items())),
        "wrong": [{"url": u, "status": s, "expected": e} for u, s, e in wrong[:examples]],
        "missing": sorted(set(expected) - seen)[:examples],
    }
