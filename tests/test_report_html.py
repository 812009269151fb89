"""tasks/report/html.py: the report page of a stats dict (stats.json version 1), its escaping, its
thumbnails from a real shard tar, and the page as headless Chromium draws it."""

from __future__ import annotations

import html
import io
import itertools
import math
import re
import struct
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from clipcrawl.tasks.core.stats import FUNNEL
from clipcrawl.tasks.report.html import render, tar_thumbnails, write_report
from tests.helpers import keep_screenshot, run_chromium

SCRIPT_CAPTION = "<script>alert('x')</script> a red & blue \"circle\""


def hist(edges: list[float], weight, total: int) -> dict:
    """A histogram over `edges` of `total` items, shaped like weight(bin centre)."""
    weights = [max(0.0, weight((a + b) / 2)) for a, b in itertools.pairwise(edges)]
    counts = [int(total * w / sum(weights)) for w in weights]
    counts[weights.index(max(weights))] += total - sum(counts)
    return {"edges": edges, "counts": counts}


def linear(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def make_stats(tar: str | None = None) -> dict:
    """A realistic stats.json: every stage ran, numbers shaped like the demo crawl's."""
    counts = [1146, 1001, 915, 779, 728, 575, 414, 575]
    funnel = []
    for i, ((step, description), count) in enumerate(zip(FUNNEL, counts)):
        funnel.append(
            {
                "step": step,
                "description": description,
                "count": count,
                "of_previous": None if i == 0 else count / counts[i - 1],
                "of_first": count / counts[0],
            }
        )
    sim_edges = linear(-1, 1, 40)
    rejected = hist(sim_edges, lambda c: math.exp(-(((c + 0.3) / 0.25) ** 2)) if c < 0.3 else 0, 153)
    kept = hist(sim_edges, lambda c: math.exp(-(((c - 0.45) / 0.07) ** 2)) if c >= 0.3 else 0, 575)
    both = {"edges": sim_edges, "counts": [a + b for a, b in zip(rejected["counts"], kept["counts"])]}
    aspect_edges = [10 ** (-1 + 2 * i / 30) for i in range(31)]
    samples = []
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        for n in range(2):
            samples.append(
                {
                    "quantile": q,
                    "kept": True,
                    "key": f"00000{int(q * 100):02d}{n}",
                    "similarity": 0.3 + 0.3 * q + 0.001 * n,
                    "url": f"https://img.site-{n}.world.test/{q}.jpg",
                    "caption": f"{n + 1} large yellow hexagons on a black background",
                    "tar": tar,
                }
            )
            samples.append(
                {
                    "quantile": q,
                    "kept": False,
                    "key": f"00001{int(q * 100):02d}{n}",
                    "similarity": -0.7 + q - 0.001 * n,
                    "url": f"http://img.site-{n}.world.test/r{q}.png",
                    "caption": "click here to buy the best cheap shoes online today" * (1 + n),
                    "tar": tar,
                }
            )
    slowest = [
        {
            "unit": f"CC-MAIN-2099032300{i}000-2099032303{i}000-0000{i}",
            "seconds": 0.09 - 0.01 * i,
            "in": 299 - i * 10,
            "out": 259 - i * 9,
        }
        for i in range(4)
    ]
    domains = [
        {
            "domain": f"img.site-{i}.world.test",
            "pairs": 180 - 15 * i,
            "decoded": 150 - 20 * i,
            "failure_rate": (30 + 5 * i) / (180 - 15 * i),
            "top_reason": "http_4xx",
        }
        for i in range(8)
    ]
    return {
        "version": 1,
        "out": "/data/out/CC-MAIN-2099-13",
        "label": "CC-MAIN-2099-13",
        "generated_at": "2099-03-24T10:00:00+00:00",
        "stages": {"ingest": True, "download": True, "embed": True, "index": True},
        "funnel": funnel,
        "segments": [
            {
                "segment": f"4077907{200000 + 300 * i}.0",
                "files": 2,
                "funnel": {s["step"]: s["count"] // 2 + i for s in funnel},
            }
            for i in range(2)
        ],
        "rates": {
            "download_success_rate": 728 / 915,
            "clip_pass_rate": 575 / 728,
            "duplicate_rate": 86 / 1001,
            "near_duplicate_rate": 161 / 575,
            "failed_file_share": 0.0,
        },
        "stages_detail": {
            "ingest": {
                "units": 4,
                "failed": [],
                "in": 1146,
                "out": 915,
                "task_seconds": 0.31,
                "wall_seconds": 3.2,
                "items_per_s": 2951.6,
                "slowest": slowest,
                "reasons": {
                    "alt_too_long": 5,
                    "alt_too_short": 67,
                    "duplicate": 86,
                    "invalid_url": 23,
                    "unsupported_scheme": 50,
                },
            },
            "download": {
                "units": 2,
                "in": 915,
                "out": 728,
                "task_seconds": 42.4,
                "wall_seconds": 45.0,
                "items_per_s": 17.2,
                "slowest": [{"unit": "00000", "seconds": 42.4, "in": 915, "out": 728}],
                "failed": [{"unit": "00001", "error": "OSError: <b>disk</b> full on /tmp/x"}],
                "reasons": {
                    "http_4xx": 22,
                    "too_large": 23,
                    "timeout": 20,
                    "not_an_image": 18,
                    "too_small_bytes": 19,
                    "opt_out_header": 21,
                    "connection_error": 10,
                    "too_many_redirects": 9,
                    "http_5xx": 8,
                    "blocked_address": 8,
                    "robots_disallowed": 8,
                    "dns_error": 7,
                    "decode_error": 7,
                    "too_many_pixels": 7,
                },
            },
            "embed": {
                "units": 1,
                "failed": [],
                "in": 728,
                "out": 575,
                "task_seconds": 4.34,
                "wall_seconds": 9.1,
                "items_per_s": 132.5,
                "reasons": {"below_threshold": 153, "dropped_nsfw": 0, "missing_image": 0},
                "slowest": [{"unit": "00000", "seconds": 4.34, "in": 728, "out": 575}],
            },
            "index": {
                "units": 1,
                "failed": [],
                "in": 575,
                "out": 575,
                "task_seconds": 0.07,
                "wall_seconds": None,
                "items_per_s": 8214.3,
                "reasons": {},
                "slowest": [],
            },
        },
        "domains": {"by_pairs": domains, "by_failure_rate": sorted(domains, key=lambda d: -d["failure_rate"])[:5]},
        "similarity": {
            "threshold": 0.3,
            "count": sum(both["counts"]),
            "mean": 0.322,
            "histogram": both,
            "kept_histogram": kept,
            "rejected_histogram": rejected,
        },
        "images": {
            "count": 728,
            "width": hist(linear(0, 1200, 24), lambda c: math.exp(-(((c - 300) / 120) ** 2)), 728),
            "height": hist(linear(0, 1200, 24), lambda c: math.exp(-(((c - 280) / 140) ** 2)), 728),
            "aspect": hist(aspect_edges, lambda c: math.exp(-((math.log(c) / 0.3) ** 2)), 728),
        },
        "captions": {
            "count": 915,
            "mean_chars": 41.3,
            "length": hist(linear(0, 200, 40), lambda c: math.exp(-(((c - 40) / 15) ** 2)), 915),
            "kept_length": hist(linear(0, 200, 40), lambda c: math.exp(-(((c - 40) / 12) ** 2)), 575),
        },
        "languages": [
            {"language": "en", "pairs": 700, "kept": 520},
            {"language": "de", "pairs": 120, "kept": 40},
            {"language": "unknown", "pairs": 95, "kept": 15},
        ],
        "nsfw": {
            "NSFW": {"count": 45, "share": 45 / 728},
            "UNSURE": {"count": 103, "share": 103 / 728},
            "UNLIKELY": {"count": 580, "share": 580 / 728},
        },
        "samples": samples,
        "index": {
            "count": 575,
            "image": {
                "index_key": "Flat",
                "params": "",
                "vectors": 575,
                "memory_bytes": 147200,
                "k": 10,
                "recall_at_k": 1.0,
                "p50_ms": 0.0116,
                "p99_ms": 0.0579,
                "build_s": 0.066,
            },
            "text": {
                "index_key": "IVF16,Flat",
                "params": "nprobe=4",
                "vectors": 575,
                "memory_bytes": 151000,
                "k": 10,
                "recall_at_k": 0.984,
                "p50_ms": 0.013,
                "p99_ms": 0.0181,
                "build_s": 0.001,
            },
            "near_duplicates": {
                "threshold": 0.995,
                "duplicates": 307,
                "groups": 146,
                "dropped": False,
                "dropped_rows": 0,
            },
        },
        "ground_truth": {
            "manifest": "/data/world/manifest/pairs.parquet",
            "samples": 728,
            "true_matches": 590,
            "passed": 575,
            "tp": 560,
            "fp": 15,
            "fn": 30,
            "tn": 123,
            "precision": 560 / 575,
            "recall": 560 / 590,
            "accuracy": 683 / 728,
            "by_alt_case": {
                "matching": {"samples": 590, "accuracy": 0.95},
                "unrelated": {"samples": 138, "accuracy": 0.89},
            },
        },
        "gates": [
            {
                "gate": "min_download_success_rate",
                "rate": "download_success_rate",
                "value": 728 / 915,
                "threshold": 0.3,
                "action": "fail",
                "passed": True,
                "message": "quality gate ... at or over",
            },
            {
                "gate": "max_near_duplicate_rate",
                "rate": "near_duplicate_rate",
                "value": 0.28,
                "threshold": 0.2,
                "action": "warn",
                "passed": False,
                "message": "quality gate max_near_duplicate_rate ... (warning)",
            },
            {
                "gate": "max_failed_file_share",
                "rate": "failed_file_share",
                "value": 0.5,
                "threshold": 0.05,
                "action": "fail",
                "passed": False,
                "message": "quality gate max_failed_file_share ... (run failed)",
            },
        ],
    }


def pairs_only(stats: dict) -> dict:
    """What a report over pairs/ alone holds: the later stages null, or empty (count 0)."""
    funnel = [
        dict(s, count=None, of_previous=None, of_first=None) if i >= 3 else s for i, s in enumerate(stats["funnel"])
    ]
    later = {s["step"] for s in funnel if s["count"] is None}
    segments = [
        dict(s, funnel={k: None if k in later else v for k, v in s["funnel"].items()}) for s in stats["segments"]
    ]
    empty = {"edges": [-1.0, 0.0, 1.0], "counts": [0, 0]}
    return dict(
        stats,
        stages={"ingest": True, "download": False, "embed": False, "index": False},
        funnel=funnel,
        segments=segments,
        stages_detail={"ingest": stats["stages_detail"]["ingest"]},
        rates=dict.fromkeys(stats["rates"]),
        domains={"by_pairs": [], "by_failure_rate": []},
        similarity={
            "threshold": None,
            "count": 0,
            "mean": None,
            "histogram": empty,
            "kept_histogram": empty,
            "rejected_histogram": empty,
        },
        images={"count": 0, "width": empty, "height": empty, "aspect": empty},
        captions=None,
        languages=[],
        nsfw={tag: {"count": 0, "share": None} for tag in ("NSFW", "UNSURE", "UNLIKELY")},
        samples=[],
        index=None,
        ground_truth=None,
        gates=[],
    )


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (400, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def shard_tar(tmp_path) -> str:
    """A shard tar in the downloader's layout: {key}.jpg/.txt per sample, plus one undecodable image."""
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for key, data in [("000000000", jpeg((220, 30, 30))), ("000000000", b"caption"), ("000000001", b"not jpeg")]:
            ext = "txt" if data == b"caption" else "jpg"
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def no_thumbnail(sample):
    return None


def text_of(page: str) -> str:
    """The page's visible text, roughly: tags out, entities decoded, spaces collapsed."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


# --- the page's content ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page() -> str:
    """The page of the full stats, without thumbnails (rendering takes a second: once per module)."""
    return render(make_stats(), no_thumbnail)


def test_every_section_is_on_the_page(page):
    assert page.startswith("<!DOCTYPE html>") and "<html" in page
    for key in (
        "gates",
        "funnel",
        "segments",
        "failures",
        "domains",
        "similarity",
        "images",
        "captions",
        "languages",
        "nsfw",
        "samples",
        "timings",
        "index",
        "ground-truth",
    ):
        assert f'<section id="{key}"' in page, key
    text = text_of(page)
    assert "clipcrawl data-quality report: CC-MAIN-2099-13" in text
    assert "img.site-3.world.test" in text and "http_4xx" in text
    assert "embed drop and failure reasons: below_threshold 153" in page  # the plots' alt text
    assert "97.4% precision 94.9% recall 93.8% accuracy" in text  # 560/575, 560/590, 683/728


def test_funnel_counts_and_percentages_are_shown(page):
    text = text_of(page)
    # extracted 1146 -> text_filtered 1001 (87.3% of previous) ... clip_passed 575 (50.2% of extracted)
    assert re.search(r"extracted .*? 1146 ", text)
    assert re.search(r"text_filtered .*? 1001 87\.3% 87\.3%", text)
    assert re.search(r"decoded .*? 728 93\.5% 63\.5%", text)
    assert re.search(r"clip_passed .*? 575 79\.0% 50\.2%", text)
    assert "728 embedded samples, mean similarity 0.322; 575 at or over the threshold 0.30 (79.0%)" in text


def test_gates_are_badges_coloured_by_outcome(page):
    badges = re.findall(r'<span class="badge (\w+)"[^>]*>([^<]*)</span>', page)
    by_gate = {re.search(r"(m\w+_\w+):", t).group(1): cls for cls, t in badges if ":" in t and "_" in t}
    assert by_gate == {
        "min_download_success_rate": "pass",
        "max_near_duplicate_rate": "warn",
        "max_failed_file_share": "fail",
    }
    assert "1 of 3 quality gates passed; 1 failed: the run fails; 1 crossed with a warning" in text_of(page)
    assert "79.6% (want ≥ 30.0%)" in text_of(page)


def test_crawl_text_is_escaped():
    stats = make_stats()
    stats["samples"][0]["caption"] = SCRIPT_CAPTION
    stats["samples"][0]["url"] = 'https://x.test/a.jpg" onerror="alert(1)'
    stats["domains"]["by_pairs"][0]["domain"] = "<img src=x onerror=alert(2)>.test"
    page = render(stats, no_thumbnail)
    tags = Tags.of(page)
    assert "script" not in {tag for tag, _ in tags}
    assert not [(tag, name) for tag, attrs in tags for name, _ in attrs if name.startswith("on")]
    assert sum(tag == "img" for tag, _ in tags) == sum(1 for _ in re.finditer('class="plot"', page))  # plots only
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; a red &amp; blue &quot;circle&quot;" in page
    text = text_of(page)
    for shown in (SCRIPT_CAPTION, "<img src=x onerror=alert(2)>.test", "OSError: <b>disk</b> full on /tmp/x"):
        assert shown in text, shown  # shown as text
    assert 'title="https://x.test/a.jpg&quot; onerror=&quot;alert(1)"' in page


class Tags(HTMLParser):
    """[(tag, [(attribute, value)])] of every start tag of a page, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags: list = []

    @classmethod
    def of(cls, page: str) -> list:
        parser = cls()
        parser.feed(page)
        return parser.tags

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def test_missing_stages_say_not_run():
    page = render(pairs_only(make_stats()), no_thumbnail)
    text = text_of(page)
    for phrase in (
        "download: not run",
        "embed: not run",
        "index: not run",
        "no quality gates checked",
        "Domains download not run",
        "CLIP similarity embed not run",
        "Image sizes download not run",
        "Caption length download not run",
        "Languages download not run",
        "NSFW tags of embedded",
        "samples embed not run",
        "Samples by similarity embed not run",
        "Index index not run",
        "no ground truth given",
    ):
        assert phrase in text, phrase
    assert re.search(r"decoded .*? not run", text)
    assert re.search(r"extracted .*? 1146 ", text)  # the steps that ran are shown
    assert page.count('<section id="images" class="empty">') == 1  # a stage not run: one line
    # a stage that ran and made nothing says so
    stats = make_stats()
    stats["samples"], stats["similarity"]["count"] = [], 0
    text = text_of(render(stats, no_thumbnail))
    assert "CLIP similarity no embedded samples" in text and "Samples by similarity no samples" in text


def test_no_external_resources_and_no_script(page):
    refs = [value for _, attrs in Tags.of(page) for name, value in attrs if name in ("src", "href", "srcset")]
    assert refs and all(r.startswith(("data:image/", "#")) for r in refs), [r[:40] for r in refs]
    assert "<script" not in page.lower() and "url(" not in page and "@import" not in page
    assert not re.search(r"<(link|iframe|object|embed)\b", page)


def test_thumbnails_are_embedded_from_the_shard_tar(shard_tar):
    thumbnail = tar_thumbnails(max_side=64)
    data = thumbnail({"key": "000000000", "tar": shard_tar})
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and max(image.size) == 64 and image.getpixel((10, 10))[0] > 180
    assert thumbnail({"key": "000000001", "tar": shard_tar}) is None  # undecodable
    assert thumbnail({"key": "999999999", "tar": shard_tar}) is None  # not in the tar
    assert thumbnail({"key": "000000000", "tar": shard_tar + ".gone"}) is None  # no tar
    assert thumbnail({"key": "000000000", "tar": None}) is None
    stats = make_stats(shard_tar)
    stats["samples"][0]["key"] = "000000000"
    page = render(stats, thumbnail)
    images = re.findall(r'<img alt="[^"]*" src="data:image/jpeg;base64,', page)
    assert len(images) == 1 and page.count('class="missing"') == len(stats["samples"]) - 1


def test_write_report_publishes_index_html(tmp_path, shard_tar):
    uri = write_report(str(tmp_path / "out"), make_stats(shard_tar))
    assert uri == str(tmp_path / "out" / "report" / "index.html")
    assert "Samples by similarity" in Path(uri).read_text(encoding="utf-8")
    assert [p.name for p in (tmp_path / "out" / "report").iterdir()] == ["index.html"]  # no temporary left


# --- the page in a real browser -------------------------------------------------------------------------


def test_page_screenshot(chromium, tmp_path, shard_tar):
    stats = make_stats(shard_tar)
    stats["samples"][0]["key"] = "000000000"
    page = tmp_path / "index.html"
    page.write_text(render(stats, tar_thumbnails()), encoding="utf-8")
    shot = tmp_path / "page.png"
    run_chromium(
        chromium, tmp_path, page.as_uri(), "--hide-scrollbars", "--window-size=1400,9000", f"--screenshot={shot}"
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1400, 9000)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 22)
    assert len(colours) > 500  # text and plots, not blank
    background = image.getpixel((2, 8995))
    rows = [y for y in range(0, 9000, 10) if any(image.getpixel((x, y)) != background for x in range(0, 1400, 7))]
    assert 4000 < max(rows) < 8900, max(rows)  # every section drawn, none blown up in size
    reds = sum(n for n, (r, g, b) in colours if r > 180 and g < 80 and b < 80)
    assert reds > 0.5 * 132 * 99  # the red thumbnail is drawn
    keep_screenshot(shot, "report_page.png")
