"""URL and alt-text normalisation of `<img>` links, license URLs, and the stable pair uid.

WAT and WARC extraction both end here, so the same page gives the same pairs
whichever file it was read from.
"""

from __future__ import annotations

import re
from html.entities import html5 as _HTML5_ENTITIES
from urllib.parse import urljoin, urlsplit

import xxhash

from clipcrawl.tasks.core.status import PairStatus

_ASCII_WS = " \t\n\r\f"
_DROP_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")  # WHATWG URL parser removes them anywhere
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# Absolute http(s) URL with a plain host: valid without asking urlsplit (the common case).
_PLAIN_HTTP = re.compile(r"https?://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?:[/?#]|$)")
# Its origin (scheme, host, port), followed by the path, query or fragment.
_PLAIN_ORIGIN = re.compile(r"(https?)://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?=[/?#]|$)")
_LICENSE_HOSTS = frozenset({"creativecommons.org", "www.creativecommons.org"})
_LICENSE_PATHS = ("/licenses/", "/publicdomain/")
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")

# Numeric references that HTML5 decodes to another character (its numeric character reference end state):
# NUL -> U+FFFD, and the C1 controls to windows-1252's characters; the five C1 codes windows-1252 leaves
# undefined, and CR, decode to themselves (as html.unescape does).
_CHARREF_REPLACEMENTS = {
    0x00: "\ufffd",
    0x0D: "\r",
    0x80: "\u20ac",
    0x81: "\x81",
    0x82: "\u201a",
    0x83: "\u0192",
    0x84: "\u201e",
    0x85: "\u2026",
    0x86: "\u2020",
    0x87: "\u2021",
    0x88: "\u02c6",
    0x89: "\u2030",
    0x8A: "\u0160",
    0x8B: "\u2039",
    0x8C: "\u0152",
    0x8D: "\x8d",
    0x8E: "\u017d",
    0x8F: "\x8f",
    0x90: "\x90",
    0x91: "\u2018",
    0x92: "\u2019",
    0x93: "\u201c",
    0x94: "\u201d",
    0x95: "\u2022",
    0x96: "\u2013",
    0x97: "\u2014",
    0x98: "\u02dc",
    0x99: "\u2122",
    0x9A: "\u0161",
    0x9B: "\u203a",
    0x9C: "\u0153",
    0x9D: "\x9d",
    0x9E: "\u017e",
    0x9F: "\u0178",
}


def _dropped_codepoint(num: int) -> bool:
    """Code points a numeric reference decodes to nothing (as html.unescape does): controls other than tab,
    newline, form feed and CR (C0, DEL and C1), and the noncharacters U+FDD0-U+FDEF and U+xFFFE/U+xFFFF of
    every plane."""
    return (
        0x01 <= num <= 0x08
        or num == 0x0B
        or 0x0E <= num <= 0x1F
        or 0x7F <= num <= 0x9F
        or 0xFDD0 <= num <= 0xFDEF
        or num & 0xFFFE == 0xFFFE
    )


def _replace_charref(m: re.Match) -> str:
    s = m.group(1)
    if s[0] == "#":
        num = int(s[2:].rstrip(";"), 16) if s[1] in "xX" else int(s[1:].rstrip(";"))
        if num in _CHARREF_REPLACEMENTS:
            return _CHARREF_REPLACEMENTS[num]
        if 0xD800 <= num <= 0xDFFF or num > 0x10FFFF:
            return "\ufffd"
        if _dropped_codepoint(num):
            return ""
        return chr(num)
    if s in _HTML5_ENTITIES:
        return _HTML5_ENTITIES[s]
    # Longest legacy entity (no ';') that prefixes s. In an attribute value HTML5 leaves it
    # alone when followed by '=' or an alphanumeric: "a.php?x=1&copy=2" keeps "&copy=2".
    for x in range(len(s) - 1, 1, -1):
        if s[:x] in _HTML5_ENTITIES:
            nxt = s[x]
            if nxt == "=" or nxt.isascii() and nxt.isalnum():
                return "&" + s
            return _HTML5_ENTITIES[s[:x]] + s[x:]
    return "&" + s


def unescape_attribute(value: str) -> str:
    """Decode character references in an HTML attribute value as a browser does.

    WAT files store attribute values as written in the page; an HTML parser decodes
    them with HTML5's attribute rules, which `html.unescape` does not follow.
    """
    if "&" not in value:
        return value
    return _CHARREF.sub(_replace_charref, value)


def normalize_text(alt: str) -> str:
    """Collapse all Unicode whitespace (nbsp included) to single spaces, trimmed.

    Most alt texts already are: printable (every whitespace but the ASCII space is not), with no double,
    leading or trailing space. Those are returned as they are, without the split and join.
    """
    if alt.isprintable() and "  " not in alt and alt[:1] != " " and alt[-1:] != " ":
        return alt
    return " ".join(alt.split())


def resolve_base(page_url: str, base_href: str | None) -> _Base:
    """The URL relative links of a page resolve against (`<base href>` honoured)."""
    return _Base(_base_url(page_url, base_href))


def _base_url(page_url: str, base_href: str | None) -> str:
    if not base_href:
        return page_url
    base_href = base_href.strip(_ASCII_WS).translate(_DROP_TAB_NEWLINE)
    if not base_href:
        return page_url
    try:
        return urljoin(page_url, base_href)
    except ValueError:
        return page_url


class _Base:
    """A page's base URL split once, to join the common relative forms without urljoin (faster: docs/benchmarks.md)."""

    __slots__ = ("url", "origin", "scheme", "directory")

    def __init__(self, url: str) -> None:
        self.url, self.origin, self.scheme, self.directory = url, None, None, None
        plain = _PLAIN_ORIGIN.match(url) if url.isprintable() else None  # nothing for urlsplit to strip
        if plain is not None:  # the common case, as urlsplit splits it
            self.scheme, self.origin = plain[1], plain[0]
            path = url[plain.end() :].partition("?")[0].partition("#")[0] or "/"
        else:
            try:
                parts = urlsplit(url)
            except ValueError:
                return
            origin = f"{parts.scheme}://{parts.netloc}"
            if parts.scheme not in ("http", "https") or not parts.netloc or not url.startswith(origin):
                return
            self.scheme, self.origin, path = parts.scheme, origin, parts.path or "/"
        self.directory = self.origin + path[: path.rfind("/") + 1]

    def join(self, src: str) -> str:
        # Same result as urljoin for these forms: no dot segments but leading ./ and ../, no query/fragment-only,
        # no trailing ?/#.
        if self.origin is not None and src[-1] not in "?#." and src[0] not in "?#":
            if src[0] == ".":
                return self._join_dotted(src)
            if "/." not in src:
                if src[0] == "/":
                    if src[1:2] == "/":
                        return f"{self.scheme}:{src}"
                    return self.origin + src
                if ":" not in src.split("/", 1)[0]:
                    return self.directory + src
        return urljoin(self.url, src)

    def _join_dotted(self, src: str) -> str:
        """`./a.jpg`, `../../img/a.jpg`: each ../ goes one directory up, never above the root, as urljoin does
        (which also drops empty segments and resolves the base's dot segments: those go to urljoin)."""
        directory, rest = self.directory, src
        path = directory[len(self.origin) :]
        while rest[:2] == "./" or rest[:3] == "../":
            if rest[1] == "/":
                rest = rest[2:]
            else:
                rest = rest[3:]
                if len(directory) > len(self.origin) + 1:  # above the root stays at the root
                    directory = directory[: directory.rfind("/", 0, -1) + 1]
        if (
            rest[:1] not in ("", ".", "/", "?", "#")
            and "/." not in rest
            and "//" not in rest
            and "//" not in path
            and "/." not in path
            and ":" not in rest.split("/", 1)[0]
            and ";" not in rest  # urljoin drops an empty ;params, ?query (a?#b) or #fragment
            and "?#" not in rest
        ):
            return directory + rest
        return urljoin(self.url, src)


def resolve_url(src: str, base: str | _Base) -> tuple[str | None, PairStatus]:
    """Absolute http(s) URL of an img src (already entity-decoded), or None and why not."""
    src = src.strip(_ASCII_WS)
    if not src:
        return None, PairStatus.INVALID_URL
    if "\t" in src or "\n" in src or "\r" in src:
        src = src.translate(_DROP_TAB_NEWLINE)
    if src.startswith(("https://", "http://")):
        url = src  # already absolute: urljoin would return it unchanged (cc2dataset does the same)
    else:
        m = _SCHEME.match(src)
        if m and m.group(1).lower() not in ("http", "https"):
            return None, PairStatus.UNSUPPORTED_SCHEME  # data:, javascript:, ... (no costly parse)
        try:
            url = base.join(src) if isinstance(base, _Base) else urljoin(base, src)
        except ValueError:
            return None, PairStatus.INVALID_URL
    if _PLAIN_HTTP.match(url):
        return url, PairStatus.KEPT
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return None, PairStatus.UNSUPPORTED_SCHEME if parts.scheme else PairStatus.INVALID_URL
        if not parts.hostname:
            return None, PairStatus.INVALID_URL
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None, PairStatus.INVALID_URL
    return url, PairStatus.KEPT


def plain_http_url(src: str) -> bool:
    """True when `src` is already an absolute http(s) URL with a plain host that resolve_url keeps as is.

    The common case (most img srcs): no base needed, no cleanup. Leading whitespace
    fails the pattern; `isprintable` rules out tabs/newlines anywhere and other
    trailing whitespace but a space, checked last. Extraction runs it in C (`_pairs.c`'s
    `plain_http`); this is the rule's statement, which tests/test_pairs.py checks that one against.
    """
    return _PLAIN_HTTP.match(src) is not None and src[-1] != " " and src.isprintable()


def is_license_url(url: str) -> bool:
    """Whether an absolute http(s) URL (from resolve_url) is a Creative Commons license or public-domain tool."""
    if "creativecommons.org" not in url.lower():  # most links of a page: no parse
        return False
    parts = urlsplit(url)
    return parts.hostname in _LICENSE_HOSTS and parts.path.startswith(_LICENSE_PATHS)


def pair_uid(url: str, text: str) -> int:
    """Stable 64-bit id of a (url, text) pair: XXH3-64 (seed 0) of UTF-8 `url + "\\n" + text`.

    XXH3 is a fixed, documented algorithm (xxhash >= 1.0 gives the same value on every
    platform), cheaper than blake2b here; the id only needs to be stable and well mixed.
    """
    return xxh3_64(f"{url}\n{text}".encode("utf-8", "surrogatepass"))


xxh3_64 = xxhash.xxh3_64_intdigest  # also _pairs.c's, for the same uid
