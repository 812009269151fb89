"""Opt-outs a site declares for our user agent: X-Robots-Tag headers and robots.txt.

Pure functions on header values and robots.txt text; clipcrawl.tasks.download.fetch does the network part.
robots.txt follows RFC 9309 (Google's rules): the most specific user-agent group wins,
the longest matching pattern decides, `*` and `$` wildcards, an Allow wins a tie.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

# X-Robots-Tag directives that withhold an image from an AI/search dataset. "none" is
# Google's shorthand for "noindex, nofollow", so it opts out as noindex does.
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# Directives that carry a value after a colon: "unavailable_after: <date>" is no user agent.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_AGENT_NAME = re.compile(r"[a-z0-9_\-]+|\*")
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least the first 500 KiB


def _agent_matches(agent: str, token: str) -> bool:
    agent = agent.split("/", 1)[0].strip().lower()  # "clipcrawl/1.0" names the product "clipcrawl"
    return agent == "*" or agent == token.lower()


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


@dataclass(frozen=True)
class RobotsRules:
    """The Allow/Disallow rules of one robots.txt group set that apply to one user agent."""

    rules: tuple[tuple[bool, str], ...] = ()  # (allow, pattern), patterns percent-decoded

    def allows(self, path: str) -> bool:
        """True when `path` (path and query of a URL) may be fetched."""
        path = unquote(path or "/")
        if path == "/robots.txt":
            return True
        best_allow, best_len = True, -1
        for allow, pattern in self.rules:
            if len(pattern) < best_len or not path_matches(pattern, path):
                continue
            if len(pattern) > best_len or allow:  # longest match wins; on a tie the Allow
                best_allow, best_len = allow, len(pattern)
        return best_allow


ALLOW_ALL = RobotsRules()


def path_matches(pattern: str, path: str) -> bool:
    """A robots.txt path pattern matched at the start of `path`: `*` any characters, a final `$` the end.

    No regex: the pieces between the `*`s are found left to right, each at its first place (which is
    always right for `*`-only patterns), so a hostile pattern like /*a*a*a*a*a*a*a*X costs a few
    scans of the path, where a backtracking regex would take hours.
    """
    anchored = pattern.endswith("$")
    first, *rest = pattern.rstrip("$").split("*")
    if not path.startswith(first):
        return False
    pos = len(first)
    if not rest:
        return not anchored or pos == len(path)
    *middle, last = rest
    for piece in middle:
        found = path.find(piece, pos)
        if found < 0:
            return False
        pos = found + len(piece)
    if anchored:
        return path.endswith(last) and len(path) - len(last) >= pos
    return path.find(last, pos) >= 0


def _lines(text: str) -> Iterable[tuple[str, str]]:
    for line in text.splitlines():
        key, colon, value = line.split("#", 1)[0].partition(":")
        if colon:
            yield key.strip().lower(), value.strip()


def parse_robots(text: str, token: str) -> RobotsRules:
    """The rules of robots.txt `text` for user agent `token`.

    Groups naming the token (case-insensitive) are merged and win over `*` groups; with
    neither, everything is allowed. Lines other than user-agent/allow/disallow (sitemap,
    crawl-delay, unknown) are ignored and do not end a group.
    """
    groups: list[tuple[list[str], list[tuple[bool, str]]]] = []
    in_agents = False  # consecutive user-agent lines share one group
    for key, value in _lines(text[:ROBOTS_MAX_BYTES]):
        if key in ("user-agent", "useragent"):
            if not in_agents:
                groups.append(([], []))
                in_agents = True
            groups[-1][0].append(value)
        elif key in ("allow", "disallow") and groups:
            in_agents = False
            if value:  # an empty Disallow allows everything: no rule
                groups[-1][1].append((key == "allow", unquote(value)))
    specific = [g for g in groups if any(a != "*" and _agent_matches(a, token) for a in g[0])]
    chosen = specific or [g for g in groups if "*" in g[0]]
    return RobotsRules(tuple(rule for _, rules in chosen for rule in rules))
