"""What OUT derives from the rewritten files: the report, made again, and the Prefect result storage, whose
persisted task results that mention a taken-down sample are deleted (their tasks then run again from the
rewritten files, instead of handing back a result that holds the sample)."""

from __future__ import annotations

import base64
import binascii
import json

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.config import ReportSettings
from clipcrawl.tasks.core.uri import exists, filesystem, is_local, open_uri, read_json
from clipcrawl.tasks.takedown.match import Matched


def needles(matched: Matched) -> list[bytes]:
    """The byte strings that identify a taken-down sample in a file: its URLs, captions and image sha256."""
    texts = matched.urls | matched.captions | matched.sha256
    return sorted({t.encode("utf-8", "surrogatepass") for t in texts if t})


def _decoded(data: bytes) -> bytes:
    """A result file's payload as stored by Prefect: a JSON record whose `result` is base64 (the serialised
    value), or the base64 text alone; the decoded bytes, else nothing."""
    try:
        record = json.loads(data)
        payload = record.get("result") if isinstance(record, dict) else None
    except (ValueError, UnicodeDecodeError):
        payload = data
    if isinstance(payload, str):
        payload = payload.encode()
    if not isinstance(payload, bytes):
        return b""
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return b""


def holds(data: bytes, found: list[bytes]) -> bool:
    """Whether a file's bytes, or the serialised value they encode, contain one of `found`."""
    decoded = _decoded(data)
    return any(n in data or n in decoded for n in found)


def results_holding(results: str, matched: Matched) -> list[str]:
    """The result files under RESULTS that hold a taken-down sample (their URIs)."""
    found = needles(matched)
    fs, root = filesystem(results)
    if not found or not fs.exists(root):
        return []
    held = []
    for path in sorted(fs.find(root)):
        with fs.open(path, "rb") as f:
            data = f.read()
        if holds(data, found):
            held.append(path if is_local(results) else fs.unstrip_protocol(path))
    return held


def scrub_results(results: str, matched: Matched, known: list[str] = ()) -> list[str]:
    """Delete the result files under RESULTS that hold a taken-down sample, and those of `known` (found before
    the outputs were rewritten: the journal's list) still there; their URIs."""
    deleted = []
    for uri in sorted(set(results_holding(results, matched)) | set(known)):
        if exists(uri):
            fs, path = filesystem(uri)
            fs.rm(path)
            deleted.append(uri)
    return deleted


def remake_report(out: str, settings: ReportSettings | None = None) -> str | None:
    """OUT/report/ made again from the rewritten outputs with the report's own code, measured again against the
    ground truth manifest it was measured against (when stats.json records one that is still there); None when
    OUT has no report. The report's settings are not stored: the defaults, unless given."""
    from clipcrawl.tasks.report.stage import finish_report, report_shards, shard_summary

    report = layout.report_dir(out)
    stats_uri = layout.report_stats(report)
    if not (exists(layout.report_html(report)) or exists(stats_uri)):
        return None
    manifest = None
    if exists(stats_uri):
        manifest = ((read_json(stats_uri) or {}).get("ground_truth") or {}).get("manifest")
        manifest = manifest if manifest and exists(manifest) else None
    settings = settings or ReportSettings()
    summaries = [shard_summary(out, stem, settings) for stem in report_shards(out)]
    return finish_report(out, summaries, settings, manifest)["report"]


def report_holds(out: str, matched: Matched) -> bool:
    """Whether a file of OUT/report/ holds a taken-down sample."""
    report = layout.report_dir(out)
    return any(
        exists(uri) and file_holds(uri, matched) for uri in (layout.report_html(report), layout.report_stats(report))
    )


def file_holds(uri: str, matched: Matched) -> bool:
    """Whether one file holds a taken-down sample (as scrub_results decides)."""
    with open_uri(uri) as f:
        return holds(f.read(), needles(matched))
