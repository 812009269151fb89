import random
import re
import time

import pytest
from pydantic import ValidationError

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.download.optout import ALLOW_ALL, parse_robots, path_matches, x_robots_opt_out

TOKEN = "clipcrawl"


@pytest.mark.parametrize(
    "values, expected",
    [
        (["noai"], "noai"),
        (["NoImageAI"], "noimageai"),
        (["noarchive, noindex"], "noindex"),
        (["nofollow", "noimageindex"], "noimageindex"),  # several headers
        (["none"], "none"),  # Google: none = noindex, nofollow
        (["clipcrawl: noindex"], "noindex"),
        (["ClipCrawl: nofollow, noai"], "noai"),  # scope covers the rest of the list
        (["otherbot: noai"], None),
        (["otherbot: noai, noimageai", "clipcrawl: nofollow"], None),
        (["otherbot: noindex, clipcrawl: noimageindex"], "noimageindex"),  # two scopes joined by a proxy
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),
        (["unavailable_after: Friday, 25-Jun-2010 15:00:00 PST, noarchive"], None),
        (["max-image-preview: large", "all"], None),
        ([], None),
        ([""], None),
    ],
)
def test_x_robots_tag(values, expected):
    assert x_robots_opt_out(values, TOKEN) == expected


ROBOTS = """
# comments and blank lines are ignored
User-agent: *
Disallow: /private/
Allow: /private/ok
Sitemap: https://example.test/sitemap.xml

User-agent: otherbot
Disallow: /
"""


def test_robots_star_group_longest_match_wins():
    rules = parse_robots(ROBOTS, TOKEN)
    assert rules.allows("/public/a.jpg")
    assert not rules.allows("/private/a.jpg")
    assert rules.allows("/private/ok.jpg")
    assert not parse_robots(ROBOTS, "otherbot").allows("/public/a.jpg")


def test_robots_specific_group_replaces_star_group():
    text = "User-agent: *\nDisallow: /\n\nUser-agent: googlebot\nUser-agent: ClipCrawl\nDisallow: /x/\n"
    rules = parse_robots(text, TOKEN)
    assert rules.allows("/a.jpg") and not rules.allows("/x/a.jpg")
    # "clipcrawl/1.0" names the product clipcrawl; a group with no rules allows everything
    assert parse_robots("User-agent: *\nDisallow: /\nUser-agent: clipcrawl/1.0\nDisallow:\n", TOKEN).allows("/a")


def test_robots_groups_for_the_same_agent_merge():
    text = "User-agent: clipcrawl\nDisallow: /a/\n\nUser-agent: clipcrawl\nDisallow: /b/\n"
    rules = parse_robots(text, TOKEN)
    assert not rules.allows("/a/1") and not rules.allows("/b/1") and rules.allows("/c/1")


def test_robots_wildcards_and_anchors():
    text = "User-agent: *\nDisallow: /*.gif$\nDisallow: /img/*/thumb\nAllow: /img/ok/thumb\n"
    rules = parse_robots(text, TOKEN)
    assert not rules.allows("/a/b.gif")
    assert rules.allows("/a/b.gif?x=1")  # $ anchors the end
    assert not rules.allows("/img/123/thumb.jpg")
    assert rules.allows("/img/ok/thumb.jpg")  # longer Allow wins
    assert rules.allows("/robots.txt")


def test_robots_tie_goes_to_allow_and_percent_encoding():
    rules = parse_robots("User-agent: *\nDisallow: /page\nAllow: /page\nDisallow: /%7Euser/\n", TOKEN)
    assert rules.allows("/page")
    assert not rules.allows("/~user/a.jpg")


def test_robots_without_groups_or_rules_allows_all():
    assert parse_robots("", TOKEN) == ALLOW_ALL
    assert parse_robots("Disallow: /\n", TOKEN).allows("/x")  # rule before any user-agent line
    assert parse_robots("<html>not robots</html>", TOKEN).allows("/x")
    assert parse_robots("User-agent: otherbot\nDisallow: /\n", TOKEN).allows("/x")


def test_path_matches_agrees_with_a_regex_on_random_patterns():
    rng = random.Random(0)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*") for _ in range(rng.randint(0, 6))) + rng.choice(["", "$"])
        path = "".join(rng.choice("ab") for _ in range(rng.randint(0, 8)))
        regex = ".*".join(re.escape(p) for p in pattern.rstrip("$").split("*")) + ("$" if pattern.endswith("$") else "")
        assert path_matches(pattern, path) == bool(re.match(regex, path, re.DOTALL)), (pattern, path)


def test_a_hostile_robots_pattern_costs_no_more_than_a_plain_one():
    # as a regex, /*a*a*a*a*a*a*a*a*X backtracks for hours on a path of 200 a's; escapes and a `$`
    # anchor must not bring the backtracking back, nor may a robots.txt holding many such rules
    hostile = "/" + "*a" * 40 + "*X"
    text = "User-agent: *\n" + "".join(f"Disallow: {hostile}{i}\nDisallow: /*%61*%41{i}*$\n" for i in range(50))
    rules = parse_robots(text + f"Disallow: {hostile}\n", TOKEN)
    started = time.perf_counter()
    assert rules.allows("/" + "a" * 20_000) and not rules.allows("/" + "a" * 20_000 + "X")
    assert rules.allows("/" + "%61" * 5000 + "?" + "A" * 5000)
    assert time.perf_counter() - started < 1.0


def test_percent_encoded_reserved_characters_stay_encoded():
    # RFC 9309 §2.2.2: an escaped reserved character is not unencoded before comparison, so %2F is no
    # path separator; escapes of unreserved characters are, and hex digits compare case-insensitively
    rules = parse_robots("User-agent: *\nDisallow: /a%2Fb\nDisallow: /c/d\nDisallow: /q?u=%3A\n", TOKEN)
    assert not rules.allows("/a%2Fb.jpg") and not rules.allows("/a%2fb.jpg")
    assert rules.allows("/a/b.jpg")
    assert not rules.allows("/c/d.jpg") and rules.allows("/c%2Fd.jpg")
    assert not rules.allows("/q?u=%3a1") and rules.allows("/q?u=:1")
    assert path_matches("/%41%7e", "/A~") and path_matches("/A~", "/%41%7E") and path_matches("/a%2f", "/a%2F")
    # octets outside ASCII compare in their %XX form, whichever way either side writes them
    assert path_matches("/ツ", "/%E3%83%84") and path_matches("/%e3%83%84", "/ツ")
    assert not path_matches("/%", "/%41") and path_matches("/%", "/%25")  # a stray % is the octet %25


def test_escaped_star_and_dollar_in_a_pattern_are_literal():
    # RFC 9309 §2.2.3: a pattern writes a literal * or $ as %2A or %24
    rules = parse_robots("User-agent: *\nDisallow: /path/file-with-a-%2A.html\nDisallow: /path/foo-%24\n", TOKEN)
    assert not rules.allows("/path/file-with-a-*.html") and rules.allows("/path/file-with-a-b.html")
    assert not rules.allows("/path/foo-$") and not rules.allows("/path/foo-$1") and rules.allows("/path/foo-")


def test_robots_txt_itself_is_always_allowed():
    rules = parse_robots("User-agent: *\nDisallow: /\nDisallow: /robots.txt$\n", TOKEN)
    assert not rules.allows("/a.jpg") and not rules.allows("/robots.txt.jpg")
    assert rules.allows("/robots.txt") and rules.allows("/robots.txt?v=2") and rules.allows("/%72obots.txt")


def test_the_longest_match_counts_octets_and_a_tie_goes_to_allow():
    # RFC 9309 §2.2.2: the most specific match has the most octets, counted as compared (é is %C3%A9)
    rules = parse_robots("User-agent: *\nDisallow: /éé\nAllow: /*abcd\n", TOKEN)
    assert not rules.allows("/éé-abcd")
    # equivalent spellings are one pattern: the tie goes to the Allow, in either order
    for text in ("Allow: /%61b\nDisallow: /ab\n", "Disallow: /%61b\nAllow: /ab\n"):
        assert parse_robots("User-agent: *\n" + text, TOKEN).allows("/abc")
    assert not parse_robots("User-agent: *\nAllow: /ab\nDisallow: /ab*\n", TOKEN).allows("/abc")


@pytest.mark.parametrize(
    "agent_line, applies",
    [
        ("clipcrawl", True),
        ("CLIPCRAWL", True),
        ("ClipCrawl/2.1", True),
        ("clipcrawl 1.0", True),
        ("clipcrawl (+https://example.test/bot)", True),
        ("clipcrawl-images", False),
        ("clip", False),
        ("crawl", False),
        ("*clipcrawl", False),
        ("otherbot", False),
    ],
)
def test_user_agent_product_token(agent_line, applies):
    # RFC 9309 §2.2.1: the product token (the name without version) matched case-insensitively
    text = f"User-agent: *\nDisallow: /star/\n\nUser-agent: {agent_line}\nDisallow: /ours/\n"
    for token in (TOKEN, "ClipCrawl/1.0"):
        rules = parse_robots(text, token)
        assert rules.allows("/star/a.jpg") is applies and rules.allows("/ours/a.jpg") is not applies


def test_byte_order_mark_does_not_hide_the_first_group():
    rules = parse_robots("\ufeffUser-agent: *\nDisallow: /\n", "clipcrawl")
    assert not rules.allows("/x.jpg")


@pytest.mark.parametrize("token", ["bot2", "clip crawl", "clipcrawl/1.0", ""])
def test_user_agent_token_is_a_product_token(token):
    # RFC 9309 2.2.1: letters, '_' and '-'; a digit would cut the token short and let another crawler's group apply
    with pytest.raises(ValidationError):
        DownloadSettings(user_agent_token=token)
