"""Hostile crawl files, built by the tests: one huge or deep record between ordinary ones.

The ordinary records are written by warcio (tests.test_extract.write_warc), one gzip member each, as
Common Crawl writes them. The hostile record is a gzip member streamed here chunk by chunk, so a record
of gigabytes costs this process no memory: no WARC writer writes a record it was not given whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from isal import isal_zlib

from tests.test_extract import html_page, wat_json, write_warc

BLOCK = 1 << 20


def gzip_member(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """One gzip member of the concatenated chunks, compressed as they come."""
    deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    for chunk in chunks:
        yield deflate.compress(chunk)
    yield deflate.flush()


def warc_record(rtype: str, uri: str, length: int, payload: Iterable[bytes], content_type: str) -> Iterator[bytes]:
    yield (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {uri}\r\n"
        f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000000>\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    yield from payload
    yield b"\r\n\r\n"


def padded(head: bytes, fill: bytes, tail: bytes, size: int) -> tuple[int, Iterator[bytes]]:
    """A payload of exactly `size` bytes: head, `fill` repeated, tail."""
    middle = size - len(head) - len(tail)
    block = (fill * (BLOCK // len(fill) + 1))[:BLOCK]

    def chunks():
        yield head
        left = middle
        while left > 0:
            yield block[: min(left, BLOCK)]
            left -= BLOCK
        yield tail

    return size, chunks()


def giant_wat_json(uri: str, size: int) -> Iterator[bytes]:
    """A WAT metadata record of `size` bytes of JSON: one img link whose alt text fills it."""
    head, tail = wat_json(uri, [("/giant.jpg", "@@ALT@@")]).split(b"@@ALT@@")
    length, chunks = padded(head, b"a", tail, size)
    return warc_record("metadata", uri, length, chunks, "application/json")


def giant_html(uri: str, size: int) -> Iterator[bytes]:
    """A WARC response of `size` bytes: an HTML page with an img before and after a huge paragraph."""
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    page = html_page([("/before.jpg", "the picture before the text"), ("/after.jpg", "the picture after the text")])
    before, after = page.encode().split(b'<img src="/after.jpg"')
    head, tail = http + before + b"<p>", b'</p><img src="/after.jpg"' + after
    length, chunks = padded(head, b"word ", tail, size)
    return warc_record("response", uri, length, chunks, "application/http; msgtype=response")


def deep_wat_json(uri: str, depth: int) -> Iterator[bytes]:
    """A WAT metadata record whose img link carries a value nested `depth` levels deep."""
    head, tail = wat_json(uri, [("/deep.jpg", "a picture nested deep")]).split(b'"alt"', 1)
    payload = head + b'"x": ' + b"[" * depth + b"]" * depth + b', "alt"' + tail
    return warc_record("metadata", uri, len(payload), [payload], "application/json")


def tag_flood_html(uri: str, size: int) -> Iterator[bytes]:
    """A WARC response of `size` bytes of HTML: an img, then `<b>` tags to the end (an element every 3 bytes)."""
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    head = http + html_page([("/before.jpg", "the picture before the tags")]).encode().replace(b"</body></html>", b"")
    length, chunks = padded(head, b"<b>", b"</body></html>", size)
    return warc_record("response", uri, length, chunks, "application/http; msgtype=response")


def value_flood_wat_json(uri: str, size: int) -> Iterator[bytes]:
    """A WAT metadata record of `size` bytes whose Links hold empty objects, one every 3 bytes."""
    head, tail = wat_json(uri, [("/flood.jpg", "a picture among a flood of links")]).split(b'"Links": [', 1)
    length, chunks = padded(head + b'"Links": [', b"{},", b"{}, " + tail, size)
    return warc_record("metadata", uri, length, chunks, "application/json")


HOSTILE = {  # name -> (the hostile record's builder, its default size), after the three files
    "giant-wat-json": (giant_wat_json, 1_500_000_000),
    "giant-html": (giant_html, 1_500_000_000),
    "deep-nesting": (deep_wat_json, 2_000_000),
}
# Records small enough for max_record_bytes whose parse would cost many times their size (an element per 3 bytes)
ELEMENT_FLOODS = {
    "tag-flood-html": (tag_flood_html, 16 << 20),
    "value-flood-wat-json": (value_flood_wat_json, 16 << 20),
}
GOOD_BEFORE = [("/first/a.jpg", "an ordinary picture before"), ("/first/b.jpg", "another one before it")]
GOOD_AFTER = [("/last/a.jpg", "an ordinary picture after"), ("/last/b.jpg", "another one after it")]


def write_hostile(path: Path, name: str, size: int | None = None) -> set[tuple[str, str]]:
    """A file of an ordinary WAT record, the hostile record `name`, an ordinary WARC response; returns the
    pairs of the ordinary records (what must come through)."""
    build, default = (HOSTILE | ELEMENT_FLOODS)[name]
    before, after = path.with_suffix(".before"), path.with_suffix(".after")
    write_warc(before, [("wat", "http://good.test/before.html", wat_json("http://good.test/before.html", GOOD_BEFORE))])
    write_warc(after, [("html", "http://good.test/after.html", html_page(GOOD_AFTER).encode(), "text/html")])
    with open(path, "wb") as f:
        f.write(before.read_bytes())
        for chunk in gzip_member(build("http://hostile.test/page.html", size or default)):
            f.write(chunk)
        f.write(after.read_bytes())
    before.unlink()
    after.unlink()
    return {(f"http://good.test{src}", alt) for src, alt in GOOD_BEFORE + GOOD_AFTER}
