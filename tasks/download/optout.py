"""Opt-outs a site declares for our user agent: X-Robots-Tag headers and robots.txt.

Pure functions on header values and robots.txt text; clipcrawl.tasks.download.fetch does the network part.
robots.txt follows RFC 9309: the groups naming our product token apply (else the `*` groups), the
longest matching pattern decides, an Allow wins a tie, `*` and `$` are wildcards, and paths and
patterns are compared with unreserved escapes decoded and reserved ones (%2F) kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

# X-Robots-Tag directives that withhold an image from an AI/search dataset. "none" is
# Google's shorthand for "noindex, nofollow", so it opts out as noindex does.
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# Directives that carry a value after a colon: "unavailable_after: <date>" is no user agent.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_AGENT_NAME = re.compile(r"[a-z0-9_\-]+|\*")
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least the first 500 KiB


def _agent_matches(agent: str, token: str) -> bool:
    name = product_token(agent)
    return agent.strip() == "*" or bool(name) and name == product_token(token)


def x_robots_opt_out(values: Iterable[str], token: str) -> str | None:
    """The opt-out directive among X-Robots-Tag header values that applies to `token`, or None.

    Each value is a comma list; a "useragent: directives" prefix scopes the directives after it
    (to the end of that header value) to that user agent, e.g. "otherbot: noai" does not apply
    to clipcrawl and "clipcrawl: noindex" does. Unscoped directives apply to everyone.
    """
    for value in values:
        agent: str | None = None
        for part in value.split(","):
            name, colon, rest = part.strip().partition(":")
            name = name.strip().lower()
            if colon and name not in _VALUED_DIRECTIVES:
                if not _AGENT_NAME.fullmatch(name):
                    continue  # a stray piece of a date value, not a user agent
                agent, name = name, rest.strip().lower()
            if name in OPT_OUT_DIRECTIVES and (agent is None or _agent_matches(agent, token)):
                return name
    return None


# RFC 3986 §2.2-2.3 character classes; `%` is left out of both, so a stray one is encoded as data.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RESERVED = frozenset(":/?#[]@!$&'()*+,;=")
_HEX_DIGITS = frozenset("0123456789ABCDEFabcdef")
_URI_CHARACTERS = _UNRESERVED | _RESERVED
_DELETE_URI_CHARACTERS = str.maketrans("", "", "".join(_URI_CHARACTERS))
# RFC 9309 §2.2.3: a pattern writes a literal `*` or `$` as %2A or %24, since the bare ones are special.
_PATTERN_LITERALS = frozenset("*$")


def _holds_only_uri_characters(text: str) -> bool:
    return text.isascii() and not text.translate(_DELETE_URI_CHARACTERS)


def _escape(char: str) -> str:
    return "".join(f"%{octet:02X}" for octet in char.encode("utf-8", "surrogatepass"))


def normalize_path(text: str, literals: frozenset[str] = frozenset()) -> str:
    """`text` (a URL's path and query, or a robots.txt pattern) as RFC 9309 §2.2.2 compares it.

    Escapes of unreserved characters are decoded (`%41` is `A`, `%7E` is `~`); escapes of reserved
    characters stay escaped, so `%2F` never equals `/`; hex digits are uppercased (`%2f` is `%2F`);
    non-ASCII characters become the %XX escapes of their UTF-8 octets, and so do characters a URI
    cannot hold as they are (space, `"`, a `%` that starts no escape). `literals` are the reserved
    characters whose escapes are decoded too (a pattern's %2A and %24).
    """
    if _holds_only_uri_characters(text):
        return text  # the common case: nothing to decode or encode
    out: list[str] = []
    for i, chunk in enumerate(text.split("%")):
        if i:  # the chunk follows a %
            pair = chunk[:2]
            if len(pair) == 2 and pair[0] in _HEX_DIGITS and pair[1] in _HEX_DIGITS:
                char = chr(int(pair, 16))
                out.append(char if char in _UNRESERVED or char in literals else "%" + pair.upper())
                chunk = chunk[2:]
            else:
                out.append("%25")
        if _holds_only_uri_characters(chunk):
            out.append(chunk)
        else:
            out.extend(char if char in _URI_CHARACTERS else _escape(char) for char in chunk)
    return "".join(out)


class RobotsRule(NamedTuple):
    """One Allow/Disallow line, compiled: the pattern's pieces between its `*` wildcards."""

    allow: bool
    pattern: str  # as written in robots.txt
    pieces: tuple[str, ...]  # normalized; a literal `*` or `$` in them is an ordinary character
    anchored: bool  # the pattern ended with `$`: the match must reach the end of the path
    octets: int  # RFC 9309 §2.2.2: the most specific match is the one with the most octets

    @classmethod
    def compile(cls, allow: bool, pattern: str) -> RobotsRule:
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        pieces = tuple(normalize_path(piece, _PATTERN_LITERALS) for piece in body.split("*"))
        return cls(allow, pattern, pieces, anchored, len(normalize_path(pattern)))

    def matches(self, path: str) -> bool:
        """Whether this rule matches `path`, already normalized, from its first octet.

        No regex: the pieces between the `*`s are found left to right, each at its first place (which
        is always right for `*`-only patterns), so a hostile pattern like /*a*a*a*a*a*a*a*X costs a few
        scans of the path, where a backtracking regex would take hours.
        """
        first, *rest = self.pieces
        if not path.startswith(first):
            return False
        pos = len(first)
        if not rest:
            return not self.anchored or pos == len(path)
        *middle, last = rest
        for piece in middle:
            found = path.find(piece, pos)
            if found < 0:
                return False
            pos = found + len(piece)
        if self.anchored:
            return path.endswith(last) and len(path) - len(last) >= pos
        return path.find(last, pos) >= 0


@dataclass(frozen=True)
class RobotsRules:
    """The Allow/Disallow rules of one robots.txt group set that apply to one user agent."""

    rules: tuple[RobotsRule, ...] = ()

    def allows(self, path: str) -> bool:
        """True when `path` (path and query of a URL, as sent) may be fetched (RFC 9309 §2.2.2).

        The longest matching pattern decides, an Allow wins a tie, no match allows, and /robots.txt
        itself is always allowed.
        """
        path = normalize_path(path or "/")
        if path.partition("?")[0] == "/robots.txt":
            return True
        best_allow, best_octets = True, -1
        for rule in self.rules:
            if rule.octets < best_octets or (rule.octets == best_octets and not rule.allow):
                continue
            if rule.matches(path):
                best_allow, best_octets = rule.allow, rule.octets
        return best_allow


ALLOW_ALL = RobotsRules()


def path_matches(pattern: str, path: str) -> bool:
    """Whether robots.txt `pattern` matches `path` (a URL's path and query): `*` any octets, a final `$` the end."""
    return RobotsRule.compile(False, pattern).matches(normalize_path(path))


def product_token(agent: str) -> str:
    """The product token of a user agent, lowercased: its name without version or comment.

    RFC 9309 §2.2.1 allows letters, `_` and `-` in it; like Google's parser, the name is read up to the
    first other character, so "ClipCrawl/1.0" and "clipcrawl (+https://...)" both name "clipcrawl",
    while "clipcrawl-images" names another crawler.
    """
    agent = agent.strip()
    end = 0
    while end < len(agent) and (agent[end].isascii() and agent[end].isalpha() or agent[end] in "_-"):
        end += 1
    return agent[:end].lower()


def _lines(text: str) -> Iterable[tuple[str, str]]:
    for line in text.splitlines():
        key, colon, value = line.split("#", 1)[0].partition(":")
        if colon:
            yield key.strip().lower(), value.strip()


def parse_robots(text: str, token: str) -> RobotsRules:
    """The rules of robots.txt `text` for the crawler whose product token is `token` (RFC 9309 §2.2.1).

    Groups whose user-agent lines name the token (case-insensitively, versions ignored) are merged
    and win over `*` groups, which are merged too; with neither, everything is allowed. Lines other
    than user-agent/allow/disallow (sitemap, crawl-delay, unknown) are ignored and do not end a group.
    """
    groups: list[tuple[list[str], list[RobotsRule]]] = []
    in_agents = False  # consecutive user-agent lines share one group
    # a UTF-8 byte order mark is no part of the first line's key (many real robots.txt files start with one)
    for key, value in _lines(text[:ROBOTS_MAX_BYTES].removeprefix("\ufeff")):
        if key in ("user-agent", "useragent"):
            if not in_agents:
                groups.append(([], []))
                in_agents = True
            groups[-1][0].append("*" if value.split(maxsplit=1)[:1] == ["*"] else product_token(value))
        elif key in ("allow", "disallow") and groups:
            in_agents = False
            if value:  # an empty Disallow allows everything: no rule
                groups[-1][1].append(RobotsRule.compile(key == "allow", value))
    ours = product_token(token)
    specific = [g for g in groups if ours and ours in g[0]]
    chosen = specific or [g for g in groups if "*" in g[0]]
    return RobotsRules(tuple(rule for _, rules in chosen for rule in rules))
