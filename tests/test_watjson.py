"""The WAT JSON's fast path (tasks/ingest/_watjson.c) answers every record as msgspec's path does (the same
PageLinks, None, or the same error), or leaves it to that path: on the world's records, on hand-made odd ones,
and on many mutations of both."""

from __future__ import annotations

import json
import random

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.ingest import _watjson, wat
from clipcrawl.tasks.ingest.page_optout import PageRules
from tests.test_extract import wat_json

RULES = PageRules.of(ExtractSettings())
NAMES = (RULES.meta_names, RULES.header_names)
PAGE = "http://example.com/dir/page.html"


def outcome(read, payload: bytes):
    try:
        return "ok", read(payload, *NAMES)
    except Exception as exc:  # noqa: BLE001 - the two paths must fail alike
        return "error", type(exc).__name__


def answered(payload: bytes) -> bool:
    """Whether the fast path answered (False: it left the record to msgspec)."""
    return _watjson.page(payload, *(wat._encoded(names) for names in NAMES), wat.is_license_rel) is not False


def assert_same(payload: bytes) -> None:
    assert outcome(wat.page_links_from_wat, payload) == outcome(wat.page_links_msgspec, payload), payload


def world_records(uris: list[str]) -> list[bytes]:
    out = []
    for uri in uris:
        with open(uri, "rb") as f:
            for record in ArchiveIterator(f, record_types=WarcRecordType.metadata, parse_http=False):
                out.append(record.reader.read())
    return out


def doc(**changes) -> dict:
    base = json.loads(wat_json(PAGE, [("a.jpg", "an image here"), ("b.jpg", None)], base="/x/"))
    html = base["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]
    for key, value in changes.items():
        html[key] = value
    return base


def links(*objs) -> bytes:
    return json.dumps(doc(**{"HTML-Metadata": {"Head": {"Title": "t"}, "Links": list(objs)}})).encode()


IMG = {"path": "IMG@/src", "url": "a.jpg", "alt": "an image here"}
A_CC = {"path": "A@/href", "url": "https://creativecommons.org/licenses/by-sa/4.0/", "text": "CC BY-SA"}
LINK_CC = {"path": "LINK@/href", "url": "https://creativecommons.org/licenses/by/4.0/", "rel": "license"}


def license_page(anchors: list, head_links, page: str = PAGE, base: str | None = None) -> bytes:
    """A page with `anchors` among its links and `head_links` as its Head.Link."""
    record = doc(**{"HTML-Metadata": {"Head": {"Title": "t", "Link": head_links}, "Links": [IMG, *anchors]}})
    record["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"] = page
    if base is not None:
        record["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Head"]["Base"] = base
    return json.dumps(record).encode()


# (payload, whether the fast path answers it itself)
CASES = [
    (json.dumps(doc()).encode(), True),
    (json.dumps(doc(), ensure_ascii=True).encode(), True),
    (b"  \n" + json.dumps(doc()).encode() + b" \r\n", True),
    (links(IMG | {"alt": "caf\u00e9 \U0001f600"}), True),
    (links(IMG | {"alt": "x"}).replace(b'"alt": "x"', b'"alt": "\\ud83d\\ude00 \\u00e9\\n\\/"'), True),
    (links(IMG).replace(b'"IMG@/src"', b'"IMG@\\/src"'), True),
    (links(IMG | {"text": "t"}).replace(b'"t"}', b'"\xff"}'), True),  # a skipped key: never decoded
    (links(IMG | {"url": None}), False),
    (links(IMG | {"url": 5}), False),
    (links(IMG | {"alt": ["x"]}), False),
    (links(IMG | {"alt": None}), True),
    (links({"path": "IMG@/src"}), True),  # no url: ""
    (links({"path": 5, "url": 1}), True),  # not an img link
    (links({"path": "A@/href", "url": "\ud800"}), False),
    (links(IMG).replace(b'"a.jpg"', b'"a\xff.jpg"'), False),
    (links({"path": "A@/href", "url": "x"}).replace(b'"x"', b'"\xed\xa0\x80"'), False),
    (links({"path": "A@/href", "rel": "x"}).replace(b'"x"', b'"\xc0\x80"'), False),
    (links(IMG, "not an object"), False),
    (json.dumps(doc(**{"HTML-Metadata": {"Links": None}})).encode(), False),
    (json.dumps(doc(**{"HTML-Metadata": None})).encode(), False),
    (json.dumps(doc(**{"HTML-Metadata": {}})).encode(), True),
    (json.dumps(doc(**{"Response-Message": {"Status": 404}})).encode(), True),
    (json.dumps(doc(**{"Response-Message": {"Status": " 200"}})).encode(), False),
    (json.dumps(doc(**{"Response-Message": {"Status": "2_00"}})).encode(), False),
    (json.dumps(doc(**{"Response-Message": {"Status": 200.0}})).encode(), False),
    (json.dumps(doc(**{"Response-Message": {"Status": "-1"}})).encode(), False),
    (json.dumps(doc(**{"Response-Message": "HTTP/1.1 200"})).encode(), True),
    (json.dumps(doc(**{"Response-Message": {"Reason": "\ud800"}})).encode(), False),
    (json.dumps(doc(**{"Response-Message": {"Reas\u00f6n": "ok"}})).encode().replace(b"\xc3\xb6", b"\xff"), False),
    (json.dumps(doc()).encode().replace(b'"Base": "/x/"', b'"Base": {"a": [1, -2.5, true, null]}'), True),
    (json.dumps(doc()).encode().replace(b'"Base": "/x/"', b'"Base": [2e5]'), False),  # an exponent: msgspec's
    (json.dumps(doc()).encode().replace(b'"Base": "/x/"', b'"Base": "/x/", "Base": "/y/"'), False),
    (json.dumps(doc()).encode().replace(b'"Status"', b'"Stat\\u0075s"'), False),
    (json.dumps(doc()).encode() + b"x", False),
    (b"\xef\xbb\xbf" + json.dumps(doc()).encode(), False),
    (json.dumps(doc()).encode().replace(b"Title", b"Ti\x01tle"), False),
    (json.dumps(doc()).encode().replace(b'"a page"', b"01"), False),
    (json.dumps(doc()).encode().replace(b'"a page"', b"[1,]"), False),
    (json.dumps(doc()).encode().replace(b'"a page"', b"[" * 100 + b"]" * 100), False),
    (json.dumps(doc()).encode().replace(b'"a page"', b"[" * 10 + b"]" * 10), True),
    (json.dumps(doc()).encode().replace(b'"a page"', b'"creativecommons.org"'), True),
    (license_page([A_CC, {"path": "A@/href", "url": "/x", "rel": "license"}], [LINK_CC]), True),
    (license_page([A_CC | {"rel": ["license"]}], []), False),
    (license_page([A_CC | {"rel": None}, A_CC | {"url": "http://creativecommons.org/licenses/by/4.0/"}], []), True),
    (license_page([{"path": "A@/href", "url": "/licenses/by/4.0/"}], [], page="https://creativecommons.org/x"), True),
    (license_page([{"path": "A@/href", "url": "../by/"}], [], base="http://www.creativecommons.org/licenses/"), True),
    (license_page([], [LINK_CC, LINK_CC | {"rel": "LICENSE stylesheet"}, LINK_CC | {"rel": "lİcense"}]), True),
    (license_page([], [LINK_CC | {"rel": 5}, LINK_CC | {"url": None}, {"path": "LINK@/href"}]), True),
    (
        license_page(
            [{"path": "A@/href"}], [{"path": "LINK@/href", "rel": "license"}], page="http://creativecommons.org/"
        ),
        True,
    ),
    (license_page([], "not a list"), True),  # no license marker: Head.Link never decoded
    (license_page([A_CC], "not a list"), False),
    (license_page([], [LINK_CC, "not an object"]), False),
    (license_page([], [LINK_CC | {"title": "\ud800"}]), False),
    (license_page([A_CC], []).replace(b"creativecommons.org/licenses", b"creativecommons.org/\\u006cicenses"), True),
    (json.dumps(doc(Headers={"X-Robots-Tag": "noai"})).encode(), True),
    (json.dumps(doc(Headers={"X-Robots-Tag": ["noai", "noimageai"], "TDM-Reservation": "1"})).encode(), True),
    (json.dumps(doc(Headers={"X-Robots-Tag": 5})).encode(), True),
    (
        json.dumps(doc())
        .encode()
        .replace(b'"Title": "a page"', b'"Title": "a page", "Metas": [{"name": "ROBOTS", "content": "noai"}]'),
        True,
    ),
    (
        json.dumps(doc())
        .encode()
        .replace(b'"Title": "a page"', b'"Title": "a page", "Metas": [{"name": "robots"}, 5, null]'),
        True,
    ),
    (json.dumps(doc()).encode().replace(b'"Title": "a page"', b'"Title": "a page", "Metas": {"robots": 1}'), True),
    (json.dumps(doc(Headers={"X-Other": "noai"})).encode(), True),
    (json.dumps({"Envelope": {"Payload-Metadata": {"HTTP-Request-Metadata": {}}}}).encode(), True),  # None
    (json.dumps({"Envelope": {"Payload-Metadata": doc()["Envelope"]["Payload-Metadata"]}}).encode(), False),
    (json.dumps({"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": PAGE}}}).encode(), False),
    (
        json.dumps(doc(**{"Response-Message": {"Status": 200, "Reason": "@N@"}})).encode().replace(b'"@N@"', b"1e309"),
        False,
    ),
    (json.dumps(doc()).encode().replace(b'"Base": "/x/"', b'"Base": ' + b"1" * 4301), False),
    (links(IMG, {"path": "SCRIPT@/src", "url": 1}).replace(b'"url": 1}', b'"url": -1e309}'), False),
    (links(IMG, {"path": "A@/href", "url": "x", "title": 1}).replace(b'"title": 1}', b'"title": 1e309}'), True),
    (license_page([], [LINK_CC, {"path": "LINK@/href", "alt": 1}]).replace(b'"alt": 1}', b'"alt": 1e309}'), False),
    (
        json.dumps(doc()).encode().replace(b'"WARC-Target-URI":', b'"WARC-Target-URI": "x", "WARC-Target-URI":', 1),
        False,
    ),
    (b"[]", False),
    (b"", False),
]


@pytest.mark.parametrize("payload,fast", CASES)
def test_odd_records_are_read_as_msgspec_reads_them(payload, fast):
    assert_same(payload)
    assert answered(payload) == fast


def test_the_worlds_records_are_read_as_msgspec_reads_them(small_world):
    payloads = [p for p in world_records(small_world.wat_uris()) if wat.IMG_MARKER in p]
    assert len(payloads) > 100
    for payload in payloads:
        assert_same(payload)
    assert sum(map(answered, payloads)) > len(payloads) / 2  # the pages without license links, the most


def test_mutated_records_are_read_as_msgspec_reads_them(small_world):
    """Bytes deleted, JSON tokens inserted or swapped, at random places of real and odd records."""
    seeds = [p for p in world_records(small_world.wat_uris()[:1]) if wat.IMG_MARKER in p][:50]
    seeds += [payload for payload, _ in CASES if payload]
    tokens = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"null", b"\\u00e9", b"\\ud83d\\ude00", b"\\ud800"]
    tokens += [b"\xff", b"\xc3", b"\x01", b" ", b"1e5", b"-0", b'"IMG@/src"', b'"url"', b'"alt"', b'"Status"']
    tokens += [b'"Base"', b'"Links"', b'"path"', b"robots", b"ROBOTS", b"creativecommons.org", b'"Head"', b"\\/"]
    rng = random.Random(11)
    fast = 0
    for _ in range(20_000):
        payload = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(payload) + 1)
            op = rng.random()
            if op < 0.3:
                del payload[at : at + rng.randint(1, 8)]
            elif op < 0.7:
                payload[at:at] = rng.choice(tokens)
            elif (found := payload.find(rng.choice(tokens))) >= 0:
                payload[found : found + 1] = rng.choice(tokens)
        assert_same(bytes(payload))
        fast += answered(bytes(payload))
    assert fast > 2_000  # the mutations the fast path reads itself, not only those it leaves to msgspec
