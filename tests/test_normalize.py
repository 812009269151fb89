"""URL/alt normalisation helpers, uid, and the batched language detector."""

import html
from urllib.parse import urljoin

import pytest

from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.ingest.language import LanguageDetector
from clipcrawl.tasks.ingest.normalize import normalize_text, pair_uid, resolve_base, resolve_url, unescape_attribute


@pytest.mark.parametrize(
    "raw,decoded",
    [
        ("a &amp; b", "a & b"),
        ("&eacute;t&eacute;", "été"),
        ("x=1&copy=2", "x=1&copy=2"),
        ("&copy 2024", "© 2024"),
        ("&#233;&#xE9;", "éé"),
        ("&#128;", "€"),
        ("&nosuch;", "&nosuch;"),
        ("plain", "plain"),
        ("&amp", "&"),
    ],
)
def test_unescape_attribute(raw, decoded):
    assert unescape_attribute(raw) == decoded


def test_unescape_matches_html_unescape_outside_attribute_rule():
    for s in ["&lt;b&gt;", "&quot;q&quot;", "&nbsp;", "&#0;", "&#x110000;"]:
        assert unescape_attribute(s) == html.unescape(s)


def test_numeric_references_decode_as_html_unescape_does():
    """Decimal and hex references to every code point, and past U+10FFFF, decode as html.unescape's."""
    for n in (*range(0x110001), 0x10FFFFF, 10**12):
        for ref in (f"&#{n};", f"&#x{n:X};"):
            assert unescape_attribute(ref) == html.unescape(ref), ref


def test_normalize_text():
    assert normalize_text("  a\u00a0b\n\tc\u2003d  ") == "a b c d"


@pytest.mark.parametrize(
    "base", ["http://h.com/dir/page.html?q=1#f", "https://h.com", "http://h.com/a/b/", "http://u:p@h.com:81/x;p?y"]
)
@pytest.mark.parametrize(
    "src",
    [
        "a.jpg",
        "/a.jpg",
        "//c.org/a.jpg",
        "a/b c.jpg",
        "a.jpg?x=1",
        "a.jpg#z",
        "../a.jpg",
        "./a.jpg",
        "/a/../b.jpg",
        "a.jpg?",
        "/.x",
        "a;b.jpg",
        "/a.jpg?u=http://x",
        "ä.jpg",
    ],
)
def test_fast_join_equals_urljoin(base, src):
    assert resolve_url(src, resolve_base(base, None)) == (urljoin(base, src), PairStatus.KEPT)


@pytest.mark.parametrize(
    "src,status",
    [
        ("data:image/png;base64,xx", PairStatus.UNSUPPORTED_SCHEME),
        ("JavaScript:void(0)", PairStatus.UNSUPPORTED_SCHEME),
        ("ftp://h/a.jpg", PairStatus.UNSUPPORTED_SCHEME),
        ("", PairStatus.INVALID_URL),
        ("  ", PairStatus.INVALID_URL),
        ("http://", PairStatus.INVALID_URL),
        ("//", PairStatus.INVALID_URL),
        ("http://h.com:99999999/x", PairStatus.INVALID_URL),
    ],
)
def test_rejected_urls(src, status):
    assert resolve_url(src, resolve_base("http://h.com/p", None)) == (None, status)


def test_base_href():
    assert resolve_url("z.jpg", resolve_base("http://h.com/p/q.html", "/assets/")) == (
        "http://h.com/assets/z.jpg",
        PairStatus.KEPT,
    )
    assert resolve_url("z.jpg", resolve_base("http://h.com/p/q.html", "  ")) == (
        "http://h.com/p/z.jpg",
        PairStatus.KEPT,
    )


def test_pair_uid_stable():
    assert pair_uid("http://a/b.jpg", "a cat") == pair_uid("http://a/b.jpg", "a cat")
    assert pair_uid("http://a/b.jpg", "a cat") != pair_uid("http://a/b.jpg\na", "cat")
    assert 0 <= pair_uid("u", "t") < 2**64


@pytest.mark.parametrize(
    "text,lang",
    [
        ("A red bicycle leaning against the wall", "en"),
        ("Ein rotes Fahrrad lehnt an der Wand", "de"),
        ("un vélo rouge contre le mur", "fr"),
        ("Красный велосипед стоит у стены", "ru"),
        ("赤い自転車が壁に立てかけてある", "ja"),
        ("靠在墙上的红色自行车", "zh"),
        ("UPPER CASE ENGLISH TEXT HERE", "en"),
    ],
)
def test_language_detects_real_languages(text, lang):
    assert LanguageDetector().detect(text) == lang


def test_language_batch_and_odd_texts():
    texts = [
        "A red bicycle leaning against the wall",
        "Ein rotes Fahrrad lehnt an der Wand",
        "x",
        "",
        "12345",
        "line one\nline two",
        "lange " * 500,
    ]
    detector = LanguageDetector()
    first = detector.detect_many(texts * 2)
    assert first[:2] == ["en", "de"] and first == first[: len(texts)] * 2
    assert all(isinstance(code, str) and 2 <= len(code) <= 3 for code in first)
    assert detector.detect_many(texts) == first[: len(texts)]  # a later batch: same answers
