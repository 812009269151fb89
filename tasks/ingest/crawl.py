"""Common Crawl listings: which WAT/WARC files make up a crawl, and which segments to take."""

from __future__ import annotations

import gzip
import io
import random
from collections import defaultdict
from collections.abc import Callable

from clipcrawl.tasks.core.config import COMMON_CRAWL_HTTPS, COMMON_CRAWL_S3
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.layout import pairs_dir, summary_file
from clipcrawl.tasks.core.stats import segment_of
from clipcrawl.tasks.core.uri import exists, join, open_uri, read_json

COLLINFO_URI = "https://index.commoncrawl.org/collinfo.json"


class ListingError(InputError):
    """The crawl listing named is missing or unusable: wrong input, never retried."""


def read_paths(source: str, crawl: str, kind: str) -> list[str]:
    """Relative paths listed in crawl-data/<crawl>/<kind>.paths.gz under `source`."""
    uri = join(source, "crawl-data", crawl, f"{kind}.paths.gz")
    try:
        with open_uri(uri) as raw:
            data = raw.read()
    except FileNotFoundError as exc:
        raise ListingError(f"{uri}: no {kind} listing for crawl {crawl!r} at {source}") from exc
    try:
        text = gzip.decompress(data).decode()
    except (OSError, EOFError) as exc:
        raise ListingError(f"{uri}: not a gzip paths listing ({exc})") from exc
    return [line.strip() for line in io.StringIO(text) if line.strip()]


def _listed_segment(path: str) -> str:
    """The segment of a path in a crawl listing, which names only crawl-data/<crawl>/segments/<segment>/... paths."""
    segment = segment_of(path)
    if segment is None:
        raise ListingError(f"{path}: not a crawl-data/<crawl>/segments/<segment>/... path")
    return segment


def select_segments(segments: list[str], count: int | None, names: list[str], seed: int | None) -> list[str]:
    """Explicit names, a random sample of `count` with `seed`, the first `count`, or all."""
    if names:
        missing = sorted(set(names) - set(segments))
        if missing:
            raise ListingError(f"segments not in the crawl listing: {', '.join(missing)}")
        return [s for s in segments if s in set(names)]
    if count is None or count >= len(segments):
        return list(segments)
    if seed is not None:
        return sorted(random.Random(seed).sample(segments, count))
    return segments[:count]


def crawl_files(
    source: str,
    crawl: str,
    kind: str = "wat",
    segments: int | None = None,
    segment_list: list[str] | None = None,
    sample_seed: int | None = None,
    files_per_segment: int | None = None,
) -> list[str]:
    """URIs of the crawl's WAT (or WARC) files in the selected segments, in listing order."""
    by_segment: dict[str, list[str]] = defaultdict(list)
    for path in read_paths(source, crawl, kind):
        by_segment[_listed_segment(path)].append(path)
    chosen = select_segments(list(by_segment), segments, segment_list or [], sample_seed)
    uris = []
    for segment in chosen:
        paths = by_segment[segment][:files_per_segment] if files_per_segment else by_segment[segment]
        uris.extend(join(source, p) for p in paths)
    if not uris:
        raise ListingError(
            f"no {kind} files chosen from {join(source, 'crawl-data', crawl, f'{kind}.paths.gz')}: "
            f"it lists {len(by_segment)} segments"
        )
    return uris


def list_crawls(collinfo_uri: str = COLLINFO_URI) -> list[str]:
    """Crawl ids from a Common Crawl collinfo.json, newest first as published."""
    import json

    with open_uri(collinfo_uri, "r") as f:
        return [entry["id"] for entry in json.load(f)]


def is_common_crawl(source: str) -> bool:
    """Whether a source is Common Crawl itself (its request rate is shared by everyone: rate-limited)."""
    return source.rstrip("/") in (COMMON_CRAWL_HTTPS, COMMON_CRAWL_S3)


def list_segments(source: str, crawl: str, kind: str = "wat") -> list[str]:
    """The crawl's segment names, in listing order."""
    return list(dict.fromkeys(_listed_segment(p) for p in read_paths(source, crawl, kind)))


def plan_new_segments(
    crawls: list[str], segments_of: Callable[[str], list[str]], done: dict[str, list[str]], budget: int
) -> dict[str, list[str]]:
    """Which segments the next scheduled run ingests: crawls in the given order (newest first), each
    crawl's segments not yet done in listing order, at most `budget` segments in all. Lists a crawl's
    segments only while budget is left. Returns {crawl: new segments}, without crawls with none left."""
    plan: dict[str, list[str]] = {}
    for crawl in crawls:
        if budget <= 0:
            break
        finished = set(done.get(crawl, []))
        take = [s for s in segments_of(crawl) if s not in finished][:budget]
        if take:
            plan[crawl] = take
            budget -= len(take)
    return plan


def ingested_segments(out: str) -> list[str]:
    """Segments of the crawl at OUT whose every file was ingested (from the last ingest summary)."""
    uri = summary_file(pairs_dir(out))
    if not exists(uri):
        return []
    summary = read_json(uri)
    failed = {segment_of(f["uri"]) for f in summary.get("failed", [])}
    return [s for s in summary.get("segments") or [] if s not in failed]
