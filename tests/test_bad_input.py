"""Bad input, end to end: hostile crawl files through ingest_crawl and hostile image URLs through download_images
on the session cluster. Each bad input ends as a recorded status or error that names its file or URL; neither run
crashes on one or hangs past its timeouts. The table of docs/bad-input.md must say what these runs observed."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.flows.download import download_images
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core.config import ReportSettings
from clipcrawl.tasks.core.status import DownloadStatus, FileStatus, PairStatus, RecordStatus
from clipcrawl.tasks.report.stage import collect
from clipcrawl.tasks.world import ImageServer, WorldSpec, generate_world
from clipcrawl.tasks.world.behaviours import DRIP_CAP_S, PRIVATE_ADDRESS, PRIVATE_HOST
from tests.helpers import run
from tests.hostile import gzip_member, write_hostile
from tests.test_extract import html_page, wat_json, write_warc
from tests.test_hostile_files import DAMAGE, bad_record, five_pages, good_pairs, sandwich

pytestmark = pytest.mark.timeout(600)  # a hang fails the module instead of stalling CI

BAD_INPUT_DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
PAGE = "http://bad.example/dir/page.html"
SCHEME_SRCS = (
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:void(0)",
    "file:///etc/passwd",
    "ftp://files.example.com/a.jpg",
)
NON_UTF8 = {  # alt text -> (how the page is encoded, the Content-Type it is served with)
    "Красный велосипед у стены дома": ("windows-1251", "text/html"),  # no charset anywhere: detected
    "Café crème à côté du château": ("iso-8859-1", "text/html; charset=utf-8"),  # a charset that lies
}
MANY_IMGS = 10_000
CUT_PAGES = 200  # ~800 KB of WAT records: the cut falls well past the reader's first chunk
HUGE_ALT = "a" * (1 << 20)
# the table's row (input) -> behaviour of the world's image server
SERVED = {
    "host name resolving to a private address": "blocked_address",
    "redirect loop": "redirect_loop",
    "server that drips bytes forever": "endless_drip",
    "huge Content-Length": "huge_content_length",
    "decompression bomb": "pixel_bomb",
    "truncated JPEG": "truncated_jpeg",
    "SVG served as image/jpeg": "svg_as_jpeg",
    "HTML served as image/jpeg": "html_as_jpeg",
    "response with a header line of 1 MiB": "huge_header_line",
    "response with 100,000 headers": "many_headers",
    "gzip bomb under Content-Encoding: gzip": "gzip_bomb",
    "JPEG with 50 MB of ICC profile segments": "jpeg_icc_bomb",
    "JPEG with 8 MB of tiny metadata segments": "jpeg_metadata_flood",
    "PNG with iCCP and zTXt bombs": "png_metadata_bomb",
    "GIF of 10,000 frames": "gif_many_frames",
    "0-byte body": "empty_body",
    "an image whose resized, re-encoded copy has its PDQ hash on a known-bad list": "pdq_listed",
}
HOSTILE_RECORDS = ("giant-wat-json", "giant-html", "deep-nesting")
DRIP_SLACK_S = 20.0  # shard start-up and image work on a loaded 2-core machine, over the drip's timeout bound


def good(n: int) -> tuple[str, str]:
    """An ordinary img link beside a hostile one: the rest of the page and file must still come through."""
    return f"/ok/{n}.jpg", f"an ordinary picture number {n}"


def cut_page_links(page: int) -> list[tuple[str, str]]:
    return [(f"/cut/{page}/{i}.jpg", f"picture number {i} of page {page}") for i in range(20)]


def cut_pairs() -> set[tuple[str, str]]:
    """The pairs of the WAT that gets truncated, read whole."""
    return {(f"http://cut.example{src}", alt) for page in range(CUT_PAGES) for src, alt in cut_page_links(page)}


def hostile_files(folder: Path, world_wat: str) -> dict[str, Path]:
    """One file per bad crawl input, by name."""
    data = Path(world_wat).read_bytes()
    whole = folder.parent / "whole.warc.wat.gz"  # not an input: only its first half is
    write_warc(
        whole,
        [
            ("wat", f"http://cut.example/{p}.html", wat_json(f"http://cut.example/{p}.html", cut_page_links(p)))
            for p in range(CUT_PAGES)
        ],
    )
    latin1 = wat_json(PAGE, [("/a.jpg", "Café crème au château")]).replace("é".encode(), "é".encode("latin-1"))
    files = {
        "truncated": folder / "truncated.warc.wat.gz",
        "one-stream": folder / "one-stream.warc.wat.gz",
        "not-warc": folder / "not-warc.warc.wat.gz",
    }
    files["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    files["one-stream"].write_bytes(gzip.compress(gzip.decompress(data)))  # every member inflated, one deflate
    files["not-warc"].write_bytes(gzip.compress(b"<html><body>an error page, not a WARC</body></html>\n" * 50))
    pages = {
        "malformed-json.warc.wat.gz": [
            ("wat", PAGE, wat_json(PAGE, [good(2)])[:-40]),  # cut, still says IMG@/src
            ("wat", PAGE + "?2", wat_json(PAGE + "?2", [good(3)])),
        ],
        "non-utf8-json.warc.wat.gz": [("wat", PAGE, latin1), ("wat", PAGE + "?2", wat_json(PAGE + "?2", [good(4)]))],
        "non-utf8-html.warc.gz": [
            (
                "html",
                f"{PAGE}?{i}",
                html_page([(f"/{i}.jpg", alt)]).replace("<p>Hi</p>", f"<p>{(alt + '. ') * 20}</p>").encode(encoding),
                ctype,
            )
            for i, (alt, (encoding, ctype)) in enumerate(NON_UTF8.items())
        ],
        "huge-alt.warc.gz": [("html", PAGE, html_page([("/big.jpg", HUGE_ALT), good(5)]).encode(), "text/html")],
        "many-imgs.warc.gz": [
            (
                "html",
                PAGE,
                html_page([(f"/many/{i}.jpg", f"picture {i} of many") for i in range(MANY_IMGS)]).encode(),
                "text/html",
            )
        ],
        "schemes.warc.gz": [
            (
                "html",
                PAGE,
                html_page([(s, f"an image linked by {s[:4]}") for s in SCHEME_SRCS] + [good(6)]).encode(),
                "text/html",
            )
        ],
    }
    for name, records in pages.items():
        write_warc(folder / name, records)
        files[name.split(".")[0]] = folder / name
    for name in HOSTILE_RECORDS:  # the files: 1.5 GB of JSON, 1.5 GB of HTML, 2,000,000 levels deep
        files[name] = folder / f"{name}.warc.gz"
        write_hostile(files[name], name)
    parts, _ = five_pages(folder.parent)
    parts[3] = DAMAGE["a flipped byte in a member"](parts[3])
    files["damaged-member"] = folder / "damaged-member.warc.wat.gz"
    files["damaged-member"].write_bytes(b"".join(parts))
    files["long-length"] = folder / "long-length.warc.gz"
    sandwich(files["long-length"], b"".join(gzip_member([bad_record("Content-Length too long")])))
    return files


@pytest.fixture(scope="module")
def runs(dask_address, tmp_path_factory):
    """One ingest of every hostile file (the world's WAT recompressed among them), then one download of the
    world's pairs and of the non-http URLs from the world's misbehaving image server."""
    tmp = tmp_path_factory.mktemp("bad_input")
    world = generate_world(tmp / "world", WorldSpec(seed=5, segments=1, files_per_segment=1, pages_per_file=8))
    (tmp / "crawl").mkdir()
    files = hostile_files(tmp / "crawl", world.wat_uris()[0])
    out = tmp / "out"
    ingest = run(dask_address, out, inputs=[str(p) for p in files.values()], retries=0)

    # the download: the world's pairs (from the recompressed WAT) and a parquet of non-http URLs
    urls = tmp / "urls"
    urls.mkdir()
    shutil.copy(out / "pairs" / "one-stream.parquet", urls)
    pq.write_table(
        pa.table({"url": list(SCHEME_SRCS), "caption": [f"an image at {s[:4]}" for s in SCHEME_SRCS]}),
        urls / "schemes.parquet",
    )
    with ImageServer(world.root) as server:
        settings = server.download_settings(image_threads=1)
        flow = download_images.with_options(task_runner=task_runner(dask_address))
        download = flow(pairs=str(urls), out=str(out), settings=settings, return_state=True)
    return {"world": world, "files": files, "out": out, "ingest": ingest, "download": download, "settings": settings}


def file_stats(runs, name: str) -> dict:
    return json.loads((runs["out"] / "pairs" / f"{name}.stats.json").read_text())


def pair_set(runs, name: str) -> set[tuple[str, str]]:
    t = pq.read_table(runs["out"] / "pairs" / f"{name}.parquet", columns=["url", "caption"])
    return set(zip(t.column("url").to_pylist(), t.column("caption").to_pylist()))


def image_rows(runs) -> list[dict]:
    return [r for p in sorted((runs["out"] / "images").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def urls_by_behaviour(world) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for image in world.manifest_images().select(["behaviour", "urls"]).to_pylist():
        out.setdefault(image["behaviour"], set()).update(image["urls"])
    return out


def one(values) -> str:
    """The one outcome of several items, or all of them (which no row of the table names) when they disagree."""
    values = sorted(set(values))
    return values[0] if len(values) == 1 else repr(values)


def file_outcome(runs, name: str) -> str:
    """How reading a file ended: failed (listed in _summary.json), else its stats' status."""
    summary = json.loads((runs["out"] / "pairs" / "_summary.json").read_text())
    if str(runs["files"][name]) in {f["uri"] for f in summary["failed"]}:
        return FileStatus.FAILED
    return file_stats(runs, name)["status"]


def page_outcome(runs, name: str) -> str:
    """What became of a file's hostile page: skipped as malformed, dropped with a reason, or kept."""
    stats = file_stats(runs, name)
    if stats["status"] != FileStatus.OK:
        return stats["status"]
    if stats["malformed_records"]:
        return "malformed_records"
    if stats["skipped_records"].get(RecordStatus.RECORD_TOO_LARGE):
        return RecordStatus.RECORD_TOO_LARGE
    if stats["truncated_pages"]:
        return "truncated_pages"
    return one(r for r, n in stats["dropped"].items() if n) if any(stats["dropped"].values()) else PairStatus.KEPT


def observed(runs) -> dict[str, str]:
    """The table's row (input) -> the outcome the runs recorded for it."""
    rows = image_rows(runs)
    served = urls_by_behaviour(runs["world"])
    return {
        "truncated gzip WAT": file_outcome(runs, "truncated"),
        "WAT compressed as one gzip stream": file_outcome(runs, "one-stream"),
        "a file that is not WARC": file_outcome(runs, "not-warc"),
        "malformed JSON record in a WAT": page_outcome(runs, "malformed-json"),
        "non-UTF-8 bytes in a WAT's metadata record": page_outcome(runs, "non-utf8-json"),
        "non-UTF-8 HTML in a WARC response": page_outcome(runs, "non-utf8-html"),
        "alt text of 1 MB": page_outcome(runs, "huge-alt"),
        "page with 10,000 img tags": page_outcome(runs, "many-imgs"),
        "WAT record whose JSON is 1.5 GB (1.4 MB gzipped)": page_outcome(runs, "giant-wat-json"),
        "WARC response of 1.5 GB of HTML (9 MB gzipped)": page_outcome(runs, "giant-html"),
        "WAT record nested 2,000,000 levels deep": page_outcome(runs, "deep-nesting"),
        "a gzip member damaged mid-file": page_outcome(runs, "damaged-member"),
        "a record whose Content-Length runs past its gzip member": page_outcome(runs, "long-length"),
        "data:, javascript:, file://, ftp:// img src in a page": page_outcome(runs, "schemes"),
        "data:, javascript:, file://, ftp:// URL given to the download": one(
            r["status"] for r in rows if r["url"] in SCHEME_SRCS
        ),
        **{row: one(r["status"] for r in rows if r["url"] in served[b]) for row, b in SERVED.items()},
    }


def test_bad_crawl_files_are_recorded_and_the_others_published(runs):
    files, out, world = runs["files"], runs["out"], runs["world"]
    state = runs["ingest"]
    assert state.is_failed()  # the file that is not WARC, and only it, fails the run after the others finish
    assert f"1 of {len(files)} files failed" in state.message and str(files["not-warc"]) in state.message
    summary = json.loads((out / "pairs" / "_summary.json").read_text())
    assert [f["uri"] for f in summary["failed"]] == [str(files["not-warc"])]
    assert "not a WARC" in summary["failed"][0]["error"] and str(files["not-warc"]) in summary["failed"][0]["error"]
    published = {p.name.removesuffix(".stats.json") for p in (out / "pairs").glob("*.stats.json")}
    assert published == set(files) - {"not-warc"}
    for name in published:
        assert file_stats(runs, name)["uri"] == str(files[name]), name

    cut = file_stats(runs, "truncated")
    assert cut["status"] == FileStatus.PARTIAL and "truncated.warc.wat.gz" in cut["error"]
    truncated = pair_set(runs, "truncated")
    assert 0 < len(truncated) == cut["kept"] < len(cut_pairs()) and truncated <= cut_pairs()
    whole = file_stats(runs, "one-stream")
    assert whole["status"] == FileStatus.OK and whole["error"] is None
    assert pair_set(runs, "one-stream") == world.expected_pairs()  # read to the end


def test_bad_pages_are_counted_in_their_file_and_the_rest_kept(runs):
    def stats(name):
        return file_stats(runs, name)

    def texts(name):
        return {text for _, text in pair_set(runs, name)}

    assert stats("malformed-json")["malformed_records"] == 1 and texts("malformed-json") == {good(3)[1]}
    assert stats("non-utf8-json")["malformed_records"] == 1 and texts("non-utf8-json") == {good(4)[1]}
    assert stats("non-utf8-html")["malformed_records"] == 0 and texts("non-utf8-html") == set(NON_UTF8)
    assert stats("huge-alt")["dropped"][PairStatus.ALT_TOO_LONG] == 1 and texts("huge-alt") == {good(5)[1]}
    assert stats("schemes")["dropped"][PairStatus.UNSUPPORTED_SCHEME] == len(SCHEME_SRCS)
    assert texts("schemes") == {good(6)[1]}
    assert stats("many-imgs")["img_links"] == stats("many-imgs")["kept"] == MANY_IMGS
    assert len(pair_set(runs, "many-imgs")) == MANY_IMGS
    # the ordinary records around each hostile one come through (the same pairs in each file: the cross-file
    # dedup keeps them once, in the first file, and counts them duplicates in the others)
    around = (*HOSTILE_RECORDS, "long-length")
    assert set().union(*(pair_set(runs, name) for name in around)) >= good_pairs()
    for name in around:
        assert len(pair_set(runs, name) & good_pairs()) + stats(name)["duplicates_across_files"] >= 4, name
    damaged = stats("damaged-member")
    assert "damaged-member.warc.wat.gz" in damaged["error"] and "member at compressed offset" in damaged["error"]
    assert len(pair_set(runs, "damaged-member")) == 4 * 3  # five pages of three pairs, one member lost


def test_the_report_lists_damaged_files_and_records(runs):
    """The report's crawl-records section over this run: the partial files with their errors, the first
    malformed record of each file, the records over max_record_bytes; its counts add up."""
    records = collect(str(runs["out"]), ReportSettings())["stages_detail"]["ingest"]["records"]
    partial = {Path(p["uri"]).name.split(".")[0] for p in records["partial"]}
    assert partial == {"truncated", "damaged-member"}
    malformed = {Path(m["uri"]).name.split(".")[0] for m in records["malformed_examples"]}
    assert {"malformed-json", "non-utf8-json", "deep-nesting", "long-length"} <= malformed
    assert records["skipped"][RecordStatus.RECORD_TOO_LARGE] == 1 and records["truncated_pages"] == 1
    skipped = sum(records["skipped"].values())
    assert records["records"] == records["html_pages"] + skipped + records["malformed_records"]


def test_bad_image_urls_end_as_row_statuses_naming_the_url(runs):
    assert runs["download"].is_completed(), runs["download"].message
    rows = image_rows(runs)
    world_pairs = pair_set(runs, "one-stream")
    assert len(rows) == len(world_pairs) + len(SCHEME_SRCS)
    assert {r["url"] for r in rows} == {url for url, _ in world_pairs} | set(SCHEME_SRCS)
    assert {r["status"] for r in rows} <= set(DownloadStatus)
    for r in rows:
        assert r["status"] == DownloadStatus.SUCCESS or r["error_message"], r
    expected = runs["world"].expected_downloads()
    assert {r["url"]: r["status"] for r in rows if r["url"] in expected} == expected
    served = urls_by_behaviour(runs["world"])
    for row in rows:
        if row["url"] in SCHEME_SRCS:
            assert row["status"] == DownloadStatus.UNSUPPORTED_SCHEME and row["attempts"] == 0
            assert repr(row["url"].split(":", 1)[0]) in row["error_message"]
        elif row["url"] in served["blocked_address"]:
            assert PRIVATE_HOST in row["error_message"] and PRIVATE_ADDRESS in row["error_message"]


def test_no_download_outlasts_its_timeouts(runs):
    s = runs["settings"]
    # an attempt ends by total_timeout at the latest; transient failures are retried after jittered backoff
    bound = (s.retries + 1) * s.total_timeout + s.retry_backoff * (2**s.retries - 1)
    assert bound + DRIP_SLACK_S < DRIP_CAP_S, "the drip must outlast the bound, or a missing timeout goes unseen"
    drips = [r for r in image_rows(runs) if r["url"] in urls_by_behaviour(runs["world"])["endless_drip"]]
    assert drips and all(r["status"] == DownloadStatus.TIMEOUT for r in drips)
    assert all(r["attempts"] == s.retries + 1 and "timeout" in r["error_message"] for r in drips)
    for stats in (runs["out"] / "images").glob("*_stats.json"):
        assert json.loads(stats.read_text())["duration"] < bound + DRIP_SLACK_S, stats.name
    assert runs["download"].result()["wall_seconds"] < bound + DRIP_SLACK_S  # the whole flow run


def documented_table() -> dict[str, str]:
    """docs/bad-input.md's table: input (code marks dropped) -> the first code span of the second column."""
    lines = BAD_INPUT_DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| input |"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and not set(cells[0]) <= set("-: ") and cells[0] != "input":
            claim = re.search(r"`([^`]+)`", cells[1])
            rows[cells[0].replace("`", "")] = claim.group(1) if claim else cells[1]
    return rows


def test_documented_bad_input_table_says_what_the_runs_observed(runs):
    assert documented_table() == observed(runs)
