"""The data-quality report's numbers: one mergeable summary per image shard, then OUT/report/stats.json.

shard_summary reads one shard's parquet files (images/, embeddings/metadata/, dataset/) into counts, so a
flow can map it over the shards and build_stats can add the counts up with the stages' small stats files.
Memory stays bounded on a crawl of millions of rows: parquet is streamed by batches and columns, the
distributions are fixed-bin histograms, domains are the only thing counted per name, and the thumbnails are
a bottom-k sample: each embedded sample gets a pseudo-random priority from its key, and the k smallest
priorities of a union of shards are a uniform sample of it, so shard samples merge without bias.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import heapq
from collections import Counter
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core import stats as stage_stats
from clipcrawl.tasks.core.cache import transient_retries
from clipcrawl.tasks.core.caption import CAPTION, file_columns, with_caption
from clipcrawl.tasks.core.config import ReportSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.status import NSFW_TAGS, DownloadStatus, PairStatus
from clipcrawl.tasks.core.uri import exists, name_of, open_uri, read_json, write_json
from clipcrawl.tasks.report.gates import check_gates

VERSION = 2  # stats.json's layout: 2, the samples' caption under `caption` (was `text`)
BATCH_ROWS = 65_536
STAGES = ("ingest", "download", "embed", "index")
SAMPLE_TEXT_CHARS = 300  # thumbnails' captions are cut: 2,000 full alt texts per shard would be megabytes
# Fixed bins, so that shard histograms add up; a value outside the edges counts in the first or last bin.
EDGES = {
    "similarity": np.linspace(-1, 1, 41),
    "kept_similarity": np.linspace(-1, 1, 41),
    "rejected_similarity": np.linspace(-1, 1, 41),
    "width": np.linspace(0, 4096, 33),
    "height": np.linspace(0, 4096, 33),
    "aspect": np.geomspace(0.1, 10, 41),
    "caption": np.linspace(0, 400, 41),
    "kept_caption": np.linspace(0, 400, 41),
}
CELL = {(True, True): "tp", (False, True): "fp", (True, False): "fn", (False, False): "tn"}  # (matches, passed)
RECEIVED = frozenset(str(s) for s in stage_stats.BODY_RECEIVED)
SUCCESS = str(DownloadStatus.SUCCESS)
INDEX_BRIEF = (
    "index_key",
    "params",
    "vectors",
    "memory_bytes",
    "k",
    "recall_at_k",
    "p50_ms",
    "p99_ms",
    "build_s",
    "add_s",
)


def domain_of(url: str | None) -> str:
    """The URL's host, lowercase, without port or a leading 'www.' ('(invalid)' when it has none)."""
    try:
        host = urlsplit(url or "").hostname or ""
    except ValueError:
        host = ""
    return host.removeprefix("www.") or "(invalid)"


def _json(uri: str) -> dict:
    try:
        return read_json(uri)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{uri}: unreadable stats file ({exc})") from exc


def _optional_json(uri: str) -> dict | None:
    return _json(uri) if exists(uri) else None


def _batches(uri: str, columns: list[str], optional: tuple[str, ...] = ()):
    """The columns of a parquet file as dicts of lists, a batch at a time; errors name the file. A caption
    column asked for is read from an older output's text too."""
    if not exists(uri):
        raise FileNotFoundError(f"{uri}: missing")
    try:
        with open_uri(uri) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            read = file_columns(names, columns) if CAPTION in columns else columns
            if missing := [c for c in read if c not in names]:
                raise ValueError(f"no column {', '.join(missing)}")
            wanted = read + [c for c in optional if c in names]
            for batch in parquet.iter_batches(BATCH_ROWS, columns=wanted):
                yield (with_caption(batch) if CAPTION in columns else batch).to_pydict()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ValueError(f"{uri}: unreadable parquet ({exc})") from exc


def _histogram(name: str, values) -> list[int]:
    edges = EDGES[name]
    v = np.asarray(values, dtype=float)
    return np.histogram(np.clip(v[~np.isnan(v)], edges[0], edges[-1]), edges)[0].tolist()


def _add(into: dict, more: dict) -> dict:
    """Add nested counts (numbers, lists of bin counts, dicts of these) into `into`."""
    for k, v in more.items():
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        elif isinstance(v, list):
            into[k] = [a + b for a, b in zip(into[k], v)] if k in into else list(v)
        else:
            into[k] = into.get(k, 0) + v
    return into


def _fold(into: dict, counter: Counter) -> None:
    """Add {(name, ..., field): n} into the nested dict {name: {...: {field: n}}}."""
    for (*names, field), n in counter.items():
        node = into
        for name in names:
            node = node.setdefault(name, {})
        node[field] = node.get(field, 0) + n


def _new_counts() -> dict:
    return {
        "segments": {},
        "domains": {},
        "languages": {},
        "nsfw": dict.fromkeys(NSFW_TAGS, 0),
        "ground_truth": {},
        "blocklists": {},  # samples per known-bad list (names only: nothing of the images)
        "histograms": {name: [0] * (len(edges) - 1) for name, edges in EDGES.items()},
        "totals": dict.fromkeys(
            ("sent", "images", "caption_chars", "embedded", "similarity_sum", "not_in_manifest"), 0
        ),
    }


def _priority(key: str) -> float:
    """A fixed pseudo-random number in [0, 1) per sample key: every run draws the same samples."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def _offer(heap: list, limit: int, sample: dict) -> None:
    """Keep the `limit` samples of smallest priority (a max-heap on priority)."""
    item = (-sample["priority"], sample["key"], sample)
    if len(heap) < limit:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


@functools.lru_cache(maxsize=2)
def _manifest(uri: str) -> dict[tuple[str, str], tuple[bool, str]]:
    """(url, text) -> (does the caption describe the image, alt case), from a world's manifest pairs.parquet."""
    truth = {}
    for b in _batches(uri, ["url", "text", "matches", "alt_case"]):
        truth.update(zip(zip(b["url"], b["text"]), zip(b["matches"], b["alt_case"])))
    return truth


def _segment(uri: str) -> str:
    """The segment a file's counts go under: its crawl segment, else (an explicit input) the file's name."""
    return stage_stats.segment_of(uri) or name_of(uri)


def _count_downloads(uri: str, counts: dict) -> dict[str, str]:
    """Count the shard's download rows; returns key -> segment of its decoded samples, for the later stages."""
    segments, key_segment = {}, {}
    columns = ["key", "url", CAPTION, "status", "original_width", "original_height", "source", "language"]
    for b in _batches(uri, columns):
        rows = Counter()
        for key, url, status, source, language in zip(b["key"], b["url"], b["status"], b["source"], b["language"]):
            segment = segments.setdefault(source, _segment(source or ""))
            rows.update(
                [
                    ("segments", segment, "sent"),
                    ("domains", domain_of(url), status),
                    ("languages", language or "unknown", "pairs"),
                ]
            )
            rows[("segments", segment, "downloaded")] += status in RECEIVED
            if status == SUCCESS:
                rows[("segments", segment, "decoded")] += 1
                key_segment[key] = segment
        _fold(counts, rows)
        lengths = [len(t or "") for t in b[CAPTION]]
        decoded = [i for i, s in enumerate(b["status"]) if s == SUCCESS]
        width = np.array([b["original_width"][i] for i in decoded], dtype=float)
        height = np.array([b["original_height"][i] for i in decoded], dtype=float)
        aspect = np.divide(width, height, out=np.full_like(width, np.nan), where=height > 0)
        _add(
            counts["histograms"],
            {
                "caption": _histogram("caption", lengths),
                "width": _histogram("width", width),
                "height": _histogram("height", height),
                "aspect": _histogram("aspect", aspect),
            },
        )
        _add(counts["totals"], {"sent": len(lengths), "caption_chars": sum(lengths), "images": len(decoded)})
    return key_segment


def _count_embedded(
    uri: str, embed: dict, tar: str, key_segment: dict, counts: dict, limit: int, truth: dict | None
) -> list[dict]:
    """Count the shard's embedded samples; returns its thumbnail sample (at most `limit` kept and rejected each).

    kept is embed's own rule (similarity at or over the threshold, and not tagged NSFW when those were
    dropped), so it adds up to clip_passed; the ground truth measures the similarity filter alone."""
    threshold, drop_nsfw = embed["similarity_threshold"], embed.get("drop_nsfw", False)
    heaps: dict[bool, list] = {True: [], False: []}
    for b in _batches(uri, ["key", "url", CAPTION, "similarity", "NSFW"]):
        sims = np.array(b["similarity"], dtype=float)
        kept = (sims >= threshold) & ~((np.array(b["NSFW"], dtype=object) == "NSFW") & drop_nsfw)
        _add(
            counts["histograms"],
            {
                "similarity": _histogram("similarity", sims),
                "kept_similarity": _histogram("kept_similarity", sims[kept]),
                "rejected_similarity": _histogram("rejected_similarity", sims[~kept]),
            },
        )
        _add(counts["totals"], {"embedded": len(sims), "similarity_sum": float(sims.sum())})
        rows = Counter(("nsfw", tag) for tag in b["NSFW"])
        for key, url, caption, sim, keep in zip(b["key"], b["url"], b[CAPTION], b["similarity"], kept.tolist()):
            rows[("segments", key_segment.get(key, "unknown"), "clip_passed")] += keep
            _offer(
                heaps[keep],
                limit,
                {
                    "priority": _priority(key),
                    "key": key,
                    "url": url,
                    "similarity": sim,
                    "caption": (caption or "")[:SAMPLE_TEXT_CHARS],
                    "kept": keep,
                    "tar": tar,
                },
            )
            if truth is not None and (url, caption) not in truth:
                rows[("totals", "not_in_manifest")] += 1
            elif truth is not None:
                matches, case = truth[(url, caption)]
                rows[("ground_truth", case, CELL[(bool(matches), sim >= threshold)])] += 1
        _fold(counts, rows)
    return [sample for heap in heaps.values() for _, _, sample in heap]


def _count_dataset(uri: str, key_segment: dict, counts: dict) -> None:
    """Count the shard's dataset rows: their captions and languages, and those not marked near-duplicate."""
    for b in _batches(uri, ["key", "TEXT", "language"], optional=("near_duplicate",)):
        rows, marks = Counter(), b.get("near_duplicate") or [False] * len(b["key"])
        for key, language, duplicate in zip(b["key"], b["language"], marks):
            rows[("languages", language or "unknown", "kept")] += 1
            rows[("segments", key_segment.get(key, "unknown"), "near_duplicates_removed")] += not duplicate
        _fold(counts, rows)
        _add(counts["histograms"], {"kept_caption": _histogram("kept_caption", [len(t or "") for t in b["TEXT"]])})


def shard_summary(out: str, stem: str, settings: ReportSettings, ground_truth: str | None = None) -> dict:
    """One published image shard's counts, histograms, thumbnail sample and unit stats (JSON-able, mergeable).

    ground_truth: a manifest pairs.parquet (url, text, matches, alt_case) to count the filter's confusion by."""
    counts = _new_counts()
    images, embeddings, dataset = layout.images_dir(out), layout.embeddings_dir(out), layout.dataset_dir(out)
    download = _json(layout.shard_stats(images, stem))
    key_segment = _count_downloads(layout.shard_parquet(images, stem), counts)
    _add(counts["blocklists"], download.get("blocklisted_by_list") or {})
    summary = {
        "stem": stem,
        "counts": counts,
        "threshold": None,
        "samples": [],
        "units": {"download": {"unit": stem, **stage_stats.unit_counts("download", download)}},
    }
    embed = _optional_json(layout.dataset_stats(dataset, stem))  # embed's completion marker
    if embed is not None:
        tar = embed.get("tar") or layout.shard_tar(images, stem)
        truth = _manifest(ground_truth) if ground_truth else None
        summary["samples"] = _count_embedded(
            layout.metadata_file(embeddings, stem),
            embed,
            tar,
            key_segment,
            counts,
            max(1, settings.sample_reservoir // 2),
            truth,
        )
        _count_dataset(layout.dataset_part(dataset, stem), key_segment, counts)
        summary["threshold"] = embed["similarity_threshold"]
        summary["units"]["embed"] = {"unit": stem, **stage_stats.unit_counts("embed", embed)}
    return summary


def _fraction(part, whole) -> float | None:
    return part / whole if part is not None and whole else None


def _hist_json(name: str, counts: list[int]) -> dict:
    return {"edges": [round(float(e), 6) for e in EDGES[name]], "counts": counts}


def _failed(summary: dict | None) -> list[dict]:
    """A stage summary's failed files or shards as {unit, error}: a crawl file's URI, a shard's stem."""

    def unit(f: dict) -> str:
        return f["uri"] if "uri" in f else f"{f['shard']:05d}" if isinstance(f["shard"], int) else str(f["shard"])

    return [{"unit": unit(f), "error": f["error"]} for f in (summary or {}).get("failed", [])]


def _stage_detail(units: list[dict], failed: list[dict], summary: dict | None, slowest: int) -> dict:
    """A stage's units, failed units with their errors, reason counts and timings."""
    seconds, items = sum(u["seconds"] for u in units), sum(u["in"] for u in units)
    reasons: dict[str, int] = {}
    for u in units:
        _add(reasons, u["reasons"])
    ranked = sorted(units, key=lambda u: (-u["seconds"], u["unit"]))[:slowest]
    return {
        "units": len(units) + len(failed),
        "failed": failed,
        "reasons": reasons,
        "in": items,
        "out": sum(u["out"] for u in units),
        "task_seconds": seconds,
        "wall_seconds": (summary or {}).get("wall_seconds"),
        "items_per_s": _fraction(items, seconds),
        "slowest": [{k: u[k] for k in ("unit", "seconds", "in", "out")} for u in ranked],
    }


def _stages_detail(
    out: str, pair_stats: list[dict], summaries: list[dict], index: dict | None, settings: ReportSettings
) -> dict:
    """The detail of each stage that ran (has units, or a summary: every unit may have failed)."""
    details = {}
    for stage, folder in (("ingest", layout.pairs_dir), ("download", layout.images_dir), ("embed", layout.dataset_dir)):
        summary = _optional_json(layout.summary_file(folder(out)))
        units = (
            [{"unit": s["name"], **stage_stats.unit_counts("ingest", s)} for s in pair_stats]
            if stage == "ingest"
            else [s["units"][stage] for s in summaries if stage in s["units"]]
        )
        if units or summary:
            details[stage] = _stage_detail(units, _failed(summary), summary, settings.slowest)
            if stage == "ingest":
                details[stage]["records"] = stage_stats.record_counts(pair_stats)
    if index:
        modalities = [
            {
                "unit": m,
                "in": index[m]["vectors"],
                "out": index[m]["vectors"],
                "reasons": {},
                "seconds": index[m].get("build_s", 0.0) + index[m].get("add_s", 0.0),
            }
            for m in ("image", "text")
            if m in index
        ]
        details["index"] = _stage_detail(modalities, [], None, settings.slowest)
    return details


def _pair_steps(ingest: dict) -> dict[str, int]:
    """extracted, text_filtered, deduplicated from ingest counts (one file's, or a stage's: in, out, reasons)."""
    filtered = sum(ingest["reasons"].get(r, 0) for r in stage_stats.TEXT_FILTER_REASONS)
    return {"extracted": ingest["in"], "text_filtered": ingest["in"] - filtered, "deduplicated": ingest["out"]}


def _funnel_counts(details: dict, counts: dict, index: dict | None) -> dict[str, int | None]:
    """Each funnel step's count (clipcrawl.tasks.core.stats definitions); null for the steps of stages that did not run."""

    def total(step: str) -> int:
        return sum(s.get(step, 0) for s in counts["segments"].values())

    funnel = dict.fromkeys(step for step, _ in stage_stats.FUNNEL)
    if "ingest" in details:
        funnel |= _pair_steps(details["ingest"])
    if "download" in details:
        funnel |= {"downloaded": total("downloaded"), "decoded": total("decoded")}
    if "embed" in details:
        funnel["clip_passed"] = details["embed"]["out"]
    if index:
        funnel["indexed"] = index["count"]
        if "embed" in details:  # the dataset's rows then carry the near_duplicate mark
            funnel["near_duplicates_removed"] = total("near_duplicates_removed")
    return funnel


def _funnel(funnel: dict[str, int | None]) -> list[dict]:
    """The steps with their shares; `indexed` is a share of clip_passed, the step it is a subset of."""
    steps, previous = [], None
    for step, description in stage_stats.FUNNEL:
        of = funnel["clip_passed"] if step == "indexed" else previous
        n = previous = funnel[step]
        steps.append(
            {
                "step": step,
                "description": description,
                "count": n,
                "of_previous": _fraction(n, of),
                "of_first": _fraction(n, funnel["extracted"]),
            }
        )
    return steps


def _rates(funnel: dict, counts: dict, details: dict) -> dict[str, float | None]:
    removed, passed = funnel["near_duplicates_removed"], funnel["clip_passed"]
    ingest = details.get("ingest")
    return {
        "download_success_rate": _fraction(funnel["decoded"], counts["totals"]["sent"]),
        "clip_pass_rate": _fraction(passed, counts["totals"]["embedded"]),
        "duplicate_rate": _fraction(ingest["reasons"].get(PairStatus.DUPLICATE, 0), funnel["text_filtered"])
        if ingest
        else None,
        "near_duplicate_rate": None if removed is None else _fraction(passed - removed, passed),
        "failed_file_share": max((len(d["failed"]) / d["units"] for d in details.values() if d["units"]), default=None),
    }


def _segments(pair_stats: list[dict], details: dict, counts: dict, funnel: dict) -> list[dict]:
    """The funnel per crawl segment (the index is not split by segment: its step is null)."""
    segments: dict[str, dict] = {}
    for s in pair_stats:
        _add(
            segments,
            {_segment(s["uri"]): {"files": 1, **_pair_steps(stage_stats.unit_counts("ingest", s))}},
        )
    for f in details.get("ingest", {}).get("failed", []):
        _add(segments, {_segment(f["unit"]): {"files": 1}})
    _add(segments, counts["segments"])
    return [
        {
            "segment": name,
            "files": seg.get("files", 0),
            "funnel": {
                step: None if funnel[step] is None or step == "indexed" else seg.get(step, 0)
                for step, _ in stage_stats.FUNNEL
            },
        }
        for name, seg in sorted(segments.items())
    ]


def _domains(domains: dict[str, dict[str, int]], settings: ReportSettings) -> dict:
    rows = []
    for domain, status in domains.items():
        pairs, decoded = sum(status.values()), status.get(SUCCESS, 0)
        failures = sorted((-n, s) for s, n in status.items() if s != SUCCESS and n)
        rows.append(
            {
                "domain": domain,
                "pairs": pairs,
                "decoded": decoded,
                "failure_rate": (pairs - decoded) / pairs,
                "top_reason": failures[0][1] if failures else None,
            }
        )
    by_failure = [r for r in rows if r["pairs"] >= settings.min_domain_pairs]
    return {
        "by_pairs": sorted(rows, key=lambda r: (-r["pairs"], r["domain"]))[: settings.top_domains],
        "by_failure_rate": sorted(by_failure, key=lambda r: (-r["failure_rate"], -r["pairs"], r["domain"]))[
            : settings.top_domains
        ],
    }


def _samples(summaries: list[dict], settings: ReportSettings) -> list[dict]:
    """For each quantile, kept and rejected: the samples of the merged sample nearest that similarity quantile."""
    shown = []
    for kept in (True, False):
        pool = sorted(
            (s for summary in summaries for s in summary["samples"] if s["kept"] == kept),
            key=lambda s: (s["priority"], s["key"]),
        )[: max(1, settings.sample_reservoir // 2)]
        pool.sort(key=lambda s: (s["similarity"], s["key"]))
        for q in settings.quantiles if pool else ():
            target = pool[round(q * (len(pool) - 1))]["similarity"]
            nearest = sorted(pool, key=lambda s: (abs(s["similarity"] - target), s["key"]))
            shown += [
                {"quantile": q, **{k: s[k] for k in ("kept", "key", "url", "caption", "similarity", "tar")}}
                for s in sorted(nearest[: settings.thumbnails_per_quantile], key=lambda s: s["similarity"])
            ]
    return shown


def _distributions(counts: dict, summaries: list[dict]) -> dict:
    totals, hist = counts["totals"], counts["histograms"]
    thresholds = [s["threshold"] for s in summaries if s["threshold"] is not None]
    languages = [
        {"language": lang, "pairs": n.get("pairs", 0), "kept": n.get("kept", 0)}
        for lang, n in counts["languages"].items()
    ]
    return {
        "similarity": {
            "threshold": thresholds[0] if thresholds else None,
            "count": totals["embedded"],
            "mean": _fraction(totals["similarity_sum"], totals["embedded"]),
            "histogram": _hist_json("similarity", hist["similarity"]),
            "kept_histogram": _hist_json("kept_similarity", hist["kept_similarity"]),
            "rejected_histogram": _hist_json("rejected_similarity", hist["rejected_similarity"]),
        },
        "images": {"count": totals["images"], **{n: _hist_json(n, hist[n]) for n in ("width", "height", "aspect")}},
        "captions": {
            "count": totals["sent"],
            "mean_chars": _fraction(totals["caption_chars"], totals["sent"]),
            "length": _hist_json("caption", hist["caption"]),
            "kept_length": _hist_json("kept_caption", hist["kept_caption"]),
        },
        "languages": sorted(languages, key=lambda r: (-r["pairs"], -r["kept"], r["language"])),
        "nsfw": {
            tag: {
                "count": counts["nsfw"].get(tag, 0),
                "share": _fraction(counts["nsfw"].get(tag, 0), totals["embedded"]),
            }
            for tag in NSFW_TAGS
        },
    }


def _ground_truth(cells: dict[str, dict[str, int]], manifest: str, not_in_manifest: int) -> dict:
    """The similarity filter against the manifest's truth: confusion counts, precision, recall, accuracy."""
    cells = {case: {k: c.get(k, 0) for k in ("tp", "fp", "fn", "tn")} for case, c in cells.items()}
    tp, fp, fn, tn = (sum(c[k] for c in cells.values()) for k in ("tp", "fp", "fn", "tn"))
    return {
        "manifest": manifest,
        "samples": tp + fp + fn + tn,
        "true_matches": tp + fn,
        "passed": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": _fraction(tp, tp + fp),
        "recall": _fraction(tp, tp + fn),
        "accuracy": _fraction(tp + tn, tp + fp + fn + tn),
        "not_in_manifest": not_in_manifest,
        "by_alt_case": {
            case: {"samples": sum(c.values()), "accuracy": _fraction(c["tp"] + c["tn"], sum(c.values()))}
            for case, c in sorted(cells.items())
        },
    }


def build_stats(out: str, summaries: list[dict], settings: ReportSettings, ground_truth: str | None = None) -> dict:
    """stats.json (version 1): the shard summaries added up, with the per-file pairs stats, the stage summaries
    and the index's infos (images/ parquet is not read again)."""
    counts = _new_counts()
    for summary in summaries:
        _add(counts, summary["counts"])
    pair_stats = [_json(uri) for uri in layout.published_pairs_stats(layout.pairs_dir(out))]
    index = _optional_json(layout.index_infos(layout.index_dir(out)))
    details = _stages_detail(out, pair_stats, summaries, index, settings)
    if not details:
        raise InputError(
            f"no run in {out}: looked for the stats of pairs/, images/, dataset/ and index/ "
            "(a report is of the folder the stages wrote, their --out)"
        )
    funnel = _funnel_counts(details, counts, index)
    return {
        "version": VERSION,
        "out": out,
        "label": stage_stats.run_label(out),
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "stages": {stage: stage in details for stage in STAGES},
        "funnel": _funnel(funnel),
        "segments": _segments(pair_stats, details, counts, funnel),
        "rates": _rates(funnel, counts, details),
        "stages_detail": details,
        "domains": _domains(counts["domains"], settings),
        "blocklists": dict(sorted(counts["blocklists"].items(), key=lambda kv: (-kv[1], kv[0]))),
        **_distributions(counts, summaries),
        "samples": _samples(summaries, settings),
        "index": {
            "count": index["count"],
            **{m: {k: index[m][k] for k in INDEX_BRIEF if k in index[m]} for m in ("image", "text") if m in index},
            "near_duplicates": index.get("near_duplicates"),
        }
        if index
        else None,
        "ground_truth": _ground_truth(counts["ground_truth"], ground_truth, counts["totals"]["not_in_manifest"])
        if ground_truth
        else None,
        "gates": [],  # finish_report checks the gates before the file is written
    }


def report_shards(out: str) -> list[str]:
    """The stems of the published image shards."""
    return [layout.shard_stem(tar) for tar in layout.published_shards(layout.images_dir(out))]


def collect(out: str, settings: ReportSettings, ground_truth: str | None = None) -> dict:
    """stats.json's dict over OUT, serially (the flow maps shard_summary over the shards instead)."""
    return build_stats(
        out, [shard_summary(out, stem, settings, ground_truth) for stem in report_shards(out)], settings, ground_truth
    )


def write_stats(out: str, stats: dict) -> str:
    """Publish OUT/report/stats.json atomically; returns its URI."""
    uri = layout.report_stats(layout.report_dir(out))
    write_json(uri, stats)
    return uri


def finish_report(out: str, summaries: list[dict], settings: ReportSettings, ground_truth: str | None = None) -> dict:
    """Add the shard summaries up, check the quality gates, publish stats.json and index.html (also when a gate
    is crossed: the report is what shows why)."""
    # matplotlib is imported only where the page is drawn
    from clipcrawl.tasks.report.html import write_report

    stats = build_stats(out, summaries, settings, ground_truth)
    stats["gates"] = check_gates(stats["rates"], settings.gates)
    stats_uri = write_stats(out, stats)
    return {"stats": stats, "stats_uri": stats_uri, "report": write_report(out, stats)}


# Prefect wrappers: one task per image shard, one to finish. No result cache: a report describes the
# files as they are now, and reading them is cheap next to making them. Retried on transient errors only
# (the shards may lie in an object store).
report_shard_task = task(
    shard_summary,
    name="report_shard",
    task_run_name="report-{stem}",
    tags=["clipcrawl", "report"],
    **transient_retries(),
)
finish_report_task = task(finish_report, name="finish_report", tags=["clipcrawl", "report"], **transient_retries())
