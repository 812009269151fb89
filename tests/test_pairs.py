"""The per-link loop in C (tasks/ingest/_pairs.c) against the same loop in Python, step for step as
normalize.py's functions run it: the same pairs, uids, drop reasons and counts, on the world's pages and on
random pages of odd srcs and alts."""

from __future__ import annotations

import contextlib
import random

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.ingest.extract import FileStats, _page_base, _PairBuilder
from clipcrawl.tasks.ingest.normalize import (
    normalize_text,
    pair_uid,
    plain_http_url,
    resolve_url,
    unescape_attribute,
)
from clipcrawl.tasks.ingest.wat import MalformedRecord, PageLinks, page_links_from_wat
from tests.test_watjson import world_records

SETTINGS = ExtractSettings(detect_language=False)

SRCS = [
    "http://example.com/a.jpg",
    "https://cdn.example.org:8080/p/x.png?w=1#f",
    "http://example.com:123456/x.jpg",
    "http://example.com:/x.jpg",
    "http://a.com",
    "HTTP://EXAMPLE.COM/upper.jpg",
    "http://例え.jp/画像.jpg",
    "http://a.com/é.jpg",
    "http://a.com/\x00.jpg",
    "http://a.com/\u200b.jpg",
    "http://a.com/x.jpg ",
    "http://a.com/x.jpg\n",
    "http://a.com/\ud800.jpg",
    "http://[::1]/v6.jpg",
    "http://[::1/broken.jpg",
    "a.jpg",
    "/root.jpg",
    "//cdn.example.net/p.jpg",
    "../../up.jpg",
    "./here.jpg",
    "?q=1",
    "#frag",
    "",
    "   ",
    " a.jpg\n",
    "\ta b.jpg",
    "a.php?x=1&amp;y=2",
    "&#x68;ttp://a.com/ref.jpg",
    "q.php?a=1&copy=2",
    "data:image/png;base64,AAAA",
    "javascript:void(0)",
    "ftp://files.example.com/a.jpg",
    "mailto:a@b.c",
    "http://",
    "img/a b.jpg",
    "a:b/c.jpg",
    "a/b:c.jpg",
    "x.jpg.",
    "/.hidden/x.jpg",
    "/a/./b.jpg",
    "//cdn.example.net:99999/p.jpg",
    "//bad host/p.jpg",
    "//[::1]/p.jpg",
    "/root.jpg?x#y",
    "C:\\images\\a.jpg",
    "+x:y",
    "1abc:def.jpg",
    "é/x.jpg",
    "ｈttp://fullwidth.example/x.jpg",
    "http:relative.jpg",
    "HTTPS:relative.jpg",
    "Data:image/png;base64,AAAA",
    "about:blank",
]
ALTS = [
    None,
    "",
    "abcd",
    "abcde",
    "x" * 5000,
    "a red bicycle",
    "Tom &amp; Jerry &eacute;t&eacute;",
    "&nbsp;&nbsp;spaced&nbsp;out",
    "  leading and trailing  ",
    "double  space inside",
    "tab\tand\nnewline",
    "Красный велосипед у стены",
    "赤い自転車です",
    "\u00a0nbsp around\u00a0",
    "\ud800 a lone surrogate here",
    "line\u2028separator text",
    "soft\u00adhyphen text",
    "IMG_0001.JPG",
    "&#0; &#x80; &#xD800; nul and c1",
    "emoji 😀 in the caption",
]
PAGES = [
    ("http://example.com/dir/page.html", None),
    ("https://a.example/", "/other/base/"),
    ("http://example.com/x/y.html", " http://b.example/c/ "),
    ("http://[::1]/v6/page.html", None),
    ("ftp://files.example/page.html", None),
    ("HTTP://EXAMPLE.COM/Upper/page.html", None),
    ("https://a.example:8443/dir/sub/", None),
    ("http://例え.jp/ページ/p.html", None),
    ("http://example.com/dir/page.html", "../base/./up/"),
    ("http://example.com/dir/page.html", "javascript:alert(1)"),
]


def reference_add(page: PageLinks, withheld: PairStatus | None, state: dict) -> tuple[int, int]:
    """The per-link loop as it ran in Python, with normalize.py's functions (`withheld`: the page's opt-out)."""
    with_alt = kept = 0
    base = None
    for src, alt in page.links:
        if alt is None:
            state["dropped"][PairStatus.NO_ALT.value] = state["dropped"].get(PairStatus.NO_ALT.value, 0) + 1
            continue
        with_alt += 1
        if page.escaped and "&" in alt:
            alt = unescape_attribute(alt)
        text = normalize_text(alt)
        why = None
        if len(text) < SETTINGS.min_alt_length:
            why = PairStatus.ALT_TOO_SHORT
        elif len(text) > SETTINGS.max_alt_length:
            why = PairStatus.ALT_TOO_LONG
        else:
            if page.escaped and "&" in src:
                src = unescape_attribute(src)
            if plain_http_url(src):
                url = src
            else:
                if base is None:
                    base = _page_base(page)
                url, why = resolve_url(src, base)
                why = None if url is not None else why
            if why is None and withheld is not None:
                why = withheld
            if why is None:
                uid = pair_uid(url, text)
                if uid in state["seen"]:
                    why = PairStatus.DUPLICATE
                else:
                    state["seen"].add(uid)
                    state["rows"].append((uid, url, text))
                    kept += 1
        if why is not None:
            state["dropped"][why.value] = state["dropped"].get(why.value, 0) + 1
    return with_alt, kept


def assert_same(pages: list[PageLinks]) -> int:
    """Both loops over the same pages, one file (duplicates across pages count); returns the pairs kept."""
    state = {"seen": set(), "rows": [], "dropped": {}}
    builder = _PairBuilder(SETTINGS, FileStats(uri="x"))
    with_alt = kept = 0
    for page in pages:
        withheld = builder.rules.verdict(page) if page.metas or page.headers else None
        a, k = reference_add(page, withheld, state)
        with_alt, kept = with_alt + a, kept + k
        builder.add(page)
    assert list(zip(builder.uids, builder.urls, builder.texts)) == state["rows"]
    assert builder.stats.dropped == state["dropped"]
    assert (builder.stats.with_alt, builder.stats.kept) == (with_alt, kept)
    return kept


def test_the_worlds_pages_give_the_same_pairs(small_world):
    pages = []
    for payload in world_records(small_world.wat_uris()):
        with contextlib.suppress(MalformedRecord):  # the world's broken records (test_extract's cases)
            if (page := page_links_from_wat(payload)) is not None and page.links:
                pages.append(page)
    assert len(pages) > 100
    assert assert_same(pages) > 500


def test_random_pages_of_odd_links_give_the_same_pairs():
    rng = random.Random(17)
    pages = []
    for _ in range(3000):
        page_url, base = rng.choice(PAGES)
        links = [(rng.choice(SRCS), rng.choice(ALTS)) for _ in range(rng.randint(0, 12))]
        metas = (("robots", "noai"),) if rng.random() < 0.1 else ()  # the page opts out: its pairs are withheld
        pages.append(PageLinks(page_url, base, 200, links, rng.random() < 0.7, [], metas))
    assert assert_same(pages) > 500
