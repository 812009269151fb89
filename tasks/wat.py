"""The `<img>` links of one WAT metadata record (Common Crawl's JSON of a response).

Path: Envelope -> Payload-Metadata -> HTTP-Response-Metadata -> HTML-Metadata -> {Head.Base, Links}.
Links with path "IMG@/src" are img tags; their "url" and "alt" are stored as written
in the page (entities not decoded).

Speed: the JSON is decoded by msgspec into the few typed fields below; everything
else (Container, headers, metas, the links' "text", ...) is validated and skipped
without building Python objects, ~2x faster than a full orjson.loads. Link fields
stay `Any` so a link that is not an img may hold anything, as with a plain decode.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import msgspec

IMG_MARKER = b'"IMG@/src"'
RESPONSE_MARKER = b'"HTTP-Response-Metadata"'
HTML_MARKER = b'"HTML-Metadata"'
IMG_PATH = "IMG@/src"


class MalformedRecord(ValueError):
    """A record whose content cannot be read (bad JSON, unexpected structure, bad HTML)."""


class PageLinks(NamedTuple):
    """What a page offers for pair extraction, before normalisation (raw attribute values)."""

    page_url: str
    base_href: str | None      # as written in <base href> (None: no base)
    status: int | None         # HTTP status of the response
    links: list[tuple[str, str | None]]  # (src, alt or None when the tag has no alt attribute)
    escaped: bool              # True: values still carry HTML character references (WAT)


# The WAT JSON, only as far as extraction reads it (gc=False: no cycles, cheaper to allocate).
class _Link(msgspec.Struct, gc=False):
    path: Any = None
    url: Any = ""
    alt: Any = None


class _Head(msgspec.Struct, gc=False):
    Base: Any = None


class _Html(msgspec.Struct, gc=False):
    Head: Optional[_Head] = None
    Links: Optional[list[_Link]] = None


class _Http(msgspec.Struct, gc=False):
    message: Any = msgspec.field(default=None, name="Response-Message")
    html: Optional[_Html] = msgspec.field(default=None, name="HTML-Metadata")


class _PayloadMetadata(msgspec.Struct, gc=False):
    http: Optional[_Http] = msgspec.field(default=None, name="HTTP-Response-Metadata")


class _WarcHeader(msgspec.Struct, gc=False):
    target_uri: str = msgspec.field(name="WARC-Target-URI")


class _Envelope(msgspec.Struct, gc=False):
    payload: _PayloadMetadata = msgspec.field(name="Payload-Metadata")
    header: Optional[_WarcHeader] = msgspec.field(default=None, name="WARC-Header-Metadata")


class _Record(msgspec.Struct, gc=False):
    Envelope: _Envelope


_DECODER = msgspec.json.Decoder(_Record)


def _status(message: Any) -> int | None:
    try:
        return int(message["Status"])
    except (KeyError, TypeError, ValueError):
        return None


def page_links_from_wat(payload: bytes) -> PageLinks | None:
    """The img links of a WAT record's JSON payload; None when it describes no HTML response."""
    try:
        envelope = _DECODER.decode(payload).Envelope
    except msgspec.ValidationError as exc:
        raise MalformedRecord(f"unexpected WAT structure: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedRecord(f"invalid JSON: {exc}") from None
    http = envelope.payload.http
    if http is None or http.html is None:
        return None
    if envelope.header is None:
        raise MalformedRecord("unexpected WAT structure: no WARC-Header-Metadata")
    html = http.html
    base = html.Head.Base if html.Head is not None else None
    links = [(link.url, link.alt) for link in html.Links or () if link.path == IMG_PATH]
    if not all(isinstance(s, str) and (a is None or isinstance(a, str)) for s, a in links):
        raise MalformedRecord("unexpected WAT structure: non-string url/alt")
    return PageLinks(envelope.header.target_uri, base if isinstance(base, str) else None, _status(http.message),
                     links, True)
