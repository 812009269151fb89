"""tasks/report/stage.py on a tiny output tree written by hand: every expected number below is counted from the
rows and stats written here (the comments say how), not copied from a run of the code."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core import uri
from clipcrawl.tasks.core.config import ReportSettings
from clipcrawl.tasks.report import stage as report

THRESHOLD = 0.3
SETTINGS = ReportSettings(
    quantiles=(0.0, 0.5, 1.0), thumbnails_per_quantile=1, top_domains=2, min_domain_pairs=3, slowest=2
)
IMAGES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("source", pa.string()),
        ("language", pa.string()),
    ]
)
METADATA_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("similarity", pa.float32()),
        ("NSFW", pa.string()),
        ("language", pa.string()),
    ]
)


def crawl_file(segment: str, name: str) -> str:
    return f"/crawl/CC-MAIN-2099-13/segments/{segment}/wat/{name}.warc.wat.gz"


def write_json(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_pairs(out, name: str, segment: str, with_alt: int, kept: int, dropped: dict, seconds: float) -> None:
    write_json(
        out / "pairs" / f"{name}.stats.json",
        {
            "uri": crawl_file(segment, name),
            "name": name,
            "status": "ok",
            "error": None,
            "seconds": seconds,
            "with_alt": with_alt,
            "kept": kept,
            "dropped": dropped,
        },
    )


def image_row(key, url, status, segment, caption, language="en", size=(None, None)) -> dict:
    return {
        "key": key,
        "url": url,
        "caption": caption,
        "status": status,
        "original_width": size[0],
        "original_height": size[1],
        "source": crawl_file(segment, "x"),
        "language": language,
    }


def write_images(out, shard: int, rows: list[dict], seconds: float = 1.0) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, IMAGES_SCHEMA), out / "images" / f"{shard:05d}.parquet")
    status = Counter(r["status"] for r in rows)
    write_json(
        out / "images" / f"{shard:05d}_stats.json",
        {
            "shard": shard,
            "count": len(rows),
            "successes": status["success"],
            "status": dict(status),
            "duration": seconds,
        },
    )


def write_embedded(
    out, stem: str, rows: list[dict], kept: list[dict], seconds: float = 1.0, drop_nsfw: bool = False
) -> None:
    """metadata (every embedded row), the dataset part (the `kept` rows) and the embed stats of one shard."""
    (out / "embeddings" / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist(rows, METADATA_SCHEMA), out / "embeddings" / "metadata" / f"metadata_{stem}.parquet"
    )
    dataset = {
        "key": [r["key"] for r in kept],
        "TEXT": [r["caption"] for r in kept],
        "language": [r["language"] for r in kept],
    }
    if kept and "near_duplicate" in kept[0]:
        dataset["near_duplicate"] = [r["near_duplicate"] for r in kept]
    (out / "dataset").mkdir(exist_ok=True)
    pq.write_table(pa.table(dataset), out / "dataset" / f"part-{stem}.parquet")
    below = sum(r["similarity"] < THRESHOLD for r in rows)
    write_json(
        out / "dataset" / f"part-{stem}_stats.json",
        {
            "shard": stem,
            "tar": str(out / "images" / f"{stem}.tar"),
            "samples": len(rows),
            "embedded": len(rows),
            "kept": len(kept),
            "dropped_similarity": below,
            "dropped_nsfw": len(rows) - below - len(kept),
            "status": {"embedded": len(rows), "missing_image": 0, "decode_error": 0},
            "similarity_threshold": THRESHOLD,
            "drop_nsfw": drop_nsfw,
            "timings": {"total_s": seconds},
        },
    )


# Shard 00000: six pairs sent to download; 00001: four, not embedded. Segment S1 holds files a and b,
# S2 holds c and d (d failed outright).
SHARD0 = [
    image_row("000", "http://www.Example.com:8080/a.jpg", "success", "S1", "a red cat", size=(200, 100)),
    image_row("001", "https://example.com/b.jpg", "success", "S1", "a blue dog", size=(100, 80)),
    image_row("002", "https://img.test.org/c.jpg", "timeout", "S1", "kein bild", language="de"),
    image_row("003", "https://img.test.org/d.jpg", "decode_error", "S2", "broken"),
    image_row("004", "https://img.test.org/e.jpg", "success", "S2", "un chat", language="fr", size=(300, 600)),
    image_row("005", "https://example.com/f.jpg", "http_4xx", "S2", "missing", language=None),
]
SHARD1 = [
    image_row("100", "https://other.net/g.jpg", "success", "S1", "green tree", size=(5000, 50)),
    image_row("101", "https://other.net/h.jpg", "too_small_bytes", "S2", "tiny"),
    image_row("102", "https://example.com/i.jpg", "success", "S2", "yellow sun", size=(64, 48)),
    image_row("103", "https://img.test.org/j.jpg", "dns_error", "S1", "x" * 450),
]
# Shard 00000's three decoded samples: 000 and 004 pass the threshold; 004 is a near-duplicate of 000.
EMBEDDED = [
    {
        "key": "000",
        "url": "http://www.Example.com:8080/a.jpg",
        "caption": "a red cat",
        "similarity": 0.36,
        "NSFW": "UNLIKELY",
        "language": "en",
    },
    {
        "key": "001",
        "url": "https://example.com/b.jpg",
        "caption": "a blue dog",
        "similarity": 0.12,
        "NSFW": "UNSURE",
        "language": "en",
    },
    {
        "key": "004",
        "url": "https://img.test.org/e.jpg",
        "caption": "un chat",
        "similarity": 0.52,
        "NSFW": "NSFW",
        "language": "fr",
    },
]


def build_out(tmp_path, drop_nsfw: bool = False):
    out = tmp_path / "out"
    # a: 10 with alt; 3 text-filter drops, 3 duplicates -> 4 kept.  b: 3; 1 + 1 -> 1.  c: 6; 1 + 0 -> 5.
    write_pairs(out, "a", "S1", 10, 4, {"no_alt": 3, "alt_too_short": 2, "invalid_url": 1, "duplicate": 3}, 1.0)
    write_pairs(out, "b", "S1", 3, 1, {"alt_too_long": 1, "duplicate": 1}, 3.0)
    write_pairs(out, "c", "S2", 6, 5, {"unsupported_scheme": 1}, 2.0)
    write_json(
        out / "pairs" / "_summary.json",
        {
            "crawl": "CC-MAIN-2099-13",
            "wall_seconds": 7.5,
            "failed": [{"uri": crawl_file("S2", "d"), "error": "not a WARC"}],
        },
    )
    write_images(out, 0, SHARD0, seconds=4.0)
    write_images(out, 1, SHARD1, seconds=1.0)
    write_json(out / "images" / "_summary.json", {"wall_seconds": 5.0, "failed": [{"shard": 2, "error": "boom"}]})
    if drop_nsfw:
        write_embedded(out, "00000", EMBEDDED, [EMBEDDED[0]], seconds=2.0, drop_nsfw=True)
    else:
        write_embedded(
            out,
            "00000",
            EMBEDDED,
            [EMBEDDED[0] | {"near_duplicate": False}, EMBEDDED[2] | {"near_duplicate": True}],
            seconds=2.0,
        )
    write_json(out / "dataset" / "_summary.json", {"failed": []})
    write_json(
        out / "index" / "index_infos.json",
        {
            "count": 2,
            "image": {"index_key": "Flat", "vectors": 2, "recall_at_k": 1.0, "build_s": 0.5, "tuning": []},
            "text": {"index_key": "Flat", "vectors": 2, "recall_at_k": 1.0, "build_s": 0.25},
            "near_duplicates": {"threshold": 0.96, "duplicates": 1, "groups": 1, "dropped": False, "dropped_rows": 0},
        },
    )
    manifest = out / "world" / "pairs.parquet"
    manifest.parent.mkdir()
    pq.write_table(
        pa.table(
            {  # 000 and 001 are true captions, 004 is not; one more pair no sample has
                "url": [r["url"] for r in EMBEDDED] + ["https://nowhere.test/z.jpg"],
                "text": [r["caption"] for r in EMBEDDED] + ["z"],  # the world's manifest names
                "matches": [True, True, False, True],
                "alt_case": ["caption", "caption", "junk", "caption"],
            }
        ),
        manifest,
    )
    return str(out)


@pytest.fixture
def out(tmp_path):
    return build_out(tmp_path)


@pytest.fixture
def stats(out):
    return report.collect(out, SETTINGS, os.path.join(out, "world", "pairs.parquet"))


def test_funnel_counts_each_step_from_its_stage(stats):
    counts = {step["step"]: step["count"] for step in stats["funnel"]}
    assert counts == {
        "extracted": 19,  # 10 + 3 + 6 with alt
        "text_filtered": 14,  # minus 2 + 1 (a), 1 (b), 1 (c) text-filter drops
        "deduplicated": 10,  # 4 + 1 + 5 kept
        "downloaded": 7,  # 5 successes, a decode_error and a too_small_bytes
        "decoded": 5,
        "clip_passed": 2,  # 000 and 004
        "near_duplicates_removed": 1,
        "indexed": 2,
    }
    steps = {step["step"]: step for step in stats["funnel"]}
    assert steps["extracted"]["of_previous"] is None and steps["extracted"]["of_first"] == 1
    assert (steps["decoded"]["of_previous"], steps["decoded"]["of_first"]) == (5 / 7, 5 / 19)
    assert steps["indexed"]["of_previous"] == 1  # of clip_passed: near-duplicates are marked, not dropped
    assert all(s["description"] for s in stats["funnel"])
    assert stats["stages"] == {"ingest": True, "download": True, "embed": True, "index": True}
    assert stats["version"] == report.VERSION == 2 and stats["label"] == "CC-MAIN-2099-13" and stats["gates"] == []


def test_segments_split_the_funnel_by_crawl_segment(stats):
    assert stats["segments"] == [
        {
            "segment": "S1",
            "files": 2,
            "funnel": {
                "extracted": 13,
                "text_filtered": 9,
                "deduplicated": 5,
                "downloaded": 3,
                "decoded": 3,
                "clip_passed": 1,
                "near_duplicates_removed": 1,
                "indexed": None,
            },
        },
        {
            "segment": "S2",
            "files": 2,
            "funnel": {  # c, and d that failed
                "extracted": 6,
                "text_filtered": 5,
                "deduplicated": 5,
                "downloaded": 4,
                "decoded": 2,
                "clip_passed": 1,
                "near_duplicates_removed": 0,
                "indexed": None,
            },
        },
    ]


def test_rates(stats):
    assert stats["rates"] == pytest.approx(
        {
            "download_success_rate": 5 / 10,
            "clip_pass_rate": 2 / 3,
            "duplicate_rate": 4 / 14,
            "near_duplicate_rate": 1 / 2,
            "failed_file_share": 1 / 3,  # download: shard 2 of 3 failed (ingest: 1 of 4)
        }
    )


def test_stages_detail_has_failures_reasons_and_timings(stats):
    ingest, download = stats["stages_detail"]["ingest"], stats["stages_detail"]["download"]
    assert ingest["units"] == 4 and ingest["failed"] == [{"unit": crawl_file("S2", "d"), "error": "not a WARC"}]
    assert ingest["reasons"] == {
        "alt_too_short": 2,
        "invalid_url": 1,
        "duplicate": 4,
        "alt_too_long": 1,
        "unsupported_scheme": 1,
    }
    assert (ingest["in"], ingest["out"], ingest["task_seconds"], ingest["wall_seconds"]) == (19, 10, 6.0, 7.5)
    assert ingest["items_per_s"] == pytest.approx(19 / 6)
    assert ingest["slowest"] == [
        {"unit": "b", "seconds": 3.0, "in": 3, "out": 1},
        {"unit": "c", "seconds": 2.0, "in": 6, "out": 5},
    ]
    assert download["units"] == 3 and download["failed"] == [{"unit": "00002", "error": "boom"}]
    assert download["reasons"] == {"timeout": 1, "decode_error": 1, "http_4xx": 1, "too_small_bytes": 1, "dns_error": 1}
    assert [u["unit"] for u in download["slowest"]] == ["00000", "00001"] and download["task_seconds"] == 5.0
    embed = stats["stages_detail"]["embed"]
    assert (embed["units"], embed["in"], embed["out"], embed["reasons"]["below_threshold"]) == (1, 3, 2, 1)
    assert embed["wall_seconds"] is None
    index = stats["stages_detail"]["index"]
    assert index["units"] == 2 and index["task_seconds"] == 0.75 and index["reasons"] == {}
    assert stats["index"]["image"] == {"index_key": "Flat", "vectors": 2, "recall_at_k": 1.0, "build_s": 0.5}
    assert stats["index"]["count"] == 2 and stats["index"]["near_duplicates"]["duplicates"] == 1


def test_domain_is_the_host_without_port_and_www():
    assert report.domain_of("http://WWW.Example.COM:8080/x.jpg") == "example.com"
    assert report.domain_of("https://img.www.test/y") == "img.www.test"
    assert report.domain_of("no url") == report.domain_of(None) == report.domain_of("http://[::1") == "(invalid)"


def test_domains_by_pairs_and_by_failure_rate(stats):
    example = {"domain": "example.com", "pairs": 4, "decoded": 3, "failure_rate": 0.25, "top_reason": "http_4xx"}
    # img.test.org: timeout, decode_error, dns_error once each: the tie goes to the first by name
    img = {"domain": "img.test.org", "pairs": 4, "decoded": 1, "failure_rate": 0.75, "top_reason": "decode_error"}
    assert stats["domains"]["by_pairs"] == [example, img]  # top 2; other.net has 2 pairs
    assert stats["domains"]["by_failure_rate"] == [img, example]  # other.net has fewer than 3 pairs


def test_histograms_count_every_value_once(stats):
    similarity = stats["similarity"]
    assert (similarity["threshold"], similarity["count"]) == (THRESHOLD, 3)
    assert similarity["mean"] == pytest.approx((0.36 + 0.12 + 0.52) / 3, rel=1e-6)
    # 40 bins of 0.05 over [-1, 1]: 0.12 -> bin 22, 0.36 -> 27, 0.52 -> 30
    bins = {
        name: {i: n for i, n in enumerate(similarity[name]["counts"]) if n}
        for name in ("histogram", "kept_histogram", "rejected_histogram")
    }
    assert bins == {"histogram": {22: 1, 27: 1, 30: 1}, "kept_histogram": {27: 1, 30: 1}, "rejected_histogram": {22: 1}}
    assert len(similarity["histogram"]["edges"]) == 41
    images = stats["images"]
    assert images["count"] == 5
    # bins of 128 pixels; the 5000-wide image counts in the last bin
    assert {i: n for i, n in enumerate(images["width"]["counts"]) if n} == {0: 2, 1: 1, 2: 1, 31: 1}
    assert {i: n for i, n in enumerate(images["height"]["counts"]) if n} == {0: 4, 4: 1}
    assert sum(images["aspect"]["counts"]) == 5 and images["aspect"]["counts"][-1] == 1  # 5000/50 = 100 > 10
    assert images["aspect"]["edges"][0] == pytest.approx(0.1) and images["aspect"]["edges"][-1] == pytest.approx(10)
    captions = stats["captions"]
    assert captions["count"] == 10 and captions["mean_chars"] == pytest.approx(
        (9 + 10 + 9 + 6 + 7 + 7 + 10 + 4 + 10 + 450) / 10
    )
    # bins of 10 characters: lengths 4..9 -> bin 0, 10 -> bin 1, 450 -> the last
    assert {i: n for i, n in enumerate(captions["length"]["counts"]) if n} == {0: 6, 1: 3, 39: 1}
    assert {i: n for i, n in enumerate(captions["kept_length"]["counts"]) if n} == {0: 2}


def test_languages_and_nsfw_shares(stats):
    assert stats["languages"] == [
        {"language": "en", "pairs": 7, "kept": 1},
        {"language": "fr", "pairs": 1, "kept": 1},
        {"language": "de", "pairs": 1, "kept": 0},
        {"language": "unknown", "pairs": 1, "kept": 0},
    ]
    assert stats["nsfw"] == {tag: {"count": 1, "share": 1 / 3} for tag in ("NSFW", "UNSURE", "UNLIKELY")}


def test_ground_truth_measures_the_similarity_filter(stats, out):
    truth = stats["ground_truth"]
    # 000: a true caption passed (tp); 001: a true caption rejected (fn); 004: a false caption passed (fp)
    assert truth == {
        "manifest": os.path.join(out, "world", "pairs.parquet"),
        "samples": 3,
        "true_matches": 2,
        "passed": 2,
        "tp": 1,
        "fp": 1,
        "fn": 1,
        "tn": 0,
        "precision": 0.5,
        "recall": 0.5,
        "accuracy": 1 / 3,
        "not_in_manifest": 0,
        "by_alt_case": {"caption": {"samples": 2, "accuracy": 0.5}, "junk": {"samples": 1, "accuracy": 0.0}},
    }
    assert report.collect(out, SETTINGS)["ground_truth"] is None


def test_samples_are_the_kept_and_rejected_samples_at_each_quantile(stats, out):
    shown = [(s["quantile"], s["kept"], s["key"]) for s in stats["samples"]]
    # kept: 000 (0.36) and 004 (0.52); rejected: 001 alone
    assert shown == [
        (0.0, True, "000"),
        (0.5, True, "000"),
        (1.0, True, "004"),
        (0.0, False, "001"),
        (0.5, False, "001"),
        (1.0, False, "001"),
    ]
    first = stats["samples"][0]
    assert (first["url"], first["caption"], first["tar"]) == (
        SHARD0[0]["url"],
        "a red cat",
        os.path.join(out, "images", "00000.tar"),
    )
    assert first["similarity"] == pytest.approx(0.36)


def _samples_tree(tmp_path, kept: list[float], rejected: list[float]):
    """Two shards whose embedded samples have these similarities (keys name them); every pair decoded."""
    out = tmp_path / "samples"
    rows = [
        {
            "key": f"{'k' if s >= THRESHOLD else 'r'}{s:+.2f}",
            "url": f"https://a.test/{i}.jpg",
            "caption": "t",
            "similarity": s,
            "NSFW": "UNLIKELY",
            "language": "en",
        }
        for i, s in enumerate(kept + rejected)
    ]
    for shard in (0, 1):
        mine = rows[shard::2]
        write_images(out, shard, [image_row(r["key"], r["url"], "success", "S1", "t", size=(10, 10)) for r in mine])
        write_embedded(out, f"{shard:05d}", mine, [r for r in mine if r["similarity"] >= THRESHOLD])
    return str(out)


def test_samples_nearest_each_quantile_of_the_merged_shards(tmp_path):
    out = _samples_tree(
        tmp_path,
        kept=[0.31, 0.33, 0.34, 0.37, 0.41, 0.42, 0.48, 0.55, 0.60, 0.71, 0.90],
        rejected=[-0.5, -0.2, 0.0, 0.1, 0.25],
    )
    settings = ReportSettings(quantiles=(0.0, 0.5, 0.9, 1.0), thumbnails_per_quantile=2)
    shown = [(s["quantile"], s["key"]) for s in report.collect(out, settings)["samples"]]
    # 11 kept: the quantiles are the 1st, 6th, 10th and 11th similarities; the 2 nearest each, ascending
    assert shown[:8] == [
        (0.0, "k+0.31"),
        (0.0, "k+0.33"),
        (0.5, "k+0.41"),
        (0.5, "k+0.42"),
        (0.9, "k+0.60"),
        (0.9, "k+0.71"),
        (1.0, "k+0.71"),
        (1.0, "k+0.90"),
    ]
    # 5 rejected: the 1st, 3rd, 5th (0.9 * 4 = 3.6 rounds to the 5th) and 5th
    assert shown[8:] == [
        (0.0, "r-0.50"),
        (0.0, "r-0.20"),
        (0.5, "r+0.00"),
        (0.5, "r+0.10"),
        (0.9, "r+0.10"),
        (0.9, "r+0.25"),
        (1.0, "r+0.10"),
        (1.0, "r+0.25"),
    ]


def test_sample_is_bounded_per_shard_and_merges_to_a_uniform_sample(tmp_path):
    kept = [round(0.3 + i / 100, 2) for i in range(40)]
    out = _samples_tree(tmp_path, kept=kept, rejected=[-0.1])
    settings = ReportSettings(sample_reservoir=10, quantiles=(0.0, 0.25, 0.5, 0.75, 1.0), thumbnails_per_quantile=1)
    summaries = [report.shard_summary(out, stem, settings) for stem in report.report_shards(out)]
    assert all(sum(s["kept"] for s in summary["samples"]) == 5 for summary in summaries)  # 10 // 2 per kind
    # the merged sample is the 5 kept keys of smallest priority over both shards; 5 quantiles show each once
    keys = [f"k{s:+.2f}" for s in kept]
    expected = sorted(keys, key=report._priority)[:5]
    shown = [s["key"] for s in report.build_stats(out, summaries, settings)["samples"] if s["kept"]]
    assert sorted(shown) == sorted(expected)
    assert shown == [s["key"] for s in report.collect(out, settings)["samples"] if s["kept"]]  # the same every run


def test_kept_follows_embeds_rule_when_nsfw_is_dropped(tmp_path):
    stats = report.collect(build_out(tmp_path, drop_nsfw=True), SETTINGS)
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    assert funnel["clip_passed"] == 1  # 004 passed the threshold but is tagged NSFW
    assert [s["funnel"]["clip_passed"] for s in stats["segments"]] == [1, 0]
    assert [(s["key"], s["kept"]) for s in stats["samples"] if s["quantile"] == 1.0] == [("000", True), ("004", False)]
    assert funnel["near_duplicates_removed"] == 1  # the dataset part has no near_duplicate column: none marked


def test_summaries_survive_json_and_add_up_to_the_same_stats(out):
    summaries = [json.loads(json.dumps(report.shard_summary(out, stem, SETTINGS))) for stem in ("00000", "00001")]
    direct, via_json = report.collect(out, SETTINGS), report.build_stats(out, summaries, SETTINGS)
    assert {k: v for k, v in via_json.items() if k != "generated_at"} == {
        k: v for k, v in direct.items() if k != "generated_at"
    }
    assert report.report_shards(out) == ["00000", "00001"]  # shard 2 failed: no stats file


def test_shards_and_metadata_of_earlier_versions_give_the_same_report(out, stats):
    """Earlier versions called the caption `text` in images/*.parquet and embeddings/metadata/: still read."""
    old = [*Path(out, "images").glob("*.parquet"), *Path(out, "embeddings", "metadata").glob("*.parquet")]
    for parquet in old:
        table = pq.read_table(parquet)
        pq.write_table(table.rename_columns(["text" if c == "caption" else c for c in table.column_names]), parquet)
    again = report.collect(out, SETTINGS, os.path.join(out, "world", "pairs.parquet"))
    assert len(old) == 3 and again["samples"] and all(s["caption"] for s in again["samples"])
    assert {k: v for k, v in again.items() if k != "generated_at"} == {
        k: v for k, v in stats.items() if k != "generated_at"
    }


def test_report_over_pairs_only(tmp_path):
    out = tmp_path / "pairs-only"
    write_pairs(out, "a", "S1", 10, 4, {"no_alt": 3, "alt_too_short": 2, "invalid_url": 1, "duplicate": 3}, 1.0)
    stats = report.collect(str(out), SETTINGS)
    assert stats["stages"] == {"ingest": True, "download": False, "embed": False, "index": False}
    assert [s["count"] for s in stats["funnel"]] == [10, 7, 4, None, None, None, None, None]
    assert stats["rates"] == {
        "download_success_rate": None,
        "clip_pass_rate": None,
        "duplicate_rate": 3 / 7,
        "near_duplicate_rate": None,
        "failed_file_share": 0.0,
    }
    assert stats["segments"] == [
        {
            "segment": "S1",
            "files": 1,
            "funnel": {
                "extracted": 10,
                "text_filtered": 7,
                "deduplicated": 4,
                "downloaded": None,
                "decoded": None,
                "clip_passed": None,
                "near_duplicates_removed": None,
                "indexed": None,
            },
        }
    ]
    assert list(stats["stages_detail"]) == ["ingest"] and stats["label"] == "pairs-only"
    assert stats["samples"] == [] and stats["index"] is None and stats["languages"] == []
    assert stats["similarity"]["count"] == 0 and stats["similarity"]["mean"] is None
    assert stats["domains"] == {"by_pairs": [], "by_failure_rate": []}
    json.dumps(stats)


def test_an_unreadable_shard_names_its_file(out):
    with open(os.path.join(out, "images", "00001.parquet"), "wb") as f:
        f.write(b"not parquet at all")
    with pytest.raises(ValueError, match=r"images/00001\.parquet: unreadable parquet"):
        report.collect(out, SETTINGS)


def test_a_missing_shard_file_names_it(out):
    os.remove(os.path.join(out, "dataset", "part-00000.parquet"))
    with pytest.raises(FileNotFoundError, match=r"dataset/part-00000\.parquet: missing"):
        report.shard_summary(out, "00000", SETTINGS)


def test_a_missing_column_names_the_file_and_column(out):
    pq.write_table(pa.table({"key": ["000"]}), os.path.join(out, "embeddings", "metadata", "metadata_00000.parquet"))
    with pytest.raises(ValueError, match=r"metadata_00000\.parquet: unreadable parquet \(no column url, caption"):
        report.shard_summary(out, "00000", SETTINGS)


def test_stats_are_written_atomically(out, stats, monkeypatch):
    written = report.write_stats(out, stats)
    assert written == os.path.join(out, "report", "stats.json")
    with open(written) as f:
        assert json.load(f) == json.loads(json.dumps(stats))

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(uri.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        report.write_stats(out, {**stats, "version": stats["version"] + 1})
    with open(written) as f:
        assert json.load(f)["version"] == stats["version"]  # the old file is whole
    assert os.listdir(os.path.join(out, "report")) == ["stats.json"]  # no temporary file left


def test_a_segment_is_shown_by_its_name_though_it_looks_like_a_number(tmp_path):
    """Common Crawl names a segment <start ms>.<n> ('1700000000000.50'): the report keeps the name, in stats.json
    and on the page (read as a number it would become 1700000000000.5)."""
    out = tmp_path / "out"
    segments = ["1700000000000.50", "1700000000347.1"]
    for name, segment in zip("ab", segments):
        write_pairs(out, name, segment, 3, 2, {"no_alt": 1}, 1.0)
    rows = [image_row(f"00{i}", f"https://example.com/{i}.jpg", "timeout", s, "a cat") for i, s in enumerate(segments)]
    write_images(out, 0, rows)
    report.finish_report(str(out), [report.shard_summary(str(out), "00000", SETTINGS)], SETTINGS)
    stats = json.loads((out / "report" / "stats.json").read_text())
    assert [s["segment"] for s in stats["segments"]] == segments
    page = (out / "report" / "index.html").read_text()
    table = page[page.index('<section id="segments"') :].split("</table>")[0]
    assert re.findall(r"<tr><td[^>]*>([^<]*)</td>", table) == segments  # the first cell of each row


def test_report_tasks_retry_transient_errors_only():
    from clipcrawl.tasks.core.cache import retry_transient

    for task in (report.report_shard_task, report.finish_report_task):
        assert task.retries == 2 and task.retry_condition_fn is retry_transient, task.name
