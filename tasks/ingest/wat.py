"""The `<img>` links of one WAT metadata record (Common Crawl's JSON of a response).

Path: Envelope -> Payload-Metadata -> HTTP-Response-Metadata -> HTML-Metadata -> {Head.Base, Head.Link, Links}.
Links with path "IMG@/src" are img tags; their "url" and "alt" are stored as written
in the page (entities not decoded). License candidates are the `<link>` tags (Head.Link,
path "LINK@/href") and the `<a>` tags (Links, path "A@/href"), each with its "rel" if any.
The page's `<meta>` tags, wherever they stand in the page, are HTML-Metadata -> Head -> Metas
(a list of {"name": ..., "content": ...}, or "property"/"http-equiv" in place of "name": a meta tag is
named by its name, else its http-equiv), and its response headers HTTP-Response-Metadata -> Headers
({name: value}, names as sent; a repeated header's values are a list): both are read only for the names
a caller asks for (page opt-outs), at most MAX_PAGE_METAS of each per page.

Speed: the regular record (well-formed) is read by a fast path in C (`_watjson.c`), which builds Python
objects only for the page's URL, base, status, img links and license candidates, and hands over the raw
Metas and Headers that mention a name asked for: the other <a> links, most of a page's, cost no object at
all. Every other record, and any the fast path does not read exactly as msgspec would, goes to
`page_links_msgspec`: the JSON is decoded by msgspec into the few typed fields below; everything else
(Container, the links' "text", ...) is validated and skipped
without building Python objects, faster than a full orjson.loads. Link fields
stay `Any` so a link that is not an img may hold anything, as with a plain decode.
Head.Link is kept undecoded (msgspec.Raw) and read only on pages that mention
creativecommons.org: the license search costs the other pages one bytes search.
Head.Metas and Headers are kept undecoded too, and decoded only when one of the names
asked for appears in them (a bytes search of their lowercased text); Metas into typed entries
(a generic decode only when an entry is no object).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple

import msgspec

from clipcrawl.tasks.ingest import _watjson

IMG_MARKER = b'"IMG@/src"'
RESPONSE_MARKER = b'"HTTP-Response-Metadata"'
HTML_MARKER = b'"HTML-Metadata"'
IMG_PATH = "IMG@/src"
A_PATH = "A@/href"
LICENSE_MARKER = "creativecommons.org"  # no license URL without it: the cheap test before looking for one
_LICENSE_MARKER = LICENSE_MARKER.encode()


# The JSON values a record may hold: msgspec builds the typed fields' values (~60-80 bytes each), so a record of
# tiny values (`[1,1,1,...]`, `[{},{},...]`) costs many times its size; a WAT record of a 1 MiB page has some
# 10,000-100,000. Counted by their commas, before any parsing; a record over it is record_too_large.
MAX_JSON_VALUES = 1_000_000
# The <meta> tags and the header values, of the names asked for, collected from one page: a real page has a few;
# one of 150,000 robots meta tags would cost its reader time for nothing (the first ones say what the page says).
MAX_PAGE_METAS = 1_000


class MalformedRecord(ValueError):
    """A record whose content cannot be read (bad JSON, unexpected structure, bad HTML)."""


class PageLinks(NamedTuple):
    """What a page offers for pair extraction, before normalisation (raw attribute values)."""

    page_url: str
    base_href: str | None  # as written in <base href> (None: no base)
    status: int | None  # HTTP status of the response
    links: list[tuple[str, str | None]]  # (src, alt or None when the tag has no alt attribute)
    escaped: bool  # True: values still carry HTML character references (WAT)
    # (href, rel or None) of the <link rel=license> tags, then of the <a href> tags, each in page order,
    # that may resolve to creativecommons.org (see `relative_licenses`); [] when the page does not mention
    # it. <link> first: a WAT keeps them apart from the <a> tags, so their relative order is unknown.
    license_links: list[tuple[str, Any]]
    # (name lowercased, content as written) of the <meta> tags whose name the caller asked for, in page order
    metas: tuple[tuple[str, str], ...] = ()
    # (name lowercased, value) of the response headers the caller asked for, in order (repeated ones each)
    headers: tuple[tuple[str, str], ...] = ()


def is_license_rel(rel: Any) -> bool:
    """Whether a rel attribute value (space-separated tokens) says `license`."""
    return isinstance(rel, str) and "license" in rel.lower().split()


def relative_licenses(page_url: str, base_href: str | None) -> bool:
    """Whether any href of the page may resolve to creativecommons.org (the page or its <base href> is there);
    else only hrefs naming it can."""
    return LICENSE_MARKER in page_url or (base_href is not None and LICENSE_MARKER in base_href)


# The WAT JSON, only as far as extraction reads it (gc=False: no cycles, cheaper to allocate).
class _Link(msgspec.Struct, gc=False):
    path: Any = None
    url: Any = ""
    alt: Any = None
    rel: Any = None


class _Meta(msgspec.Struct, gc=False):
    name: Any = None
    http_equiv: Any = msgspec.field(default=None, name="http-equiv")
    content: Any = None


class _Head(msgspec.Struct, gc=False):
    Base: Any = None
    Link: msgspec.Raw = msgspec.Raw()
    Metas: msgspec.Raw = msgspec.Raw()


class _Html(msgspec.Struct, gc=False):
    Head: _Head | None = None
    Links: list[_Link] | None = None


class _Http(msgspec.Struct, gc=False):
    message: Any = msgspec.field(default=None, name="Response-Message")
    headers: msgspec.Raw = msgspec.field(default=msgspec.Raw(), name="Headers")
    html: _Html | None = msgspec.field(default=None, name="HTML-Metadata")


class _PayloadMetadata(msgspec.Struct, gc=False):
    http: _Http | None = msgspec.field(default=None, name="HTTP-Response-Metadata")


class _WarcHeader(msgspec.Struct, gc=False):
    target_uri: str = msgspec.field(name="WARC-Target-URI")


class _Envelope(msgspec.Struct, gc=False):
    payload: _PayloadMetadata = msgspec.field(name="Payload-Metadata")
    header: _WarcHeader | None = msgspec.field(default=None, name="WARC-Header-Metadata")


class _Record(msgspec.Struct, gc=False):
    Envelope: _Envelope


_DECODER = msgspec.json.Decoder(_Record)
_HEAD_LINKS_DECODER = msgspec.json.Decoder(list[_Link])
_METAS_DECODER = msgspec.json.Decoder(list[_Meta])


def _status(message: Any) -> int | None:
    try:
        return int(message["Status"])
    except (KeyError, TypeError, ValueError):
        return None


def page_links_from_wat(
    payload: bytes, meta_names: frozenset[str] = frozenset(), header_names: frozenset[str] = frozenset()
) -> PageLinks | None:
    """The img links of a WAT record's JSON payload; None when it describes no HTML response.

    `meta_names` and `header_names` (lowercase): the <meta> tags and response headers to collect.
    The regular record is read by the C fast path; any other by msgspec (`page_links_msgspec`).
    """
    page = _watjson.page(payload, _encoded(meta_names), _encoded(header_names), is_license_rel)
    if page is False:
        return page_links_msgspec(payload, meta_names, header_names)
    if page is None:
        return None
    page_url, base, status, links, license_links, metas_raw, headers_raw = page
    metas = _named_metas(metas_raw, meta_names) if metas_raw is not None else ()
    headers = _named_headers(headers_raw, header_names) if headers_raw is not None else ()
    return PageLinks(page_url, base, status, links, True, license_links, metas, headers)


def page_links_msgspec(
    payload: bytes, meta_names: frozenset[str] = frozenset(), header_names: frozenset[str] = frozenset()
) -> PageLinks | None:
    """page_links_from_wat for every record: decoded by msgspec, the reason of a malformed one said."""
    try:
        envelope = _DECODER.decode(payload).Envelope
    except msgspec.ValidationError as exc:
        raise MalformedRecord(f"unexpected WAT structure: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"invalid JSON: {exc}") from None
    except RecursionError:  # msgspec decodes values of `Any` fields recursively
        raise MalformedRecord("JSON nested too deep") from None
    http = envelope.payload.http
    if http is None or http.html is None:
        return None
    if envelope.header is None:
        raise MalformedRecord("unexpected WAT structure: no WARC-Header-Metadata")
    html = http.html
    page_url = envelope.header.target_uri
    base = html.Head.Base if html.Head is not None else None
    base = base if isinstance(base, str) else None
    links = [(link.url, link.alt) for link in html.Links or () if link.path == IMG_PATH]
    if not all(isinstance(s, str) and (a is None or isinstance(a, str)) for s, a in links):
        raise MalformedRecord("unexpected WAT structure: non-string url/alt")
    license_links = []
    if _LICENSE_MARKER in payload:
        license_links = _license_links(html, relative_licenses(page_url, base))
    metas = _named_metas(html.Head.Metas, meta_names) if meta_names and html.Head is not None else ()
    headers = _named_headers(http.headers, header_names) if header_names else ()
    return PageLinks(page_url, base, _status(http.message), links, True, license_links, metas, headers)


@functools.cache
def _encoded(names: frozenset[str]) -> tuple[bytes, ...]:
    """The names to search for: one that holds another (x-robots-tag holds robots) is found by that one's search."""
    return tuple(name.encode() for name in names if not any(other in name for other in names if other != name))


def _mentions(raw: msgspec.Raw | bytes, names: frozenset[str]) -> bool:
    """Whether a raw JSON value may hold one of `names` (lowercase ASCII): the cheap test before decoding it."""
    if not raw:
        return False
    text = bytes(raw).lower()
    return any(name in text for name in _encoded(names))


def _decode_any(raw: msgspec.Raw | bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def _decode_metas(raw: msgspec.Raw | bytes) -> list[_Meta]:
    """Head.Metas as _Meta entries: typed (the common case, some 3x faster than a generic decode), else from a
    generic decode, where an entry that is no object is none."""
    try:
        return _METAS_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included: an entry that is no object
        pass
    metas = _decode_any(raw)
    return [
        _Meta(meta.get("name"), meta.get("http-equiv"), meta.get("content"))
        for meta in (metas if isinstance(metas, list) else ())
        if isinstance(meta, dict)
    ]


def _named_metas(raw: msgspec.Raw | bytes, names: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """PageLinks.metas from Head.Metas (the first MAX_PAGE_METAS); an entry of unexpected shape is none of them.
    A meta tag is named by its name, else by its http-equiv (`<meta http-equiv="X-Robots-Tag" content="noai">`)."""
    if not _mentions(raw, names):
        return ()
    out = []
    for meta in _decode_metas(raw):
        name = meta.name if meta.name is not None else meta.http_equiv
        if type(name) is str and type(meta.content) is str and (key := name.strip().lower()) in names:
            out.append((key, meta.content))
            if len(out) == MAX_PAGE_METAS:
                break
    return tuple(out)


def _named_headers(raw: msgspec.Raw | bytes, names: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """PageLinks.headers from HTTP-Response-Metadata.Headers (names case-insensitive, repeated values a list), the
    first MAX_PAGE_METAS values."""
    if not _mentions(raw, names):
        return ()
    headers = _decode_any(raw)
    out = []
    for name, value in headers.items() if isinstance(headers, dict) else ():
        if (key := name.strip().lower()) in names:
            out += [(key, v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return tuple(out[:MAX_PAGE_METAS])


def _license_links(html: _Html, every: bool) -> list[tuple[str, Any]]:
    """PageLinks.license_links; a link of unexpected shape is no candidate (the page's pairs stay)."""
    head = []
    if html.Head is not None and html.Head.Link:
        with contextlib.suppress(msgspec.ValidationError):
            head = _HEAD_LINKS_DECODER.decode(html.Head.Link)
    out = [
        (link.url, link.rel)
        for link in head
        if isinstance(link.url, str) and is_license_rel(link.rel) and (every or LICENSE_MARKER in link.url)
    ]
    out += [
        (link.url, link.rel)
        for link in html.Links or ()
        if link.path == A_PATH and isinstance(link.url, str) and (every or LICENSE_MARKER in link.url)
    ]
    return out
