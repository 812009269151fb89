"""Opt-outs a site declares for our user agent: X-Robots-Tag headers, robots.txt, and W3C TDMRep reservations
(the `tdm-reservation` header and /.well-known/tdmrep.json).

Pure functions on header values, robots.txt text and tdmrep.json bytes; clipcrawl.tasks.download.fetch does the
network part.
robots.txt follows RFC 9309: the groups naming our product token apply (else the `*` groups), the
longest matching pattern decides, an Allow wins a tie, `*` and `$` are wildcards, and paths and
patterns are compared with unreserved escapes decoded and reserved ones (%2F) kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from clipcrawl.tasks.core import config

OPT_OUT_DIRECTIVES = frozenset(config.OPT_OUT_DIRECTIVES)  # the default of ConsentSettings.optout_directives
# Directives that carry a value after a colon: "unavailable_after: <date>" is no user agent.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_AGENT_NAME = re.compile(r"[a-z0-9_\-]+|\*")
_DIRECTIVE_LISTS = re.compile(r"[,;]")  # what separates directives, besides whitespace
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least the first 500 KiB


def _agent_matches(agent: str, token: str) -> bool:
    name = product_token(agent)
    return agent.strip() == "*" or bool(name) and name == product_token(token)


def x_robots_opt_out(values: Iterable[str], token: str, directives: Collection[str] = OPT_OUT_DIRECTIVES) -> str | None:
    """The opt-out directive (one of `directives`, lowercase) among X-Robots-Tag header values that applies
    to `token`, or None. The contents of robots meta tags read the same way.

    Directives are separated by commas, semicolons or whitespace ("noai, noimageai", "noai;noimageai",
    "noai noimageai"). A "useragent: directives" prefix scopes the directives after it (to the end of that
    header value) to that user agent, e.g. "otherbot: noai" does not apply to clipcrawl and
    "clipcrawl: noindex" does. Unscoped directives apply to everyone. A valued directive keeps its value
    ("max-snippet: -1", "unavailable_after: 25 Jun 2010 15:00:00 PST": the date runs to the next comma).
    """
    for value in values:
        agent: str | None = None
        for part in _DIRECTIVE_LISTS.split(value):
            while part:
                head, colon, rest = part.partition(":")
                words = head.lower().split()
                part = ""
                if colon:
                    if len(words) != 1:  # a stray piece of a date value ("Jun 2010 15:00"), or nothing
                        break
                    name = words[0]
                    if name == "unavailable_after":
                        break  # its date runs to the end of the part
                    if name in _VALUED_DIRECTIVES:
                        words = rest.split(None, 1)[1:]  # its value is one word; what follows is read on
                        part = words[0] if words else ""
                        continue
                    if not _AGENT_NAME.fullmatch(name):
                        break
                    agent, part = name, rest  # the rest, up to another colon, is the agent's
                    continue
                for name in words:
                    if name in directives and (agent is None or _agent_matches(agent, token)):
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


# ------------------------------------------------------------------ W3C TDMRep (TDM Reservation Protocol)
# https://www.w3.org/community/reports/tdmrep/CG-FINAL-tdmrep-20240510/: a `tdm-reservation: 1` response header,
# or a rule of the origin's /.well-known/tdmrep.json, reserves text-and-data-mining rights on a resource.

TDMREP_PATH = "/.well-known/tdmrep.json"
TDMREP_MAX_BYTES = 512 * 1024  # a larger tdmrep.json is taken for none: no reservation
# The rules kept from one tdmrep.json, first ones first (the first match decides, so the rest can only matter on
# paths no kept rule matches). Real files hold a handful; every image of the origin is compared with each kept
# rule, so a hostile file of 6,000 many-wildcard rules would cost ~16 ms per image, 2,000 of them at most ~5 ms,
# and then once per distinct path (TDMREP_VERDICTS).
TDMREP_MAX_RULES = 2_000
TDMREP_VERDICTS = 4_096  # paths whose verdict each origin's rules remember (cleared when full)
TDM_RESERVATION = "tdm-reservation"
TDM_POLICY = "tdm-policy"


def tdm_reservation_value(value: object) -> bool | None:
    """True for a `tdm-reservation` of 1, False for 0, None (unset) for anything else.

    The spec's values are the integers 1 and 0 (other values are protocol errors: unset); the header's string
    form "1"/"0" is taken in tdmrep.json too. JSON true/false and 1.0 are no such integers.
    """
    if type(value) is int or isinstance(value, str):
        text = str(value).strip()
        if text in ("0", "1"):
            return text == "1"
    return None


def tdm_header_reservation(values: Iterable[str]) -> bool:
    """Whether `tdm-reservation` response header values reserve TDM rights: one of them is 1.

    A header sent twice may reach us folded into one comma list (RFC 9110 §5.3: "1, 1", "1,0"): each of its
    elements counts, as a header of its own would. "0", an absent header and invalid values (protocol
    errors) reserve nothing.
    """
    return any(tdm_reservation_value(element) for value in values for element in value.split(","))


class TdmRule(NamedTuple):
    """One rule of a tdmrep.json: its `location` pattern (robots.txt syntax), reservation and policy URL."""

    location: str
    pattern: RobotsRule
    reserved: bool | None  # None: the rule's tdm-reservation is invalid (unset)
    policy: str | None


@dataclass(frozen=True)
class TdmRules:
    """The rules of one origin's /.well-known/tdmrep.json, in file order (at most TDMREP_MAX_RULES)."""

    rules: tuple[TdmRule, ...] = ()
    # path -> verdict: the images of one page share paths, and a shard asks one origin for many images
    _verdicts: dict[str, TdmRule | None] = field(default_factory=dict, compare=False, repr=False)

    def reservation(self, path: str) -> TdmRule | None:
        """`_reservation`, remembered per path (at most TDMREP_VERDICTS paths per origin and shard task)."""
        try:
            return self._verdicts[path]
        except KeyError:
            pass
        if len(self._verdicts) >= TDMREP_VERDICTS:
            self._verdicts.clear()
        verdict = self._verdicts[path] = self._reservation(path)
        return verdict

    def _reservation(self, path: str) -> TdmRule | None:
        """The rule that reserves TDM rights on `path` (a URL's path and query, as sent), or None.

        The first rule whose location matches decides (the spec's "most specific match is the first in
        sequence"): a match with tdm-reservation 0, or an invalid one, reserves nothing, and no match
        leaves the reservation unset. Locations match as robots.txt patterns do: from the path's first
        octet, `*` any octets, a final `$` the end, case-sensitively, unreserved escapes decoded.
        """
        path = normalize_path(path or "/")
        for rule in self.rules:
            if rule.pattern.matches(path):
                return rule if rule.reserved else None
        return None


NO_TDM_RULES = TdmRules()


def parse_tdmrep(data: bytes | str) -> TdmRules:
    """The rules of a tdmrep.json; never raises. Malformed JSON, a top level that is no array, or a file
    over TDMREP_MAX_BYTES reserve nothing (NO_TDM_RULES). Within the array, an entry that is no object or
    whose location is no non-empty string can match nothing and is skipped; a tdm-policy that is no string
    is dropped; rules past the first TDMREP_MAX_RULES are ignored."""
    if len(data) > TDMREP_MAX_BYTES:
        return NO_TDM_RULES
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    try:
        document = json.loads(data.removeprefix("\ufeff"))
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return NO_TDM_RULES
    if not isinstance(document, list):
        return NO_TDM_RULES
    rules: list[TdmRule] = []
    for entry in document:
        if len(rules) == TDMREP_MAX_RULES:
            break
        if not isinstance(entry, dict):
            continue
        location = entry.get("location")
        if not isinstance(location, str) or not location.strip():
            continue
        location = location.strip()
        policy = entry.get(TDM_POLICY)
        rules.append(
            TdmRule(
                location,
                RobotsRule.compile(False, location),
                tdm_reservation_value(entry.get(TDM_RESERVATION)),
                policy if isinstance(policy, str) else None,
            )
        )
    return TdmRules(tuple(rules))
