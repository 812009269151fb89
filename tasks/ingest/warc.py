"""The `<img>` links (and license candidates, and the `<meta>` tags asked for) of one WARC response record holding
an HTML page (any charset)."""

from __future__ import annotations

import itertools
import re

from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from clipcrawl.tasks.ingest.wat import (
    LICENSE_MARKER,
    MAX_PAGE_METAS,
    MalformedRecord,
    PageLinks,
    is_license_rel,
    relative_licenses,
)

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_SNIFF = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|meta|title)[\s>]", re.I | re.S)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
# The parse tree costs ~200 bytes an element whatever the element, so a page of tiny tags (`<b>` x 5 million in
# 16 MiB) would cost a GB: a page is parsed up to its MAX_HTML_TAGS-th tag (~40 MB of tree). A page of 1 MiB, Common
# Crawl's limit, holds some 10,000-30,000 tags.
MAX_HTML_TAGS = 200_000


def is_html(content_type: str | None, payload_start: bytes) -> bool:
    """Declared text/html (or XHTML), or undeclared/generic and sniffed as HTML."""
    if content_type:
        ctype = content_type.split(";", 1)[0].strip().lower()
        if ctype in HTML_TYPES:
            return True
        if ctype not in ("", "application/octet-stream", "text/plain", "unknown/unknown"):
            return False
    return bool(_SNIFF.match(payload_start[:1024]))


def cap_tags(payload: bytes) -> tuple[bytes, bool]:
    """The page up to its MAX_HTML_TAGS-th `<`, and whether it was cut."""
    if len(payload) <= MAX_HTML_TAGS or payload.count(b"<") <= MAX_HTML_TAGS:
        return payload, False
    at = -1
    for _ in range(MAX_HTML_TAGS + 1):
        at = payload.find(b"<", at + 1)
    return payload[:at], True


def decode_html(payload: bytes, http_charset: str | None) -> str:
    """HTML text: HTTP header charset, else <meta charset>, else detection."""
    encoding = http_charset
    if not encoding:
        m = _META_CHARSET.search(payload, 0, 2048)
        encoding = m.group(1).decode("ascii") if m else detect_encoding(payload)
    try:
        return bytes_to_str(payload, encoding)
    except LookupError:  # unknown charset label
        return bytes_to_str(payload, detect_encoding(payload))


def page_links_from_html(
    page_url: str,
    status: int | None,
    payload: bytes,
    http_charset: str | None,
    meta_names: frozenset[str] = frozenset(),
) -> PageLinks:
    """Img tags (with a src attribute), the first <base href>, the license candidates of an HTML page, and its
    <meta> tags (with a content attribute) whose name (else http-equiv), lowercased, is one of `meta_names`,
    wherever they stand (as Common Crawl's WAT lists them), from the same parse tree: the first MAX_PAGE_METAS."""
    try:
        text = decode_html(payload, http_charset)
        tree = HTMLTree.parse(text)
    except (UnicodeError, ValueError) as exc:
        raise MalformedRecord(f"undecodable HTML: {exc}") from None
    document = tree.document
    if document is None:
        raise MalformedRecord("unparsable HTML")
    base = document.query_selector("base[href]")
    base_href = base.getattr("href") if base is not None else None
    # .values(): iterating an element list itself takes time quadratic in its length (resiliparse 2.0.1;
    # figures in docs/benchmarks.md).
    imgs = document.get_elements_by_tag_name("img").values()
    links = [(img.getattr("src"), img.getattr("alt")) for img in imgs if img.hasattr("src")]
    every = relative_licenses(page_url, base_href)
    license_links = _license_links(document, every) if every or LICENSE_MARKER in text else []
    metas = ()
    if meta_names:  # one more walk of the tree, in C (docs/ingest.md has its cost); few metas reach Python
        named = (
            (key, content)
            for meta in document.get_elements_by_tag_name("meta").values()
            if (name := meta.getattr("name") or meta.getattr("http-equiv")) is not None
            and (key := name.strip().lower()) in meta_names
            and (content := meta.getattr("content")) is not None
        )
        metas = tuple(itertools.islice(named, MAX_PAGE_METAS))
    return PageLinks(page_url, base_href, status, links, False, license_links, metas)


def _license_links(document, every: bool) -> list[tuple[str, str | None]]:
    """PageLinks.license_links, selected by CSS (faster than visiting every <a> from Python)."""
    href = "href" if every else f'href*="{LICENSE_MARKER}"'
    out = [
        (link.getattr("href"), link.getattr("rel"))
        for link in document.query_selector_all(f"link[{href}]").values()
        if is_license_rel(link.getattr("rel"))
    ]
    out += [(a.getattr("href"), a.getattr("rel")) for a in document.query_selector_all(f"a[{href}]").values()]
    return out
