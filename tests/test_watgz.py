"""The fast path through gzipped WAT files (tasks/ingest/_watgz.c, container.Parts) against the container's path
(container.py and fastwarc, which read the whole file before it): the same pairs, in the same order, and the
same stats, on the world's kind of file, on records of every other form, and on seeded mutations of both kinds
of file (docs/ingest.md names the damage where the two may differ: where the stream's outcome hangs on how far
its parser had read ahead). And: the fast path reads a regular file without handing anything over, reads on
after what it hands over, and reads members of any size up to the cap."""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import types
import zlib
from pathlib import Path

import pytest

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.ingest import _watgz, container, extract
from clipcrawl.tasks.ingest.wat import HTML_MARKER, IMG_MARKER, MAX_JSON_VALUES, RESPONSE_MARKER
from tests.fuzz_extract import SETTINGS, gz, inflate, members, mutate, seed_files
from tests.test_extract import request_json, wat_json, write_warc

ROOT = Path(__file__).resolve().parent.parent
REALWEB = sorted((ROOT.parent / "shared" / "realweb").glob("*.warc.gz"))


class _NoFastPath:
    """A reader that reads no member: the whole file goes to the container's path."""

    def scan(self, data, final):
        return 0, 1, 0, 0, 0, 0, 0, False, []

    def find(self, data, start, final):
        return -1, -1, start


def extract_both(path: Path, settings: ExtractSettings = SETTINGS, monkeypatch=None) -> tuple[tuple, tuple, list]:
    """(rows and stats by the fast path, by the container's path alone, the streams the fast path handed over)."""
    streams = []
    opened = container.open_stream

    def spy(*args, **kwargs):
        streams.append(opened(*args, **kwargs))
        return streams[-1]

    def one(fast: bool) -> tuple:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(container, "open_stream", spy)
            if not fast:
                mp.setattr(extract, "_watgz", types.SimpleNamespace(Reader=lambda *a: _NoFastPath()))
            stats, rows = extract.FileStats(uri=str(path)), []
            try:
                for batch in extract.iter_pairs(str(path), settings, stats):
                    rows += batch.to_pylist()
            except extract.ExtractError as exc:
                rows.append(("ExtractError", str(exc)))
            done = stats.to_dict()
            done.pop("seconds")
            return rows, done

    fast = one(True)
    handed = list(streams)
    return fast, one(False), handed


def pages(n: int, prefix: str = "p") -> list[tuple]:
    out = []
    for p in range(n):
        page = f"http://{prefix}{p}.test/page.html"
        links = [(f"/img/{p}/{i}.jpg", f"picture {i} of the page {p} here") for i in range(3)]
        out += [("wat", page, request_json(page)), ("wat", page, wat_json(page, links))]
    return out


def test_a_regular_file_is_read_by_the_fast_path_alone(tmp_path):
    """~2.4 MB of members (so they straddle the fast path's 1 MiB reads), with odd pages among them: none handed
    over, the same rows and stats as the container's path."""
    records = pages(3000)
    records[100] = ("wat", "http://odd.test/", b'{"Envelope": {"Payload-Metadata": 1}}')  # JSON of no page
    records[101] = ("wat", "http://bad.test/", b'{"Envelope": "IMG@/src" ,,,}')  # malformed: counted, named
    records[102] = ("wat", "http://e.test/", wat_json("http://e.test/", [("/x.jpg", "an error page here")], status=404))
    write_warc(tmp_path / "big.warc.wat.gz", records)
    assert (tmp_path / "big.warc.wat.gz").stat().st_size > 2 * container.FAST_CHUNK
    fast, old, handed = extract_both(tmp_path / "big.warc.wat.gz")
    assert handed == []
    assert fast == old
    assert fast[1]["kept"] == 3 * 2999 and fast[1]["malformed_records"] == 1
    assert fast[1]["malformed_first"].startswith("record 103: ")  # the warcinfo record is record 1


@pytest.mark.parametrize("path", REALWEB, ids=[p.name for p in REALWEB])
def test_real_web_warc_files(path):
    fast, old, _ = extract_both(path)
    assert fast == old and fast[1]["kept"] > 0


def regular_record(rtype: bytes, payload: bytes, content_type: bytes, extra: bytes = b"") -> bytes:
    return (
        b"WARC/1.0\r\nWARC-Type: " + rtype + b"\r\nWARC-Record-ID: <urn:uuid:1>\r\n" + extra + b"Content-Type: "
        b"" + content_type + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload + b"\r\n\r\n"
    )


def page_record(p: int, **kw) -> bytes:
    page = f"http://odd{p}.test/page.html"
    return regular_record(b"metadata", wat_json(page, [(f"/odd/{p}.jpg", f"the odd picture of page {p}")]), **kw)


def with_gzip_header(data: bytes, flags: int, fields: bytes) -> bytes:
    deflated = zlib.compress(data, 6)[2:-4]
    return (
        b"\x1f\x8b\x08"
        + bytes([flags])
        + b"\0\0\0\0\0\xff"
        + fields
        + deflated
        + struct.pack("<II", zlib.crc32(data), len(data))
    )


J, W = b"application/json", b"application/warc-fields"
ODD = {  # name -> the member(s) in the middle of a regular file, and whether the fast path reads it itself
    "WARC/1.1": (gz(page_record(1, content_type=J).replace(b"WARC/1.0", b"WARC/1.1", 1)), True),
    "warcinfo": (gz(regular_record(b"warcinfo", b"software: x\r\n", W)), True),
    "lowercase name": (gz(page_record(2, content_type=J).replace(b"Content-Length", b"content-length")), False),
    "WARC/2.0": (gz(page_record(3, content_type=J).replace(b"WARC/1.0", b"WARC/2.0", 1)), False),
    "folded line": (gz(page_record(4, content_type=J, extra=b"X-A: 1\r\n  more\r\n")), False),
    "two Content-Length": (gz(page_record(5, content_type=J, extra=b"Content-Length: 3\r\n")), False),
    "json; charset": (gz(page_record(6, content_type=J + b"; charset=utf-8")), False),
    "http content": (gz(page_record(7, content_type=b"application/http; msgtype=response")), False),
    "Content-Encoding": (gz(page_record(8, content_type=J, extra=b"Content-Encoding: gzip\r\n")), False),
    "LF only": (gz(page_record(9, content_type=J).replace(b"\r\nContent-Type", b"\nContent-Type")), False),
    "8-bit header": (gz(page_record(10, content_type=J, extra=b"X-A: \xc3\xa9\r\n")), False),
    "trailing space": (gz(page_record(11, content_type=J).replace(b"metadata\r\n", b"metadata \r\n")), False),
    "short length": (gz(page_record(12, content_type=J).replace(b"Content-Length: ", b"Content-Length: 1")), False),
    "no CRLF CRLF": (gz(page_record(13, content_type=J)[:-4]), False),
    "resource": (gz(regular_record(b"resource", b"abc", b"text/plain")), False),
    "two records": (gz(page_record(14, content_type=J) + page_record(15, content_type=J)), False),
    "split record": (gz(page_record(16, content_type=J)[:200]) + gz(page_record(16, content_type=J)[200:]), False),
    "FNAME": (with_gzip_header(page_record(17, content_type=J), 8, b"x.warc\0"), False),
    "FEXTRA": (with_gzip_header(page_record(18, content_type=J), 4, b"\x04\0ab12"), False),
    "empty member": (gz(b""), False),
    "stray bytes": (b"not gzip at all" * 7, False),
    "flipped byte": (
        bytes([0x1F, 0x8B, 8, 0]) + bytes(gz(page_record(19, content_type=J))[4:30]) + b"\xff" * 40,
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_a_member_of_another_form_is_read_by_the_container_and_the_fast_path_reads_on(tmp_path, name):
    member, regular = ODD[name]
    write_warc(tmp_path / "a.wat.gz", pages(4, "a"))
    write_warc(tmp_path / "b.wat.gz", pages(4, "b"))
    a, b = (members((tmp_path / f"{x}.wat.gz").read_bytes()) for x in "ab")
    path = tmp_path / "odd.warc.wat.gz"
    path.write_bytes(b"".join(a) + member + b"".join(b[1:]))  # b's warcinfo left out
    fast, old, handed = extract_both(path)
    assert fast == old
    assert fast[1]["kept"] >= 3 * 8  # the regular pages' pairs, whatever the odd member gives
    if regular:
        assert handed == []
    else:  # handed over at the odd member, and taken back at the next regular one
        assert len(handed) == 1 and handed[0].resumed


def test_a_first_member_of_another_form_is_read_by_the_container_and_the_fast_path_reads_on(tmp_path):
    write_warc(tmp_path / "a.wat.gz", pages(4))
    parts = members((tmp_path / "a.wat.gz").read_bytes())
    path = tmp_path / "odd-first.warc.wat.gz"
    path.write_bytes(gz(inflate(parts[0]).replace(b"WARC-Type", b"warc-type")) + b"".join(parts[1:]))
    fast, old, handed = extract_both(path)
    assert fast == old and fast[1]["kept"] == 3 * 4
    assert len(handed) == 1 and handed[0].resumed


def test_members_larger_than_the_first_buffer_and_the_caps(tmp_path):
    """A 3.7 MB page (the output buffer grows past its first MiB) and a flood of commas (too large), read by the
    fast path and counted as the container's path counts them; under a 1 MiB cap the page's member is larger than
    the fast path inflates whole: handed over, and read on after."""
    big = wat_json(
        "http://big.test/", [(f"/big/{i}.jpg", f"a picture of a big page number {i}") for i in range(40_000)]
    )
    flood = b'{"Envelope": "IMG@/src", "x": [' + b"1," * (MAX_JSON_VALUES + 5) + b"1]}"
    write_warc(
        tmp_path / "big.warc.wat.gz",
        [*pages(3), ("wat", "http://big.test/", big), ("wat", "http://f.test/", flood), *pages(3, "z")],
    )
    assert len(big) > 2 << 20
    for cap in (ExtractSettings().max_record_bytes, 1 << 20):
        settings = ExtractSettings(detect_language=False, max_record_bytes=cap)
        fast, old, handed = extract_both(tmp_path / "big.warc.wat.gz", settings)
        assert fast == old
        assert [stream.resumed for stream in handed] == ([] if cap > len(big) else [True])
        assert fast[1]["skipped_records"]["record_too_large"] == (1 if cap > len(big) else 2)


def test_the_reader_counts_as_extract_sorts(tmp_path):
    """scan's counts and pages, on a WAT written as the world writes one, as _page_of sorts its records."""
    page = "http://p.test/"
    img = wat_json(page, [("/a.jpg", "a picture here")])
    image = json.loads(img)  # a response that is no HTML page (an image's): no HTML-Metadata
    del image["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
    big = wat_json(page, [(f"/{i}.jpg", f"a picture numbered {i}") for i in range(3_000)])
    records = [request_json(page), wat_json(page, []), json.dumps(image).encode(), img, big]
    write_warc(tmp_path / "s.warc.wat.gz", [("wat", page, payload) for payload in records])
    data = (tmp_path / "s.warc.wat.gz").read_bytes()
    assert 100_000 < len(big) < 1 << 20 and big.count(b",") > 1_000 > img.count(b",")
    # the big page too large by the cap, then by its commas (the other reader's cap holds it)
    for reader in (
        _watgz.Reader(100_000, MAX_JSON_VALUES, IMG_MARKER, RESPONSE_MARKER, HTML_MARKER),
        _watgz.Reader(1 << 20, 1_000, IMG_MARKER, RESPONSE_MARKER, HTML_MARKER),
    ):
        used, stop, read, responses, html_pages, not_a_page, too_large, wat, found = reader.scan(data, True)
        # warcinfo and the request: no response; the HTML page without img links; the image's response
        assert (used, stop, read, responses, html_pages, not_a_page, too_large, wat) == (
            len(data), 0, 6, 2, 1, 3, 1, True
        )  # fmt: skip
        assert found == [(5, img)]
    # a member cut by the end of what was read: left for the next read, or handed over at the file's end
    last = len(data) - len(members(data)[-1])
    assert reader.scan(data[:-5], False)[:3] == (last, 0, 5)
    assert reader.scan(data[:-5], True)[:2] == (last, 1)
    assert reader.find(data, 1, True)[0] == len(members(data)[0])
    with pytest.raises(ValueError):
        _watgz.Reader(-1, MAX_JSON_VALUES, IMG_MARKER, RESPONSE_MARKER, HTML_MARKER)
    with pytest.raises(ValueError):  # a failed __init__ leaves the reader as it was
        reader.__init__(1 << 20, -1, IMG_MARKER, RESPONSE_MARKER, HTML_MARKER)
    assert reader.scan(data, True)[:3] == (len(data), 0, 6)
    with pytest.raises(RuntimeError, match="not initialised"):
        _watgz.Reader.__new__(_watgz.Reader).scan(data, True)


TYPES = [b"response", b"request", b"metadata", b"warcinfo", b"revisit", b"Metadata", b"metadata ", b""]
CTYPES = [J, J + b"; charset=utf-8", b"application/http; msgtype=response", W, b"text/plain", b"", b"Application/JSON"]
LINES = [b"Content-Encoding: gzip", b"content-encoding: identity", b"WARC-Truncated: length", b"X-O: \xc3\xa9",
         b": novalue", b"NoColon", b" folded", b"\tfolded", b"Content-Length: 3"]  # fmt: skip


def reform(rng: random.Random, record: bytes) -> bytes:
    """The record with one change to its form (its header block, version line or end)."""
    head, sep, rest = record.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    k = rng.randrange(12)
    if k == 0:  # one character's case
        i = rng.randrange(len(head))
        head = head[:i] + head[i : i + 1].swapcase() + head[i + 1 :]
    elif k == 1:
        i = rng.randrange(len(head))
        head = head[:i] + rng.choice([b" ", b"\t"]) + head[i:]
    elif k == 2:
        i = rng.randrange(1, len(lines))
        head = b"\r\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    elif k == 3:
        i = rng.randrange(1, len(lines))
        head = b"\r\n".join(lines[:i] + lines[i + 1 :])
    elif k == 4:  # an LF without its CR
        i = rng.randrange(len(lines) - 1)
        head = b"\r\n".join(lines[: i + 1]) + b"\n" + b"\r\n".join(lines[i + 1 :])
    elif k in (5, 6):
        name, values = (b"warc-type:", TYPES) if k == 5 else (b"content-type:", CTYPES)
        head = b"\r\n".join(
            line if not line.lower().startswith(name) else line.split(b":")[0] + b": " + rng.choice(values)
            for line in lines
        )
    elif k == 7:
        head = rng.choice([b"WARC/1.1", b"WARC/0.17", b"WARC/1.0 ", b"warc/1.0", b"WARC/2.0"]) + head[8:]
    elif k == 8:
        head = b"\r\n".join([*lines[:1], rng.choice(LINES), *lines[1:]])
    elif k == 9:
        form = rng.choice(
            [
                b"Content-Length: +%d",
                b"Content-Length: 0%d",
                b"Content-Length:%d",
                b"Content-Length: %d ",
                b"Content-Length: %d0",
                b"Content-Length: %d",
            ]
        )
        n = int(next(line for line in lines if line.lower().startswith(b"content-length:")).split(b":")[1])
        n += rng.choice([0, 0, -2, -1, 1, 2])
        head = b"\r\n".join(
            line if not line.lower().startswith(b"content-length:") else form % max(n, 0) for line in lines
        )
    elif k == 10:
        rest = rest[:-4] + rng.choice([b"\r\n", b"", b"\r\n\r\n\r\n", b"\n\n"])
    else:
        i = rng.randrange(len(head))
        head = head[:i] + bytes([rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x0B])]) + head[i:]
    return head + sep + rest


@pytest.mark.timeout(600)
def test_seeded_mutations_read_as_the_container_reads_them(tmp_path):
    """600 files: fuzz_extract's damage to two members (bit flips, cuts, splices, garbage, wrong lengths, floods,
    ...) or changes to the form of up to three records (case, spaces, folding, duplicate and missing headers,
    bare LFs, types, content types, versions, encodings, lengths, ends, 8-bit and control bytes; two records in a
    member, a record over two members, gzip header fields), in WAT and WARC files: the fast path's rows and stats
    are the container's."""
    rng = random.Random(11)
    seeds = {kind: members(path.read_bytes()) for kind, path in seed_files(tmp_path).items()}
    target, differ = tmp_path / "case.warc.gz", []
    for case in range(600):
        kind = rng.choice(sorted(seeds))
        parts = list(seeds[kind])
        if case % 2:
            for i in sorted(rng.sample(range(len(parts)), 2)):
                _, parts[i], goes_on = mutate(rng, parts[i], parts[:i] + parts[i + 1 :])
                if not goes_on:
                    parts = parts[: i + 1]
                    break
        else:
            for i in sorted(rng.sample(range(len(parts)), rng.randint(1, 3))):
                record = reform(rng, inflate(parts[i])) if rng.random() < 0.8 else inflate(parts[i])
                way = rng.randrange(6)
                if way == 0:
                    parts[i] = gz(record[: len(record) // 2]) + gz(record[len(record) // 2 :])
                elif way == 1:
                    parts[i] = gz(record) + gz(record)  # the same record twice: uids dedup the pairs
                elif way == 2:
                    buf = io.BytesIO()
                    with gzip.GzipFile(filename="x.warc", mode="wb", fileobj=buf, mtime=1) as out:
                        out.write(record)
                    parts[i] = buf.getvalue()
                else:
                    parts[i] = gz(record)
        target.write_bytes(b"".join(parts))
        fast, old, _ = extract_both(target)
        if fast != old:
            differ.append(case)
            (tmp_path / f"differs-{case}.warc.gz").write_bytes(target.read_bytes())
    assert differ == []


def test_json_of_the_world_kind(tmp_path):
    """Pages with opt-outs, licenses and bases (what the world writes), through both paths."""
    page = "http://w.test/a/page.html"
    records = [
        ("wat", page, wat_json(page, [("b.jpg", "a relative picture of a thing")], base="http://w.test/base/")),
        (
            "wat",
            page + "2",
            wat_json(
                page + "2",
                [("/c.jpg", "a licensed picture of a thing")],
                tags=[("link", "https://creativecommons.org/licenses/by/4.0/", "license")],
            ),
        ),
        (
            "wat",
            page + "3",
            wat_json(
                page + "3",
                [("/d.jpg", "an opted out picture of a thing")],
                metas=[{"name": "robots", "content": "noimageindex"}],
            ),
        ),
        (
            "wat",
            page + "4",
            json.dumps({"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {}}}}}).encode(),
        ),
    ]
    write_warc(tmp_path / "w.warc.wat.gz", records)
    fast, old, handed = extract_both(tmp_path / "w.warc.wat.gz")
    assert handed == [] and fast == old
    assert {r["license"] for r in fast[0]} == {None, "https://creativecommons.org/licenses/by/4.0/"}
    assert fast[1]["dropped"] and fast[1]["html_pages"] == 4
