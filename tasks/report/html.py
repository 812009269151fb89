"""The data-quality report page: a stats dict (stats.json version 1, tasks/report/stage.py) -> one HTML file.

The page holds everything it shows: inline CSS, plots as base64 PNG drawn by matplotlib's Agg canvas
(plain Figure objects, not pyplot, so rendering is safe in worker threads and leaves no global figure
behind), thumbnails as base64 data URIs. No JavaScript and no external URL: the file can be opened
from a bucket or mailed as it is. Every string that comes from the crawl (captions, URLs, domains,
error messages) goes through html.escape; a stage that did not run shows "not run".
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from clipcrawl.tasks.core.layout import report_dir, report_html
from clipcrawl.tasks.core.stats import top_reasons
from clipcrawl.tasks.core.uri import atomic_write
from clipcrawl.tasks.download.shard_reader import image_index, read_image

Thumbnail = Callable[[dict], "bytes | None"]
KEPT, REJECTED, NEUTRAL = "#2a9d8f", "#e76f51", "#4c72b0"
STAGES = ("ingest", "download", "embed", "index")
ASPECT_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10)
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;margin:0;background:#f4f5f7}
main{max-width:1320px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}
h2{font-size:19px;margin:0 0 10px;border-bottom:2px solid #d8dce1;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border-radius:6px;padding:14px 18px;margin:14px 0;box-shadow:0 1px 2px #0001}
section.empty{padding:8px 18px}
section.empty h2{display:inline;border:0;font-size:16px;margin-right:14px}
section.empty p{display:inline}
.meta{color:#59636e;margin:2px 0}
.meta code{font-size:13px}
nav a{display:inline-block;margin-right:14px;color:#2b5a9c;text-decoration:none;font-size:13px;white-space:nowrap}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{overflow-wrap:anywhere;max-width:520px}
tr:nth-child(even) td{background:#fafbfc}
.na{color:#9aa3ad}
.not-run{color:#6b7580;font-style:italic}
.note{color:#59636e;font-size:13px;margin:4px 0}
.badge{display:inline-block;border-radius:4px;padding:3px 9px;margin:3px 6px 3px 0;font-size:13px;font-weight:600;
color:#fff}
.pass{background:#2e8b57}
.fail{background:#c0392b}
.warn{background:#d68910}
.off{background:#8a939c}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
img.plot{max-width:100%;height:auto}
.bar{background:#e3e6ea;width:140px;height:10px;border-radius:2px}
.bar div{background:#4c72b0;height:10px;border-radius:2px}
.big{display:inline-block;font-size:24px;font-weight:600;margin-right:32px}
.big small{display:block;font-size:12px;color:#59636e;font-weight:400}
.quantiles{display:flex;flex-wrap:wrap;gap:10px 28px}
.quantile{border-top:1px solid #e3e6ea;padding-top:6px}
.quantile h3{margin:0 0 4px}
.cards{display:flex;gap:8px}
.group{display:flex;flex-direction:column;gap:2px}
.group+.group{border-left:1px dashed #c5cbd2;padding-left:10px}
.group b{font-size:12px}
.card{width:136px;font-size:12px}
.card img,.card .missing{display:block;width:132px;height:132px;object-fit:contain;background:#eef1f4;
border:2px solid #ccc}
.card.kept img{border-color:#2a9d8f}
.card.rejected img{border-color:#e76f51}
.card .missing{display:flex;align-items:center;justify-content:center;color:#9aa3ad}
.card .sim{font-weight:600;font-variant-numeric:tabular-nums}
.card .host{color:#6b7580;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.card p{margin:3px 0 0;overflow:hidden;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical}
"""


class Raw(str):
    """HTML made by this module (never crawl text): table() passes it through unescaped."""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def pct(fraction: float | None, digits: int = 1) -> str | None:
    return None if fraction is None else f"{100 * fraction:.{digits}f}%"


def num(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def secs(value: float | None) -> str | None:
    return None if value is None else f"{value:.{3 if value < 1 else 2 if value < 10 else 1}f}"


def not_run(what: str) -> Raw:
    return Raw(f'<p class="not-run">{esc(what)}</p>')


def absent(stats: dict, stage: str, what: str) -> Raw:
    """Nothing to show: the stage did not run, or it ran and made nothing of this."""
    return not_run(f"{stage} not run" if not stats["stages"].get(stage) else f"no {what}")


def bar(fraction: float | None) -> Raw:
    width = 0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    return Raw(f'<div class="bar"><div style="width:{width:.1f}%"></div></div>')


def table(head: list[str], rows: Iterable[list], align: str = "") -> Raw:
    """align: one letter per column, "r" right-aligns (numbers), "w" wraps long text, else left."""
    cls = [{"r": ' class="r"', "w": ' class="wrap"'}.get(a, "") for a in align.ljust(len(head))]
    out = ["<table><tr>" + "".join(f"<th{c}>{esc(h)}</th>" for c, h in zip(cls, head)) + "</tr>"]
    for row in rows:
        cells = (v if isinstance(v, Raw) else '<span class="na">–</span>' if v is None else esc(v) for v in row)
        out.append("<tr>" + "".join(f"<td{c}>{v}</td>" for c, v in zip(cls, cells)) + "</tr>")
    return Raw("".join(out) + "</table>")


def figure(width: float, height: float, ncols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
    return fig, axes


def plot(fig: Figure, alt: str) -> Raw:
    """A figure as an inline PNG; the figure is cleared so nothing holds its artists."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fig.clear()
    data = base64.b64encode(buf.getvalue()).decode()
    return Raw(f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def bars(ax, hist: dict, color: str, label: str | None = None, bottom=None, alpha: float = 1.0) -> None:
    edges, counts = hist["edges"], hist["counts"]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(
        edges[:-1],
        counts,
        width=widths,
        align="edge",
        color=color,
        label=label,
        bottom=bottom,
        alpha=alpha,
        edgecolor="white",
        linewidth=0.4,
    )


def span(ax, hist: dict, label: str) -> None:
    """Show the histogram's non-empty bins (and one each side); its last bin also counts the values past it."""
    edges, used = hist["edges"], [i for i, n in enumerate(hist["counts"]) if n]
    if used:
        ax.set_xlim(edges[max(used[0] - 1, 0)], edges[min(used[-1] + 2, len(edges) - 1)])
    ax.set_xlabel(label + (f" (last bin: ≥ {edges[-2]:g})" if used and used[-1] == len(edges) - 2 else ""))


def hbar(labels: list[str], values: list[float], notes: list[str], color: str, width: float, xlabel: str) -> Figure:
    """Horizontal bars, first on top, each with its note at its end."""
    fig, (ax,) = figure(width, 0.3 * len(labels) + 0.9)
    ax.barh(range(len(labels)), values, color=color)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, max([*values, 1]) * (1.1 + 0.012 * max(len(n) for n in notes)))
    for y, (value, text) in enumerate(zip(values, notes)):
        ax.annotate(text, (value, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8.5)
    return fig


def note(content: str) -> str:
    """A grey line of explanation; content is HTML made here (crawl text escaped by the caller)."""
    return f'<p class="note">{content}</p>'


def section(key: str, title: str, content: str) -> str:
    empty = ' class="empty"' if content.startswith('<p class="not-run">') else ""  # a stage not run: one line
    return f'<section id="{key}"{empty}><h2>{esc(title)}</h2>{content}</section>'


# --- sections ------------------------------------------------------------------------------------------


def header(stats: dict) -> str:
    ran = " ".join(
        f'<span class="badge {"pass" if stats["stages"].get(s) else "off"}">{s}'
        f"{'' if stats['stages'].get(s) else ': not run'}</span>"
        for s in STAGES
    )
    gates = stats.get("gates") or []
    crossed = [g["action"] for g in gates if not g["passed"]]
    summary = "; ".join(
        [
            f"{len(gates) - len(crossed)} of {len(gates)} quality gates passed",
            *([f"{crossed.count('fail')} failed: the run fails"] if "fail" in crossed else []),
            *([f"{crossed.count('warn')} crossed with a warning"] if "warn" in crossed else []),
        ]
    )
    summary = summary if gates else "no quality gates checked"
    badges = "".join(gate_badge(g) for g in gates)
    return (
        f"<h1>clipcrawl data-quality report: {esc(stats['label'])}</h1>"
        f'<p class="meta">output <code>{esc(stats["out"])}</code> · generated {esc(stats["generated_at"])}</p>'
        f'<p class="meta">stages: {ran}</p><section id="gates"><h2>Quality gates</h2>'
        f"{note(summary)}{badges}</section>"
    )


def gate_badge(gate: dict) -> str:
    state = "pass" if gate["passed"] else ("fail" if gate["action"] == "fail" else "warn")
    sign = "≥" if gate["gate"].startswith("min_") else "≤"
    mark = {"pass": "✓", "fail": "✗ FAILED", "warn": "! warning"}[state]
    return (
        f'<span class="badge {state}" title="{esc(gate.get("message"))}">{mark} {esc(gate["gate"])}: '
        f"{pct(gate['value'])} (want {sign} {pct(gate['threshold'])})</span>"
    )


def funnel(stats: dict) -> str:
    steps = stats["funnel"]
    counts = {s["step"]: s["count"] for s in steps}
    rows = [
        [
            s["step"],
            s["description"],
            "not run" if s["count"] is None else s["count"],
            pct(s["of_previous"]),
            pct(s["of_first"]),
        ]
        for s in steps
    ]
    notes = ["not run" if s["count"] is None else f"{s['count']}  ({pct(s['of_first'])} of extracted)" for s in steps]
    fig = hbar(list(counts), [n or 0 for n in counts.values()], notes, NEUTRAL, 9.5, "samples (pairs before download)")
    marked = (counts.get("indexed") or 0) > (counts.get("near_duplicates_removed") or counts.get("indexed") or 0)
    why = (
        note(
            "indexed can exceed near_duplicates_removed: near-duplicates are marked, not dropped, so the index"
            " holds every CLIP-passed sample"
        )
        if marked
        else ""
    )
    return (
        table(["step", "what it counts", "count", "% of previous", "% of extracted"], rows, "lwrrr")
        + why
        + plot(fig, "funnel: " + ", ".join(f"{k} {v}" for k, v in zip(counts, notes)))
    )


def segments(stats: dict) -> str:
    rows, steps = stats.get("segments") or [], [s["step"] for s in stats["funnel"]]
    if not rows:
        return absent(stats, "ingest", "crawl segments")
    return table(
        ["segment", "files", *steps],
        ([r["segment"], r["files"], *(r["funnel"].get(s) for s in steps)] for r in rows),
        "lr" + "r" * len(steps),
    )


def failures(stats: dict) -> str:
    parts, failed = [], []
    for stage in STAGES[:3]:
        detail = (stats.get("stages_detail") or {}).get(stage)
        if not detail:
            parts.append(f"<div><h3>{stage}</h3>{not_run('not run')}</div>")
            continue
        failed += [[stage, f["unit"], f["error"]] for f in detail["failed"]]
        reasons = sorted(((k, v) for k, v in detail["reasons"].items() if v), key=lambda kv: -kv[1])[:14]
        title = f"<h3>{stage}: {detail['in'] - detail['out']} of {detail['in']} dropped</h3>"
        if not reasons:
            parts.append(f"<div>{title}{note('no items dropped or failed')}</div>")
            continue
        fig = hbar(
            [k for k, _ in reasons],
            [v for _, v in reasons],
            [str(v) for _, v in reasons],
            REJECTED,
            3.9,
            f"items (of {detail['in']} in)",
        )
        alt = f"{stage} drop and failure reasons: {top_reasons(detail['reasons'], len(reasons))}"
        parts.append(f"<div>{title}{plot(fig, alt)}</div>")
    units = table(["stage", "failed unit", "error"], failed, "lww") if failed else note("none failed outright")
    return f'<div class="row">{"".join(parts)}</div><h3>Failed files and shards</h3>{units}{crawl_records(stats)}'


def crawl_records(stats: dict) -> str:
    """What became of the crawl files' records: malformed, over max_record_bytes, files left partial."""
    found = ((stats.get("stages_detail") or {}).get("ingest") or {}).get("records")
    if not found:
        return ""
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(found["skipped"].items())) or "none"
    summary = note(
        f"{found['records']} records read: {found['html_pages']} HTML pages ({found['truncated_pages']} cut at "
        f"max_record_bytes), {found['malformed_records']} malformed, skipped: {skipped}"
    )
    rows = [["partial", p["uri"], p["error"]] for p in found["partial"]]
    rows += [["malformed record", m["uri"], m["error"]] for m in found["malformed_examples"]]
    listing = table(["what", "file", "where and why"], rows, "lww") if rows else note("no damaged file or record")
    return f"<h3>Crawl records</h3>{summary}{listing}"


def domains(stats: dict) -> str:
    found = stats.get("domains")
    if not found or not found.get("by_pairs"):
        return absent(stats, "download", "domains")
    head = ["domain", "pairs", "decoded", "failure rate", "top failure"]

    def rows(items):
        return ([d["domain"], d["pairs"], d["decoded"], pct(d["failure_rate"]), d["top_reason"]] for d in items)

    worst = found.get("by_failure_rate") or []
    worst_table = table(head, rows(worst), "wrrrl") if worst else note("no domain has enough pairs to rank")
    return (
        f'<div class="row"><div><h3>Most pairs</h3>{table(head, rows(found["by_pairs"]), "wrrrl")}</div>'
        f"<div><h3>Highest failure rate</h3>{worst_table}</div></div>"
    )


def similarity(stats: dict) -> str:
    sim = stats.get("similarity")
    if not sim or not sim.get("count"):
        return absent(stats, "embed", "embedded samples")
    threshold, kept = sim["threshold"], sum(sim["kept_histogram"]["counts"])
    fig, (ax,) = figure(10, 3.4)
    bars(ax, sim["rejected_histogram"], REJECTED, f"rejected ({sim['count'] - kept})")
    bars(ax, sim["kept_histogram"], KEPT, f"kept ({kept})", bottom=sim["rejected_histogram"]["counts"])
    ax.axvline(threshold, color="#222", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="CLIP similarity of image and caption (cosine)", ylabel="samples", xlim=(-1, 1))
    ax.legend(frameon=False)
    share = pct(kept / sim["count"]) if sim["count"] else None
    return note(
        f"{sim['count']} embedded samples, mean similarity {sim['mean']:.3f}; {kept} at or over the "
        f"threshold {threshold:.2f} ({share})"
    ) + plot(fig, "similarity histogram, kept and rejected")


def images(stats: dict) -> str:
    found = stats.get("images")
    if not found or not found.get("count"):
        return absent(stats, "download", "decoded images")
    fig, axes = figure(12.5, 2.9, 3)
    for ax, key in zip(axes, ("width", "height", "aspect")):
        bars(ax, found[key], NEUTRAL)
    span(axes[0], found["width"], "width (px, original)")
    span(axes[1], found["height"], "height (px, original)")
    axes[2].set_xlabel("aspect ratio (width / height)")
    axes[0].set_ylabel("images")
    axes[2].set_xscale("log")
    axes[2].set_xticks(ASPECT_TICKS, [f"{t:g}" for t in ASPECT_TICKS])
    axes[2].minorticks_off()
    axes[2].axvline(1, color="#222", linewidth=0.8, linestyle=":")
    return note(f"{found['count']} decoded images") + plot(fig, "image width, height and aspect histograms")


def captions(stats: dict) -> str:
    found = stats.get("captions")
    if not found or not found.get("count"):
        return absent(stats, "download", "captions sent to download")
    fig, (ax,) = figure(8, 2.9)
    bars(ax, found["length"], NEUTRAL, "sent to download")
    if found.get("kept_length"):
        bars(ax, found["kept_length"], KEPT, "kept in the dataset", alpha=0.85)
    span(ax, found["length"], "caption length (characters)")
    ax.set_ylabel("captions")
    ax.legend(frameon=False)
    return note(f"{found['count']} captions, mean {found['mean_chars']:.1f} characters") + plot(
        fig, "caption length histogram, sent to download and kept"
    )


def languages(stats: dict) -> str:
    found = stats.get("languages")
    if not found:
        return absent(stats, "download", "languages")
    total = sum(r["pairs"] for r in found) or 1
    rows = (
        [
            r["language"],
            r["pairs"],
            pct(r["pairs"] / total),
            bar(r["pairs"] / total),
            r["kept"],
            pct(r["kept"] / r["pairs"] if r["pairs"] else None),
        ]
        for r in found[:25]
    )
    return table(["language", "pairs", "share", "", "kept", "% kept"], rows, "lrrlrr")


def blocklists(stats: dict) -> str:
    """Samples per known-bad list: counts and list names only, never an image, URL or caption."""
    found = stats.get("blocklists") or {}
    if not found:
        return absent(stats, "download", "sample on a blocklist (or no list configured)")
    total = sum(found.values())
    rows = ([name, n, pct(n / total)] for name, n in found.items())
    listed = note(f"{total} samples matched a list; nothing of them was written (status blocklisted)")
    return listed + table(["list", "samples", "share"], rows, "lrr")


def nsfw(stats: dict) -> str:
    found = stats.get("nsfw")
    if not found or not any(v["count"] for v in found.values()):
        return absent(stats, "embed", "embedded samples")
    rows = ([tag, v["count"], pct(v["share"]), bar(v["share"])] for tag, v in found.items())
    return table(["tag", "samples", "share", ""], rows, "lrrl")


def samples(stats: dict, thumbnail: Thumbnail) -> str:
    shown = stats.get("samples") or []
    if not shown:
        return absent(stats, "embed", "samples")
    blocks = []
    for q in sorted({s["quantile"] for s in shown}):
        groups = "".join(
            f'<div class="group"><b>{label}</b>'
            f"{cards([s for s in shown if s['quantile'] == q and s['kept'] == kept], thumbnail)}</div>"
            for kept, label in ((True, "kept"), (False, "rejected"))
        )
        blocks.append(f'<div class="quantile"><h3>quantile {pct(q, 0)}</h3><div class="cards">{groups}</div></div>')
    threshold = num((stats.get("similarity") or {}).get("threshold"), 2)
    return (
        note(
            f"for each similarity quantile, the samples nearest it among the kept (similarity ≥ {threshold}, "
            "green frame) and among the rejected (red frame); hover a card for its URL"
        )
        + f'<div class="quantiles">{"".join(blocks)}</div>'
    )


def cards(items: list[dict], thumbnail: Thumbnail) -> str:
    if not items:
        return '<span class="na">none</span>'
    out = []
    for s in items:
        data = thumbnail(s)
        img = (
            f'<img alt="{esc(s["key"])}" src="data:{mime(data)};base64,{base64.b64encode(data).decode()}">'
            if data
            else '<div class="missing">no image</div>'
        )
        out.append(
            f'<div class="card {"kept" if s["kept"] else "rejected"}" title="{esc(s["url"])}">{img}'
            f'<div class="sim">similarity {s["similarity"]:.3f}</div>'
            f'<div class="host">{esc(urlsplit(s["url"] or "").hostname)}</div><p>{esc(s["caption"])}</p></div>'
        )
    return '<div class="cards">' + "".join(out) + "</div>"


def mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def timings(stats: dict) -> str:
    details = stats.get("stages_detail") or {}
    rows = [
        [stage, "not run", *[None] * 6]
        if not (d := details.get(stage))
        else [
            stage,
            d["units"],
            len(d["failed"]),
            d["in"],
            d["out"],
            secs(d["task_seconds"]),
            secs(d.get("wall_seconds")),
            num(d.get("items_per_s"), 1),
        ]
        for stage in STAGES
    ]
    slow = "".join(
        f"<div><h3>Slowest {stage} units</h3>"
        + table(
            ["unit", "seconds", "in", "out"],
            ([u["unit"], secs(u["seconds"]), u["in"], u["out"]] for u in details[stage]["slowest"]),
            "wrrr",
        )
        + "</div>"
        for stage in STAGES
        if (details.get(stage) or {}).get("slowest")
    )
    head = ["stage", "units", "failed", "in", "out", "task seconds (sum)", "wall seconds", "items/s"]
    return (
        table(head, rows, "lrrrrrrr")
        + note("task seconds add up the work of every file or shard; wall seconds are the flow's elapsed time")
        + f'<div class="row">{slow}</div>'
    )


def index(stats: dict) -> str:
    found = stats.get("index")
    if not found:
        return absent(stats, "index", "index")
    rows = []
    for modality in ("image", "text"):
        m = found.get(modality) or {}
        memory = m["memory_bytes"] / 2**20 if m.get("memory_bytes") else None
        rows.append(
            [
                modality,
                m.get("index_key"),
                m.get("params") or None,
                m.get("vectors"),
                pct(m.get("recall_at_k")),
                m.get("k"),
                num(m.get("p50_ms")),
                num(m.get("p99_ms")),
                secs(m.get("build_s")),
                num(memory, 2),
            ]
        )
    near = found.get("near_duplicates")
    text = "near-duplicates not searched"
    if near:
        fate = f"dropped {near['dropped_rows']} rows from the dataset" if near.get("dropped") else "marked, not dropped"
        text = (
            f"near-duplicates (cosine ≥ {near['threshold']}): {near['duplicates']} samples in {near['groups']}"
            f" groups; {fate}"
        )
    head = ["modality", "index key", "params", "vectors", "recall@k", "k", "p50 ms", "p99 ms", "build s", "memory MiB"]
    return note(f"{found['count']} vectors") + table(head, rows, "lllrrrrrrr") + note(text)


def ground_truth(stats: dict) -> str:
    gt = stats.get("ground_truth")
    if not gt:
        return not_run("no ground truth given (pass a manifest pairs.parquet to measure the CLIP filter)")
    big = "".join(
        f'<span class="big">{pct(gt[k])}<small>{k}</small></span>' for k in ("precision", "recall", "accuracy")
    )
    matrix = table(
        ["truth \\ filter", "passed", "rejected"],
        [["caption matches the image", gt["tp"], gt["fn"]], ["caption does not match", gt["fp"], gt["tn"]]],
        "lrr",
    )
    cases = table(
        ["alt-text case", "samples", "accuracy"],
        ([case, v["samples"], pct(v["accuracy"])] for case, v in sorted(gt.get("by_alt_case", {}).items())),
        "lrr",
    )
    return (
        note(
            f"{gt['samples']} samples of the manifest <code>{esc(gt['manifest'])}</code>: {gt['true_matches']}"
            f" truly match, {gt['passed']} passed the filter"
        )
        + f'<p>{big}</p><div class="row"><div>{matrix}</div><div>{cases}</div></div>'
    )


def render(stats: dict, thumbnail: Thumbnail) -> str:
    """The self-contained report page of a stats dict; thumbnail(sample) gives image bytes or None."""
    sections = (
        ("funnel", "Funnel", funnel(stats)),
        ("segments", "Funnel per crawl segment", segments(stats)),
        ("failures", "Drop and failure reasons per stage", failures(stats)),
        ("domains", "Domains", domains(stats)),
        ("blocklists", "Blocklists", blocklists(stats)),
        ("similarity", "CLIP similarity", similarity(stats)),
        ("images", "Image sizes", images(stats)),
        ("captions", "Caption length", captions(stats)),
        ("languages", "Languages", languages(stats)),
        ("nsfw", "NSFW tags of embedded samples", nsfw(stats)),
        ("samples", "Samples by similarity", samples(stats, thumbnail)),
        ("timings", "Timings and throughput", timings(stats)),
        ("index", "Index", index(stats)),
        ("ground-truth", "Filter vs ground truth", ground_truth(stats)),
    )
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections)
    page = header(stats) + f"<nav>{nav}</nav>" + "".join(section(*s) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>clipcrawl report: '
        f"{esc(stats['label'])}</title><style>{CSS}</style></head><body><main>{page}</main></body></html>\n"
    )


def tar_thumbnails(max_side: int = 160) -> Thumbnail:
    """thumbnail(sample): sample["key"] read from the shard sample["tar"] (a tar, a folder of files or a parquet
    with the image bytes), as a JPEG of at most max_side pixels a side; None when the shard, the image or its
    bytes are missing or unreadable."""
    members: dict[str, dict] = {}  # per tar, read once

    def thumbnail(sample: dict) -> bytes | None:
        tar = sample.get("tar")
        if not tar:
            return None
        if tar not in members:
            try:
                members[tar] = image_index(tar)
            except OSError:
                members[tar] = {}
        member = members[tar].get(sample["key"])
        if member is None:
            return None
        try:
            with Image.open(io.BytesIO(read_image(tar, sample["key"], member))) as image:
                image = image.convert("RGB")
                image.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=80)
                return buf.getvalue()
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    return thumbnail


def write_report(out: str, stats: dict) -> str:
    """OUT/report/index.html (published atomically); returns its URI."""
    uri = report_html(report_dir(out))
    page = render(stats, tar_thumbnails())
    with atomic_write(uri, "wb") as f:
        f.write(page.encode("utf-8"))
    return uri
