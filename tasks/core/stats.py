"""What the stages' stats files mean, in one place: the funnel's steps, the counts in and out of one
file or shard, its main failure reasons, and the label a run's artifacts are kept under.

The Prefect artifacts of every flow and the report (tasks/report/stage.py) read the stats files through
these definitions, so a number means the same on the Artifacts page and in report/index.html.
"""

from __future__ import annotations

import re

from clipcrawl.tasks.core.layout import pairs_dir, summary_file
from clipcrawl.tasks.core.status import DownloadStatus, EmbedStatus, PairStatus
from clipcrawl.tasks.core.uri import exists, name_of, read_json

# The funnel, in order; each step's count is a subset of the one before, except `indexed`
# (near-duplicates are marked, not dropped, so the index holds every CLIP-passed sample).
FUNNEL = (
    ("extracted", "img tags with alt text in the crawl files"),
    ("text_filtered", "pairs left after the alt-text and URL filters and the pages' opt-outs and TDM reservations"),
    ("deduplicated", "pairs left after dropping repeated (url, text) pairs: the rows of pairs/"),
    ("downloaded", "samples whose image body was received"),
    ("decoded", "samples whose image decoded and passed the size checks: the images in images/"),
    ("clip_passed", "samples with CLIP similarity at or over the threshold: the rows of dataset/"),
    ("near_duplicates_removed", "CLIP-passed samples that are not a near-duplicate of an earlier one"),
    ("indexed", "vectors in the image index"),
)

# Pair drops that the text filter makes, and those of pages that withhold their images (made after the text filter,
# before dedup); the rest of `dropped` is no_alt, before `extracted`, and duplicates
TEXT_FILTER_REASONS = (
    PairStatus.ALT_TOO_SHORT,
    PairStatus.ALT_TOO_LONG,
    PairStatus.UNSUPPORTED_SCHEME,
    PairStatus.INVALID_URL,
    PairStatus.PAGE_OPT_OUT,
    PairStatus.TDM_RESERVED_HEADER,
    PairStatus.TDM_RESERVED_META,
)
# Download statuses of samples whose image body arrived (the image checks then passed or failed)
BODY_RECEIVED = (
    DownloadStatus.SUCCESS,
    DownloadStatus.TOO_SMALL_BYTES,
    DownloadStatus.TOO_SMALL_PIXELS,
    DownloadStatus.TOO_MANY_PIXELS,
    DownloadStatus.BAD_ASPECT_RATIO,
    DownloadStatus.NOT_AN_IMAGE,
    DownloadStatus.DECODE_ERROR,
)

SEGMENT = re.compile(r"(?:^|/)segments/([^/]+)(?:/|$)")


def segment_of(uri: str) -> str | None:
    """The Common Crawl segment of a crawl file (crawl-data/<crawl>/segments/<segment>/...); None for any other
    file (an explicit input): a crawl listing rejects it, a report counts such a file as its own group."""
    found = SEGMENT.search(uri)
    return found.group(1) if found else None


def add_counts(total: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for name, n in counts.items():
        total[name] = total.get(name, 0) + n
    return total


def top_reasons(counts: dict[str, int], n: int = 3) -> str:
    """'http_4xx 22, too_large 23, timeout 20': the most frequent reasons, most first."""
    ranked = sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v}" for k, v in ranked[:n])


RECORD_COUNTERS = ("records", "html_pages", "malformed_records", "truncated_pages")
EXAMPLES = 10  # malformed records and partial files listed by name


def record_counts(pair_stats: list[dict]) -> dict:
    """What became of the crawl files' records, over the files' stats: each is an HTML page, skipped for a
    reason ({RecordStatus: n}) or malformed; `truncated_pages` are HTML pages cut at max_record_bytes. The
    first malformed record of each file and the files left partial (container damage) are listed with why."""
    out: dict = {c: sum(s.get(c, 0) for s in pair_stats) for c in RECORD_COUNTERS}
    out["skipped"] = {}
    for s in pair_stats:
        add_counts(out["skipped"], s.get("skipped_records", {}))
    out["malformed_examples"] = [
        {"uri": s["uri"], "error": s["malformed_first"]} for s in pair_stats if s.get("malformed_first")
    ][:EXAMPLES]
    out["partial"] = [{"uri": s["uri"], "error": s["error"]} for s in pair_stats if s["status"] == "partial"]
    return out


def unit_counts(stage: str, stats: dict) -> dict:
    """One file's or shard's counts from its stats: items in, items out, why the others were dropped
    or failed ({reason: count}), and seconds of work."""
    if stage == "ingest":
        dropped = {k: v for k, v in stats["dropped"].items() if k != PairStatus.NO_ALT}
        return {"in": stats["with_alt"], "out": stats["kept"], "reasons": dropped, "seconds": stats.get("seconds", 0.0)}
    if stage == "download":
        failures = {k: v for k, v in stats["status"].items() if k != DownloadStatus.SUCCESS}
        return {
            "in": stats["count"],
            "out": stats["successes"],
            "reasons": failures,
            "seconds": stats.get("duration", 0.0),
        }
    if stage == "embed":
        reasons = {k: v for k, v in stats["status"].items() if k != EmbedStatus.EMBEDDED}
        reasons |= {"below_threshold": stats["dropped_similarity"], "dropped_nsfw": stats["dropped_nsfw"]}
        return {
            "in": stats["samples"],
            "out": stats["kept"],
            "reasons": reasons,
            "seconds": stats.get("timings", {}).get("total_s", 0.0),
        }
    raise ValueError(f"no unit counts for stage {stage!r} (want ingest, download or embed)")


def run_label(out: str) -> str:
    """What a run's artifacts are kept under: the crawl the output location holds (from its ingest
    summary), else the location's name. Runs over one crawl share their artifacts' history."""
    summary = summary_file(pairs_dir(out))
    crawl = read_json(summary).get("crawl") if exists(summary) else None
    return crawl or name_of(out.rstrip("/")) or "run"
