"""The `<img>` links of one WAT metadata record (Common Crawl's JSON of a response).

Path: Envelope -> Payload-Metadata -> HTTP-Response-Metadata -> HTML-Metadata -> {Head.Base, Links}.
Links with path "IMG@/src" are img tags; their "url" and "alt" are stored as written
in the page (entities not decoded).
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

IMG_MARKER = b'"IMG@/src"'
RESPONSE_MARKER = b'"HTTP-Response-Metadata"'
HTML_MARKER = b'"HTML-Metadata"'


class MalformedRecord(ValueError):
    """A record whose content cannot be read (bad JSON, unexpected structure, bad HTML)."""


class PageLinks(NamedTuple):
    """What a page offers for pair extraction, before normalisation (raw attribute values)."""

    page_url: str
    base_href: str | None      # as written in <base href> (None: no base)
    status: int | None         # HTTP status of the response
    links: list[tuple[str, str | None]]  # (src, alt or None when the tag has no alt attribute)
    escaped: bool              # True: values still carry HTML character references (WAT)


def _status(http: dict) -> int | None:
    try:
        return int(http["Response-Message"]["Status"])
    except (KeyError, TypeError, ValueError):
        return None


def page_links_from_wat(payload: bytes) -> PageLinks | None:
    """The img links of a WAT record's JSON payload; None when it describes no HTML response."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedRecord(f"invalid JSON: {exc}") from None
    try:
        envelope = doc["Envelope"]
        http = envelope["Payload-Metadata"].get("HTTP-Response-Metadata")
        if http is None:
            return None
        html = http.get("HTML-Metadata")
        if html is None:
            return None
        page_url = envelope["WARC-Header-Metadata"]["WARC-Target-URI"]
        head = html.get("Head") or {}
        base = head.get("Base")
        links = [
            (link.get("url", ""), link.get("alt"))
            for link in html.get("Links") or ()
            if link.get("path") == "IMG@/src"
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedRecord(f"unexpected WAT structure: {exc!r}") from None
    if not isinstance(page_url, str) or not all(isinstance(s, str) and (a is None or isinstance(a, str)) for s, a in links):
        raise MalformedRecord("unexpected WAT structure: non-string url/alt")
    return PageLinks(page_url, base if isinstance(base, str) else None, _status(http), links, True)
