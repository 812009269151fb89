"""Hostile crawl files: memory bounded per record whatever a file holds, one bad record never costs the file,
damage to the container costs only what it touches, and a seeded fuzz run over mutations of real-looking files."""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from fastwarc.warc import WarcRecordType
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import FileStatus, RecordStatus
from clipcrawl.tasks.ingest import container
from tests.fuzz_extract import MUTATIONS, inflate, members
from tests.hostile import GOOD_AFTER, GOOD_BEFORE, gzip_member, warc_record, write_hostile
from tests.test_extract import html_page, pairs, run, wat_json, write_warc

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
CAP = ExtractSettings().max_record_bytes
# What one record may cost over the baseline: the capped payload, its text and its parse (an HTML tree, JSON
# values). docs/ingest.md gives the measured figures behind the multiple.
RSS_BOUND = 8 * CAP
MEASURE = """
import json, sys
from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.ingest.extract import FileStats, iter_pairs

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

def extract(path):
    stats, out = FileStats(uri=path), []
    for batch in iter_pairs(path, ExtractSettings(), stats):
        out += zip(batch.column("url").to_pylist(), batch.column("caption").to_pylist())
    return out, stats

extract(sys.argv[2])  # an ordinary file first: the baseline holds the libraries and the language model
baseline = peak()
found, stats = extract(sys.argv[1])
print(json.dumps({"baseline": baseline, "peak": peak(), "pairs": found, "stats": stats.to_dict()}))
"""
EXPECTED = {  # the three files, and floods of elements -> what their stats must say of the hostile record
    "giant-wat-json": ("skipped_records", RecordStatus.RECORD_TOO_LARGE),
    "giant-html": ("truncated_pages", None),
    "deep-nesting": ("malformed_records", None),
    "tag-flood-html": ("truncated_pages", None),
    "value-flood-wat-json": ("skipped_records", RecordStatus.RECORD_TOO_LARGE),
}


def apart(args: list[str], timeout: float) -> dict:
    """Run python with `args` in a process of its own (its peak RSS is its own; a crash is its exit status) and
    return the JSON it prints."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def adds_up(d: dict) -> bool:
    records = d["html_pages"] + sum(d["skipped_records"].values()) + d["malformed_records"]
    return d["records"] == records and d["img_links"] == d["kept"] + sum(d["dropped"].values())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_peak_memory_of_extraction_is_bounded_per_record(tmp_path, name):
    """The issue's files (1.5 GB of JSON, 1.5 GB of HTML, 2,000,000 levels of nesting, each a few MB gzipped), and
    records under the cap holding an element every 3 bytes (16 MiB of `<b>` tags, of `{}` links): the extracting
    process's peak RSS (VmHWM) stays within RSS_BOUND of its baseline, and the ordinary records around the hostile
    one give their pairs."""
    good = write_hostile(tmp_path / f"{name}.warc.gz", name)
    write_warc(tmp_path / "warm.warc.wat.gz", [("wat", "http://w.test/", wat_json("http://w.test/", GOOD_BEFORE))])
    result = apart(["-c", MEASURE, str(tmp_path / f"{name}.warc.gz"), str(tmp_path / "warm.warc.wat.gz")], 240)
    grown = result["peak"] - result["baseline"]
    assert grown <= RSS_BOUND, f"{name}: peak {result['peak'] / MiB:.0f} MiB, {grown / MiB:.0f} MiB over the baseline"
    stats = result["stats"]
    assert {tuple(p) for p in result["pairs"]} >= good
    assert stats["status"] == FileStatus.OK and adds_up(stats)
    counter, reason = EXPECTED[name]
    assert (stats[counter][reason] if reason else stats[counter]) == 1, stats


# ---- one bad record costs itself only

GOOD_PAGE = "http://good.test/page.html"


def good_pairs() -> set[tuple[str, str]]:
    return {(f"http://good.test{src}", alt) for src, alt in GOOD_BEFORE + GOOD_AFTER}


def bad_record(kind: str) -> bytes:
    """The payload of one gzip member holding a record damaged in one way."""
    page = "http://bad.test/page.html"
    ok_wat = wat_json(page, [("/bad.jpg", "a picture in a bad record")])
    http_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
    body = html_page([("/bad.jpg", "a picture in a bad record")]).encode()

    def record(rtype, payload, content_type="application/json", length=None, extra=b""):
        raw = b"".join(warc_record(rtype, page, len(payload) if length is None else length, [payload], content_type))
        return raw.replace(b"\r\n", b"\r\n" + extra, 1) if extra else raw

    response = "application/http; msgtype=response"
    return {
        "invalid JSON": lambda: record("metadata", ok_wat[:-30]),
        "JSON nested 100,000 deep": lambda: record("metadata", ok_wat[:-1] + b', "x": ' + b"[" * 100_000 + b"]}"),
        "Content-Length too short": lambda: record("metadata", ok_wat, length=len(ok_wat) // 2),
        "Content-Length too long": lambda: record("metadata", ok_wat, length=len(ok_wat) + 5000),
        "broken HTTP status line": lambda: record("response", b"HTTP/1.1 two hundred\r\n\r\n" + body, response),
        "HTTP header block without an end": lambda: record("response", http_head + b"X-A: b\r\n" * 50, response),
        "100,000 HTTP headers": lambda: record(
            "response", http_head + b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + b"\r\n" + body, response
        ),
        "an HTTP header line of 1 MB": lambda: record(
            "response", http_head + b"X-B: " + b"b" * MiB + b"\r\n\r\n" + body, response
        ),
        "a WARC header line of 1 MB": lambda: record("metadata", ok_wat, extra=b"X-Big: " + b"a" * MiB + b"\r\n"),
        "100,000 WARC headers": lambda: record(
            "metadata", ok_wat, extra=b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))
        ),
        "non-UTF-8 WARC headers": lambda: record("metadata", ok_wat, extra=b"X-Name: caf\xe9 \xff\xfe\r\n"),
        "NUL bytes in the JSON": lambda: record("metadata", ok_wat.replace(b'"Links"', b'"Li\0\0nks"')),
        "invalid UTF-8 in the JSON": lambda: record("metadata", ok_wat.replace(b"a picture", b"a pic\xff\xfeture")),
    }[kind]()


BAD_RECORDS = (
    "invalid JSON",
    "JSON nested 100,000 deep",
    "Content-Length too short",
    "Content-Length too long",
    "broken HTTP status line",
    "HTTP header block without an end",
    "100,000 HTTP headers",
    "an HTTP header line of 1 MB",
    "a WARC header line of 1 MB",
    "100,000 WARC headers",
    "non-UTF-8 WARC headers",
    "NUL bytes in the JSON",
    "invalid UTF-8 in the JSON",
)
# Records read for what they are rather than malformed: a header block without its blank line leaves the page
# no body (an HTML page without img tags); header values in another encoding do not stop the record.
READ_AS_IS = {"HTTP header block without an end": False, "non-UTF-8 WARC headers": True}  # -> its pair kept


def sandwich(path: Path, middle: bytes) -> None:
    """An ordinary WAT record, then `middle` (gzip members), then an ordinary WARC response."""
    write_warc(path.with_suffix(".a"), [("wat", GOOD_PAGE, wat_json(GOOD_PAGE, GOOD_BEFORE))])
    write_warc(path.with_suffix(".b"), [("html", GOOD_PAGE, html_page(GOOD_AFTER).encode(), "text/html")])
    path.write_bytes(path.with_suffix(".a").read_bytes() + middle + path.with_suffix(".b").read_bytes())


@pytest.mark.parametrize("kind", BAD_RECORDS)
def test_a_bad_record_costs_itself_only(tmp_path, kind):
    sandwich(tmp_path / "f.warc.gz", b"".join(gzip_member([bad_record(kind)])))
    table, stats = run(tmp_path / "f.warc.gz")
    assert pairs(table) >= good_pairs(), stats.to_dict()
    assert stats.status == FileStatus.OK and adds_up(stats.to_dict())
    bad_pair = ("http://bad.test/bad.jpg", "a picture in a bad record")
    # 5 records written (2 warcinfo, the good WAT record, the bad one, the good response); a Content-Length that
    # stops short leaves the record's tail, which the parser rejects as a stretch of its own
    assert stats.records == (6 if kind == "Content-Length too short" else 5), stats.to_dict()
    if kind in READ_AS_IS:
        assert stats.malformed_records == 0 and (bad_pair in pairs(table)) == READ_AS_IS[kind]
    else:
        assert stats.malformed_records == 1 and stats.malformed_first.startswith("record "), stats.to_dict()
        assert bad_pair not in pairs(table)


def test_a_record_over_the_cap_is_skipped_and_html_over_it_is_cut(tmp_path):
    """At a cap of 64 KB: a WAT record of 200 KB is record_too_large; HTML of 200 KB gives the img before the cut,
    not the one after it, and counts as truncated."""
    from tests.hostile import giant_html, giant_wat_json

    big = b"".join(gzip_member(giant_wat_json("http://big.test/", 200_000)))
    big += b"".join(gzip_member(giant_html("http://big.test/html", 200_000)))
    sandwich(tmp_path / "f.warc.gz", big)
    table, stats = run(tmp_path / "f.warc.gz", max_record_bytes=64 * 1024)
    texts = {text for _, text in pairs(table)}
    assert pairs(table) >= good_pairs()
    assert "the picture before the text" in texts and "the picture after the text" not in texts
    assert stats.skipped_records == {RecordStatus.NOT_A_PAGE: 2, RecordStatus.RECORD_TOO_LARGE: 1}
    assert stats.truncated_pages == 1 and stats.malformed_records == 0 and adds_up(stats.to_dict())


# ---- damage to the container: the members around it still give their pairs


def five_pages(tmp_path: Path) -> tuple[list[bytes], list[set]]:
    """A WAT of five pages, one gzip member each (after warcinfo), and each page's pairs."""
    pages = [f"http://p{i}.test/" for i in range(5)]
    links = [[(f"/{i}/{j}.jpg", f"picture {j} of page {i}") for j in range(3)] for i in range(5)]
    write_warc(tmp_path / "five.warc.wat.gz", [("wat", p, wat_json(p, ls)) for p, ls in zip(pages, links)])
    parts = members((tmp_path / "five.warc.wat.gz").read_bytes())
    return parts, [{(f"http://p{i}.test{src}", alt) for src, alt in links[i]} for i in range(5)]


DAMAGE = {
    "a flipped byte in a member": lambda m: m[:40] + bytes([m[40] ^ 0xFF]) + m[41:],
    "a member cut short": lambda m: m[: len(m) // 2],
    "garbage between members": lambda m: m + b"\0garbage that is no gzip member\xff" * 30,
    "a member cut short, then part of another": lambda m: m[: len(m) // 2] + m[: len(m) // 3],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_to_one_member_costs_that_member_only(tmp_path, damage):
    parts, page_pairs = five_pages(tmp_path)
    parts[3] = DAMAGE[damage](parts[3])  # the third page's member (parts[0] is warcinfo)
    (tmp_path / "d.warc.wat.gz").write_bytes(b"".join(parts))
    table, stats = run(tmp_path / "d.warc.wat.gz")
    kept = page_pairs[:2] + page_pairs[3:] if damage != "garbage between members" else page_pairs
    assert pairs(table) >= set().union(*kept)
    assert stats.status == FileStatus.PARTIAL and "d.warc.wat.gz" in stats.error and adds_up(stats.to_dict())


def test_a_cut_file_keeps_what_was_before_the_cut(tmp_path):
    parts, page_pairs = five_pages(tmp_path)
    (tmp_path / "cut.warc.wat.gz").write_bytes(b"".join(parts[:4]) + parts[4][:20])
    table, stats = run(tmp_path / "cut.warc.wat.gz")
    assert pairs(table) == set().union(*page_pairs[:3])
    assert stats.status == FileStatus.PARTIAL and "truncated" in stats.error


@pytest.mark.parametrize("damaged", [0, 2])  # warcinfo, sniffed first; the second page, inflated piece by piece
def test_a_member_that_fails_its_checksum_hands_out_nothing(tmp_path, damaged):
    """A member whose checksum fails at its end: none of its bytes reach the parser (its record is not
    counted), and the members around it give their pairs."""
    rng = random.Random(5)
    pages = [f"http://p{i}.test/" for i in range(3)]
    links = [[(f"/{i}/{j}.jpg", f"picture {j} " + rng.randbytes(40).hex()) for j in range(150)] for i in range(3)]
    write_warc(tmp_path / "three.warc.wat.gz", [("wat", p, wat_json(p, ls)) for p, ls in zip(pages, links)])
    parts = members((tmp_path / "three.warc.wat.gz").read_bytes())
    assert len(parts[2]) > 2 * container.INFLATE_PIECE
    parts[damaged] = parts[damaged][:-8] + bytes([parts[damaged][-8] ^ 0xFF]) + parts[damaged][-7:]  # its CRC-32
    (tmp_path / "crc.warc.wat.gz").write_bytes(b"".join(parts))
    table, stats = run(tmp_path / "crc.warc.wat.gz")
    kept = (0, 1, 2) if damaged == 0 else (0, 2)
    assert pairs(table) == {(f"http://p{i}.test{src}", alt) for i in kept for src, alt in links[i]}
    assert stats.records == 3 and stats.malformed_records == 0  # four records less the damaged one
    assert stats.status == FileStatus.PARTIAL and "checksum" in stats.error


def test_a_member_that_inflates_to_exactly_what_a_read_holds_is_checked_too():
    """The member under way is inflated on to READ_SIZE past the read: one that ends right there, its trailer in
    the next piece of input, still fails its checksum before any of it is handed out (header lengths that move
    the trailer across every piece boundary)."""
    data = bytes(8 + container.READ_SIZE)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data) ^ 0xFF, len(data))  # its CRC-32 is wrong
    for pad in range(1, 2 * container.INFLATE_PIECE + 16):
        header = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + b"x" * pad + b"\x00"  # FNAME of `pad` bytes
        stream = container._Members(io.BytesIO(header + body + trailer + b"".join(gzip_member([b"WARC/1.0"]))))
        assert stream.read(8) == b"", pad


def test_a_first_member_sniffed_past_its_limit_is_read_to_its_end():
    """A first member that is no WARC, a little over SNIFF_BYTES: the sniff reads it to its end, so a record line
    inside it, just past where reads of READ_SIZE after the first 8 bytes pass SNIFF_BYTES, is not taken for the
    start of the file."""
    fake = b"WARC/1.0\r\nWARC-Type: resource\r\nWARC-Target-URI: http://inside.test/\r\nContent-Length: 3\r\n\r\nabc\r\n\r\n"
    at = 8 + container.SNIFF_BYTES
    body = bytes(at) + fake + bytes(11_000)
    warcinfo = b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Length: 0\r\n\r\n\r\n\r\n"
    data = gzip.compress(body, mtime=0) + gzip.compress(warcinfo, mtime=0)
    stream = container.open_stream(io.BytesIO(data), "x.warc.gz")
    assert stream.damaged == 1 and "holds no WARC record" in stream.damage
    assert [str(r.record_type) for r in container.records(stream, print)] == [str(WarcRecordType.warcinfo)]


def test_a_false_member_inside_a_damaged_one_does_not_hide_the_members_after_it():
    """Member A's stored block runs past its end, over a false gzip header (itself a stored block that runs
    far) and into the members after it: looking again inside A finds the false member, and inside that, B."""
    rng = random.Random(1)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def stored(length: int) -> bytes:  # a final stored deflate block's header
        return bytes([1]) + struct.pack("<HH", length, length ^ 0xFFFF)

    plains = [b"<B>" + b"b" * 300, *(b"<%c>" % c + rng.randbytes(3000) for c in b"CDEF")]
    after = [b"".join(gzip_member([p])) for p in plains]
    inside = b"a" * 3000 + header + stored(8000) + b"a" * 100
    damaged = header + stored(len(inside) + len(after[0]) + len(after[1]) // 2) + inside
    stream = container._Members(io.BytesIO(damaged + b"".join(after)))
    out = b""
    while True:
        while data := stream.read(65536):
            out += data
        if not stream.restart():
            break
    assert all(p in out for p in plains)


# ---- regressions: damage of several kinds together, the parser's read-ahead, floods that cost time


def oversized_header_member() -> bytes:
    record = b"WARC/1.0\r\nWARC-Type: metadata\r\nX-Long: " + b"x" * 40_000 + b"\r\nContent-Length: 2\r\n\r\nxx\r\n\r\n"
    return b"".join(gzip_member([record]))


def length_past_member(member: bytes) -> bytes:
    record = inflate(member)
    head, rest = record.split(b"\r\n\r\n", 1)
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length:")]
    claimed = len(rest) - 4 + 5000
    return b"".join(gzip_member([b"\r\n".join([*lines, b"Content-Length: %d" % claimed]) + b"\r\n\r\n" + rest]))


def flipped(member: bytes) -> bytes:
    return member[:40] + bytes([member[40] ^ 0xFF]) + member[41:]


def test_damage_after_a_record_larger_than_the_history_keeps_the_records_read_ahead(tmp_path):
    """A 3 MB page, then a record whose header is over the parser's limit, then five pages: the rejected stretch
    is looked for from the oldest byte still kept, not past everything the parser had read ahead."""
    body = html_page([("/big.jpg", "the big page picture")]).encode() + b"<p>" + b"w" * 3_000_000 + b"</p>"
    write_warc(tmp_path / "big.warc.gz", [("html", "http://big.test/", body, "text/html")])
    parts, page_pairs = five_pages(tmp_path)
    big = members((tmp_path / "big.warc.gz").read_bytes())[1]
    (tmp_path / "f.warc.gz").write_bytes(parts[0] + big + oversized_header_member() + b"".join(parts[1:]))
    table, stats = run(tmp_path / "f.warc.gz")
    assert pairs(table) == set().union(*page_pairs) | {("http://big.test/big.jpg", "the big page picture")}
    assert stats.malformed_records == 1 and stats.records == 8 and stats.status == FileStatus.OK


@pytest.mark.parametrize(
    "damage",
    ["length past its member, then an oversized header", "a flipped member, then an oversized header"],
)
def test_two_kinds_of_damage_in_a_row(tmp_path, damage):
    parts, page_pairs = five_pages(tmp_path)
    first = length_past_member(parts[2]) if damage.startswith("length") else flipped(parts[2])
    parts[2:4] = [first, oversized_header_member()]  # pages 1 and 2 damaged
    (tmp_path / "f.warc.gz").write_bytes(b"".join(parts))
    table, stats = run(tmp_path / "f.warc.gz")
    assert pairs(table) == page_pairs[0] | page_pairs[3] | page_pairs[4]
    assert adds_up(stats.to_dict())


def test_a_length_past_its_member_is_cut_where_the_next_record_begins_past_a_member_that_begins_none(tmp_path):
    """A Content-Length that runs past its member, over a member that begins no record, into the pages after it:
    the record is cut where the next record begins (it was looked for at the very next member only, and the
    pages after were swallowed as its payload)."""
    parts, page_pairs = five_pages(tmp_path)
    tail = b"".join(gzip_member([b"a tail of text that begins no record\r\n"]))
    (tmp_path / "f.warc.gz").write_bytes(
        b"".join(parts[:2]) + length_past_member(parts[2]) + tail + b"".join(parts[3:])
    )
    table, stats = run(tmp_path / "f.warc.gz")
    assert pairs(table) == page_pairs[0] | page_pairs[2] | page_pairs[3] | page_pairs[4]
    assert stats.malformed_records == 1 and adds_up(stats.to_dict())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_rejected_member_in_a_row_is_counted(tmp_path, n):
    parts, page_pairs = five_pages(tmp_path)
    (tmp_path / "f.warc.gz").write_bytes(b"".join(parts[:3]) + oversized_header_member() * n + b"".join(parts[3:]))
    table, stats = run(tmp_path / "f.warc.gz")
    assert pairs(table) == set().union(*page_pairs)
    assert stats.malformed_records == n and stats.records == 6 + n


@pytest.mark.parametrize("member_size", [65280, 16384, 4096])
def test_records_spanning_gzip_members_are_read(tmp_path, member_size):
    """Fixed-size gzip members (as bgzip writes them) cut records anywhere: legal gzip, read whole."""
    html = [
        (
            "html",
            f"http://h{i}.test/",
            html_page([(f"/{j}.jpg", f"picture {j} of page {i}") for j in range(30)]).encode(),
            "text/html",
        )
        for i in range(20)
    ]
    write_warc(tmp_path / "plain.warc", html, gzip_members=False)
    plain = (tmp_path / "plain.warc").read_bytes()
    blocks = [plain[i : i + member_size] for i in range(0, len(plain), member_size)]
    (tmp_path / "b.warc.gz").write_bytes(b"".join(b"".join(gzip_member([b])) for b in blocks))
    table, stats = run(tmp_path / "b.warc.gz")
    assert pairs(table) == pairs(run(tmp_path / "plain.warc")[0]) and len(pairs(table)) == 600
    assert stats.status == FileStatus.OK and stats.malformed_records == 0


@pytest.mark.parametrize("damage", ["a flipped byte", "cut short", "a stray byte before it"])
def test_damage_to_the_first_member_costs_that_member_only(tmp_path, damage):
    parts, page_pairs = five_pages(tmp_path)
    first = {
        "a flipped byte": flipped(parts[0]),
        "cut short": parts[0][:40],
        "a stray byte before it": b"\n" + parts[0],
    }
    (tmp_path / "f.warc.gz").write_bytes(first[damage] + b"".join(parts[1:]))
    table, stats = run(tmp_path / "f.warc.gz")
    assert pairs(table) == set().union(*page_pairs) and stats.status == FileStatus.PARTIAL


def test_a_compressed_body_read_in_part_leaves_the_parser_at_the_next_record(tmp_path):
    """Content-Encoding gzip bodies over the cap, and under a 404: the rest is skipped as stored, never parsed."""
    body = gzip.compress(random.Random(1).randbytes(300_000).hex().encode())
    responses = []
    for status, ctype in (("200 OK", "text/html"), ("404 Not Found", "text/html"), ("200 OK", "image/jpeg")):
        http = StatusAndHeaders(status, [("Content-Type", ctype), ("Content-Encoding", "gzip")], protocol="HTTP/1.1")
        buf = io.BytesIO()
        writer = WARCWriter(buf, gzip=True)
        writer.write_record(
            writer.create_warc_record("http://z.test/", "response", payload=io.BytesIO(body), http_headers=http)
        )
        responses.append(buf.getvalue())
    parts, page_pairs = five_pages(tmp_path)
    (tmp_path / "f.warc.gz").write_bytes(parts[0] + b"".join(responses) + b"".join(parts[1:]))
    table, stats = run(tmp_path / "f.warc.gz", max_record_bytes=64 * 1024)
    assert pairs(table) == set().union(*page_pairs)
    assert stats.malformed_records == 0 and stats.records == 9 and stats.truncated_pages == 1


FLOODS = {  # what a few hundred KB (or 4 KB) on disk may hold; each must end in bounded time and memory
    "300,000 gzip headers": lambda: b"\x1f\x8b\x08" * 300_000,
    "false gzip members inflating far (stored blocks)": lambda: (
        (b"\x1f\x8b\x08\x00\x01\x02\x03\x04\x02\x03\x00" + struct.pack("<HH", 65530, 65530 ^ 0xFFFF)) * 32_000
    ),
    "64,000 false record lines in one member": lambda: b"".join(
        gzip_member(
            [
                b"WARC/1.0\r\nWARC-Type: metadata\r\nContent-Length: 0\r\n\r\n\r\n\r\n"
                + b"\nWARC/1.0\r\nbad\r\n" * 64_000
            ]
        )
    ),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_floods_of_false_members_and_records_end_quickly(tmp_path, flood):
    parts, page_pairs = five_pages(tmp_path)
    (tmp_path / "f.warc.gz").write_bytes(b"".join(parts[:3]) + FLOODS[flood]() + b"".join(parts[3:]))
    started = time.perf_counter()
    table, stats = run(tmp_path / "f.warc.gz")
    assert time.perf_counter() - started < 10
    assert pairs(table) >= page_pairs[0] | page_pairs[1]  # what came before the flood
    if flood == "64,000 false record lines in one member":  # one member given up: the pages after it are read
        assert pairs(table) == set().union(*page_pairs)
    assert stats.status == FileStatus.PARTIAL and len(stats.error) < 1000 and adds_up(stats.to_dict())


# ---- fuzzing

FUZZ_CASES = 500
FUZZ_RSS_BOUND = 128 * MiB  # over the baseline: the mutated files themselves are built in the process (a few MB)


@pytest.mark.timeout(600)
def test_fuzzed_wat_and_warc_files(tmp_path):
    """500 seeded mutations (tests/fuzz_extract.py) in a process of their own: it exits normally, every case
    keeps the pairs of the intact members, adds up and ends within its time, and the peak RSS is bounded."""
    result = apart(["-m", "tests.fuzz_extract", "--seed", "7", "--cases", str(FUZZ_CASES), "--dir", str(tmp_path)], 540)
    assert result["failures"] == []
    assert result["cases"] == FUZZ_CASES and set(result["mutations"]) == set(MUTATIONS)
    assert result["peak"] - result["baseline"] <= FUZZ_RSS_BOUND
