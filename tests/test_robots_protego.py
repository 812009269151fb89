"""The robots.txt matcher cross-tested against protego, an independent regex-free robots.txt parser.

The two agree on a generated corpus except in the classes below, each a place where protego departs
from RFC 9309. Every disagreement must fall in one of them, each class must still occur (so this list
stays true when protego changes), and each has an example asserting both answers.
"""

import random

import pytest
from protego import Protego

from clipcrawl.tasks.download.optout import parse_robots

TOKEN = "clipcrawl"
SITE = "http://example.test"

# What patterns and paths are made of: unreserved and reserved characters, escapes of both (%2F in
# either case, %41, %7E, %2A, %24, %3F, %28), non-ASCII text as it is and escaped, an invalid UTF-8
# octet, a stray %, and query strings. Patterns add `*` and a final `$`.
PIECES = (
    ["a", "b", "A", "/", ".", "-", "~", "?", "=", "&", ":", "+", ";", ",", "(", "$", "%", "x=1", "?q=a/b"]
    + ["%41", "%61", "%7E", "%7e", "%2F", "%2f", "%2A", "%24", "%3F", "%28", "%20", "%FF"]
    + ["é", "%C3%A9", "%c3%a9", "ツ", "%E3%83%84"]
)
# Other spellings of a piece, equivalent or not, so that paths derived from a pattern test both.
SPELLINGS = {
    "a": ["%61"],
    "A": ["%41"],
    "~": ["%7E", "%7e"],
    "/": ["%2F"],
    "%2F": ["/", "%2f"],
    "%41": ["A"],
    "%7E": ["~"],
    "(": ["%28"],
    "%28": ["("],
    "?": ["%3F"],
    "%3F": ["?"],
    "%2A": ["*"],
    "%24": ["$"],
    "$": ["%24"],
    "é": ["%C3%A9", "%c3%a9"],
    "%C3%A9": ["é"],
    "ツ": ["%E3%83%84"],
}


def _pattern_and_path(rng: random.Random) -> tuple[str, str]:
    pieces = [rng.choice(PIECES + ["*", "*"]) for _ in range(rng.randint(0, 6))]
    pattern = "/" + "".join(pieces) + rng.choice(["", "", "$"])
    if rng.random() < 0.5:  # a path unrelated to the pattern
        return pattern, "/" + "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))
    path = []  # a path made from the pattern: wildcards filled, pieces respelled
    for piece in pieces:
        if piece == "*":
            path.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 2))))
        elif piece in SPELLINGS and rng.random() < 0.5:
            path.append(rng.choice(SPELLINGS[piece]))
        else:
            path.append(piece)
    return pattern, "/" + "".join(path) + rng.choice(["", "", "b", "?x=1"])


def _ours(robots: str, path: str) -> bool:
    return parse_robots(robots, TOKEN).allows(path)


def _protego(robots: str, path: str) -> bool:
    return Protego.parse(robots).can_fetch(SITE + path, TOKEN)


def _disallowed(pattern: str, path: str) -> tuple[bool, bool]:
    robots = f"User-agent: *\nDisallow: {pattern}\n"
    return not _ours(robots, path), not _protego(robots, path)


_RESERVED_ESCAPES = {f"%{ord(char):02X}": char for char in ":?[]@!$&'()*+,;="}  # not / nor #


def _unescape_reserved(text: str, keep: tuple[str, ...] = ()) -> str:
    out, i = [], 0
    while i < len(text):
        escape = text[i : i + 3].upper()
        if escape in _RESERVED_ESCAPES and escape not in keep:
            out.append(_RESERVED_ESCAPES[escape])
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_HEX_PAIRS = {f"{n:02X}" for n in range(256)}


def _stray_percent(text: str) -> bool:
    return any(text[i + 1 : i + 3].upper() not in _HEX_PAIRS for i, char in enumerate(text) if char == "%")


def _difference(pattern: str, path: str) -> str:
    """The class of a disagreement: the rewrite of the input under which our answer becomes protego's."""
    theirs = _disallowed(pattern, path)[1]
    # 1. Protego decodes the escapes of reserved characters other than / (and encodes the characters),
    #    so it takes `%28` for `(` and `%3F` for `?`. RFC 9309 §2.2.2 keeps a reserved character's
    #    escape distinct ("MUST be unencoded ... unless it is a reserved character"), as RFC 3986 §6.2.2.2
    #    does; a pattern's %2A and %24 are its literal * and $ (RFC 9309 §2.2.3) and stay.
    folded_pattern, folded_path = _unescape_reserved(pattern, keep=("%2A", "%24")), _unescape_reserved(path)
    if _disallowed(folded_pattern, folded_path)[0] == theirs:
        return "reserved escapes"
    # 2. Protego also reads a pattern's final `$` as a literal dollar, so `/a$` matches `/a$b` too. RFC
    #    9309 §2.2.3: `$` designates the end of the match pattern.
    if pattern.endswith("$") and _disallowed(folded_pattern[:-1] + "%24", folded_path)[0] == theirs:
        return "final $ read as literal too"
    # 3. Protego matches a stray `%` in a pattern against the % that starts any escape of the path. RFC
    #    3986 §2.4: a % that starts no escape is the octet %25, which RFC 9309 §2.2.2 compares.
    if _stray_percent(pattern) and theirs:
        return "stray %"
    return "unexplained"


def test_matching_agrees_with_protego_on_a_generated_corpus():
    rng = random.Random(9309)
    outcomes = {"agree": 0, "matched": 0}
    differences: dict[str, list[tuple[str, str]]] = {}
    for _ in range(6000):
        pattern, path = _pattern_and_path(rng)
        ours, theirs = _disallowed(pattern, path)
        outcomes["matched"] += ours
        if ours == theirs:
            outcomes["agree"] += 1
        else:
            assert not ours and theirs, (pattern, path)  # each class is protego matching more
            differences.setdefault(_difference(pattern, path), []).append((pattern, path))
    assert "unexplained" not in differences, differences["unexplained"][:20]
    assert set(differences) == {"reserved escapes", "final $ read as literal too", "stray %"}
    assert outcomes["agree"] >= 5000 and 1000 <= outcomes["matched"] <= 5000  # both answers well covered


def test_precedence_agrees_with_protego_where_each_rule_matches_alike():
    # longest match, Allow on a tie (RFC 9309 §2.2.2): wherever the two agree on each rule alone,
    # they agree on which rule decides
    rng = random.Random(5)
    compared = both_matched = 0
    for _ in range(3000):
        allow, path = _pattern_and_path(rng)
        disallow = allow[: rng.randint(1, len(allow))] if rng.random() < 0.5 else _pattern_and_path(rng)[0]
        alone = [_disallowed(pattern, path) for pattern in (allow, disallow)]
        if any(ours != theirs for ours, theirs in alone):
            continue
        robots = f"User-agent: *\nAllow: {allow}\nDisallow: {disallow}\n"
        assert _ours(robots, path) == _protego(robots, path), (allow, disallow, path)
        compared += 1
        both_matched += alone[0][0] and alone[1][0]
    assert compared >= 2500 and both_matched >= 300


@pytest.mark.parametrize(
    "pattern, path, ours, protego",
    [
        ("/a(", "/a%28", False, True),  # reserved escapes
        ("/a%3Fb", "/a?b", False, True),
        ("/%2A", "/%2A", False, True),  # a pattern's %2A is a literal *; the path's %2A is not one
        ("/a%2Fb", "/a/b", False, False),  # %2F: the two agree
        ("/a$", "/a$b", False, True),  # final $ read as literal too
        ("/%", "/(", False, True),  # stray %: protego escapes ( as %28
        ("/%", "/%25", True, True),
    ],
)
def test_each_difference_class(pattern, path, ours, protego):
    assert _disallowed(pattern, path) == (ours, protego)


def test_user_agent_differences():
    # RFC 9309 §2.2.1: the group's product token must equal ours; protego also takes a group whose
    # name starts ours ("clip"), and reads no product token out of "clipcrawl/1.0"
    for agent, ours, theirs in (("clip", False, True), ("clipcrawl/1.0", True, False), ("ClipCrawl", True, True)):
        robots = f"User-agent: *\nDisallow: /star/\n\nUser-agent: {agent}\nDisallow: /ours/\n"
        assert (not _ours(robots, "/ours/a"), not _protego(robots, "/ours/a")) == (ours, theirs), agent


def test_protego_allows_a_folder_whose_index_html_is_allowed():
    # protego's extension, in no RFC: Allow: /d/index.html allows /d/ as well
    robots = "User-agent: *\nDisallow: /\nAllow: /d/index.html\n"
    assert (_ours(robots, "/d/"), _protego(robots, "/d/")) == (False, True)


RFC_EXAMPLE = """\
User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot
"""


@pytest.mark.parametrize(
    "robots, agent, path, allowed",
    [
        # §5.1: groups, an agent in two user-agent lines, an agent with no rules, the * group
        (RFC_EXAMPLE, "foobot", "/example/page.html", True),
        (RFC_EXAMPLE, "foobot", "/example/allowed.gif", True),
        (RFC_EXAMPLE, "foobot", "/example/other.html", False),
        (RFC_EXAMPLE, "barbot", "/example/page.html", False),
        (RFC_EXAMPLE, "bazbot", "/example/page.html", False),
        (RFC_EXAMPLE, "bazbot", "/example/other.gif", True),
        (RFC_EXAMPLE, "quxbot", "/example/page.html", True),
        (RFC_EXAMPLE, "otherbot", "/a/b.gif", False),
        (RFC_EXAMPLE, "otherbot", "/a/b.gif?x", True),
        (RFC_EXAMPLE, "otherbot", "/example/a", False),
        (RFC_EXAMPLE, "otherbot", "/publications/a", True),
        # §5.2: the longest match
        (
            "User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n",
            "foobot",
            "/example/page/",
            True,
        ),
        (
            "User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n",
            "foobot",
            "/example/page/disallowed.gif",
            False,
        ),
        # §2.2.1: groups for one agent merge; a product token matches case-insensitively
        (
            "user-agent: ExampleBot\ndisallow: /foo\ndisallow: /bar\n\nuser-agent: ExampleBot\ndisallow: /baz\n",
            "examplebot",
            "/baz/1",
            False,
        ),
        (
            "user-agent: ExampleBot\ndisallow: /foo\ndisallow: /bar\n\nuser-agent: ExampleBot\ndisallow: /baz\n",
            "EXAMPLEBOT",
            "/foo/1",
            False,
        ),
        ("user-agent: e\nuser-agent: f\ndisallow: /g\n\nuser-agent: h\n", "f", "/g", False),
        ("user-agent: e\nuser-agent: f\ndisallow: /g\n\nuser-agent: h\n", "h", "/g", True),
        # §2.2.2 table 1: the encoded path as sent, matched by the pattern in its "path to match" form
        ("User-agent: *\nDisallow: /foo/bar?baz=quz\n", "x", "/foo/bar?baz=quz", False),
        (
            "User-agent: *\nDisallow: /foo/bar?baz=https%3A%2F%2Ffoo.bar\n",
            "x",
            "/foo/bar?baz=https%3A%2F%2Ffoo.bar",
            False,
        ),
        ("User-agent: *\nDisallow: /foo/bar/ツ\n", "x", "/foo/bar/%E3%83%84", False),
        ("User-agent: *\nDisallow: /foo/bar/%E3%83%84\n", "x", "/foo/bar/%E3%83%84", False),
        ("User-agent: *\nDisallow: /foo/bar/baz\n", "x", "/foo/bar/%62%61%7A", False),
        # §2.2.3 table 2: a literal * and $ in a pattern are escaped
        ("User-agent: *\nDisallow: /path/file-with-a-%2A.html\n", "x", "/path/file-with-a-*.html", False),
        ("User-agent: *\nDisallow: /path/foo-%24\n", "x", "/path/foo-$", False),
        # §2.2.2: /robots.txt is implicitly allowed
        ("User-agent: *\nDisallow: /\n", "x", "/robots.txt", True),
    ],
)
def test_rfc_9309_examples(robots, agent, path, allowed):
    assert parse_robots(robots, agent).allows(path) is allowed
    assert Protego.parse(robots).can_fetch(SITE + path, agent) is allowed
