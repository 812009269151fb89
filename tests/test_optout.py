import random
import re
import time

import pytest

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
    # as a regex, /*a*a*a*a*a*a*a*a*X backtracks for hours on a path of 200 a's
    rules = parse_robots("User-agent: *\nDisallow: /" + "*a" * 40 + "*X\n", TOKEN)
    started = time.perf_counter()
    assert rules.allows("/" + "a" * 5000) and not rules.allows("/" + "a" * 5000 + "X")
    assert time.perf_counter() - started < 0.5
