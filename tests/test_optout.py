import json
import random
import re
import time

import pytest
from pydantic import ValidationError

from clipcrawl.tasks.core.config import ConsentSettings, DownloadSettings
from clipcrawl.tasks.download.optout import (
    ALLOW_ALL,
    NO_TDM_RULES,
    TDMREP_MAX_BYTES,
    TDMREP_MAX_RULES,
    parse_robots,
    parse_tdmrep,
    path_matches,
    tdm_header_reservation,
    tdm_reservation_value,
    x_robots_opt_out,
)

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
        # directives separated by whitespace or semicolons, as pages write them in robots meta tags
        (["noarchive noai"], "noai"),
        (["noarchive;noimageai"], "noimageai"),
        (["\tNOAI\n"], "noai"),
        (["max-image-preview:large noai"], "noai"),  # a valued directive's value is one word
        (["max-snippet: -1 max-image-preview: large"], None),
        (["otherbot: noarchive noai"], None),  # the scope covers every word after it
        (["clipcrawl: noarchive noai"], "noai"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST noai"], None),  # the date runs to the next comma
        (["unavailable_after: Friday, 25-Jun-2010 15:00:00 PST; noimageai"], "noimageai"),
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
        ConsentSettings(user_agent_token=token)


# -- W3C TDMRep: tdm-reservation header values and /.well-known/tdmrep.json

SPEC_EXAMPLE = b"""[
  {"location": "/directory-a/", "tdm-reservation": 1},
  {"location": "/directory-b/html/", "tdm-reservation": 1, "tdm-policy": "https://provider.test/policies/policy.json"},
  {"location": "/directory-b/images/*.jpg", "tdm-reservation": 0}
]"""


@pytest.mark.parametrize(
    "values, reserved",
    [
        (["1"], True),
        ([" 1 "], True),
        (["0"], False),
        ([], False),
        ([""], False),
        (["2"], False),  # a protocol error: unset
        (["yes"], False),
        (["0", "1"], True),  # one of them reserves
        (["1, 1"], True),  # a header sent twice, folded into one comma list (RFC 9110 §5.3)
        (["1,0"], True),
        (["0, 0"], False),
        (["0, 2"], False),
    ],
)
def test_tdm_reservation_header(values, reserved):
    assert tdm_header_reservation(values) is reserved


def test_tdmrep_spec_example():
    rules = parse_tdmrep(SPEC_EXAMPLE)
    assert [r.location for r in rules.rules] == ["/directory-a/", "/directory-b/html/", "/directory-b/images/*.jpg"]
    assert rules.reservation("/directory-a/report.pdf").location == "/directory-a/"
    html = rules.reservation("/directory-b/html/page.html")
    assert html.policy == "https://provider.test/policies/policy.json"
    assert rules.reservation("/directory-b/images/photo.jpg") is None  # tdm-reservation 0
    assert rules.reservation("/directory-c/photo.jpg") is None  # no rule matches: unset
    assert rules.reservation("/Directory-A/report.pdf") is None  # case-sensitive


def test_tdmrep_first_matching_rule_wins():
    text = """[
        {"location": "/images/*.png", "tdm-reservation": 0},
        {"location": "/images/", "tdm-reservation": 1},
        {"location": "/images/*.png", "tdm-reservation": 1}
    ]"""
    rules = parse_tdmrep(text)
    assert rules.reservation("/images/a.png") is None  # the first match says 0; the later 1 never counts
    assert rules.reservation("/images/a.jpg").location == "/images/"
    assert rules.reservation("/images/a.png?x=.jpg") is None
    reversed_order = parse_tdmrep(
        '[{"location": "/", "tdm-reservation": 1}, {"location": "/open/", "tdm-reservation": 0}]'
    )
    assert reversed_order.reservation("/open/a.jpg").location == "/"


def test_tdmrep_patterns_match_as_robots_txt_does():
    rules = parse_tdmrep(
        '[{"location": "/*/private-*.jpg$", "tdm-reservation": 1}, {"location": "/a%2Fb", "tdm-reservation": 1},'
        ' {"location": "/foo-%24", "tdm-reservation": 1}, {"location": "/%7Euser/", "tdm-reservation": 1}]'
    )
    assert rules.reservation("/x/y/private-1.jpg")
    assert not rules.reservation("/x/private-1.jpg?v=2")  # `$`: the path must end there
    assert not rules.reservation("/private-1.jpg")  # `*` sits between two slashes
    assert rules.reservation("/a%2fb.jpg") and not rules.reservation("/a/b.jpg")  # %2F is no slash
    assert rules.reservation("/foo-$") and not rules.reservation("/foo-x")  # %24 is a literal $
    assert rules.reservation("/~user/a.jpg") and rules.reservation("/%7euser/a.jpg")  # unreserved escapes decoded


@pytest.mark.parametrize(
    "value, reserved",
    [(1, True), ("1", True), (0, False), ("0", False), (2, None), (True, None), (1.0, None), (None, None), ([1], None)],
)
def test_tdm_reservation_values(value, reserved):
    assert tdm_reservation_value(value) is reserved


def test_tdmrep_rule_with_an_invalid_value_matches_but_reserves_nothing():
    rules = parse_tdmrep('[{"location": "/a/", "tdm-reservation": 2}, {"location": "/", "tdm-reservation": 1}]')
    assert rules.reservation("/a/x.jpg") is None and rules.reservation("/b/x.jpg").location == "/"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'[{"location": "/", "tdm-reservation": 1}',  # truncated
        b'{"location": "/", "tdm-reservation": 1}',  # an object, not an array of rules
        b'"/"',
        b"null",
        b"<html><body>404 not found</body></html>",
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser goes
        b"[" + b"9" * 10_000 + b"]",  # an integer longer than Python converts
        b'[{"location": "/", "tdm-reservation": 1}' + b" " * TDMREP_MAX_BYTES + b"]",  # over the size cap
        b'\xff\xfe[{"location": "/", "tdm-reservation": 1}]',  # not UTF-8
    ],
)
def test_a_malformed_tdmrep_json_reserves_nothing(data):
    rules = parse_tdmrep(data)
    assert rules == NO_TDM_RULES and rules.reservation("/anything.jpg") is None


def test_tdmrep_skips_entries_that_cannot_match():
    rules = parse_tdmrep(
        '[1, "x", null, {"tdm-reservation": 1}, {"location": 7, "tdm-reservation": 1},'
        ' {"location": "", "tdm-reservation": 1}, {"location": "/ok/", "tdm-reservation": 1, "tdm-policy": 3}]'
    )
    assert [r.location for r in rules.rules] == ["/ok/"] and rules.rules[0].policy is None
    assert rules.reservation("/ok/a.jpg") and not rules.reservation("/other.jpg")
    bom = parse_tdmrep('\ufeff[{"location": "/", "tdm-reservation": 1}]'.encode())
    assert bom.reservation("/a.jpg")


def test_tdm_settings_default_on():
    assert DownloadSettings().consent.respect_tdm_reservation is True


def test_tdmrep_keeps_the_first_rules_only():
    rules = [{"location": f"/d{i}/", "tdm-reservation": 1} for i in range(TDMREP_MAX_RULES)]
    rules.append({"location": "/", "tdm-reservation": 1})  # past the cap: ignored
    parsed = parse_tdmrep(json.dumps(rules))
    assert len(parsed.rules) == TDMREP_MAX_RULES
    assert parsed.reservation(f"/d{TDMREP_MAX_RULES - 1}/a.jpg") and parsed.reservation("/other/a.jpg") is None


def test_a_hostile_tdmrep_json_costs_bounded_time_per_image():
    """6,000 rules of 20 wildcards that scan a long path to its end: capped, and each path's verdict remembered."""
    hostile = parse_tdmrep(json.dumps([{"location": "/" + "*a" * 20 + "*Z", "tdm-reservation": 1}] * 6000))
    assert len(hostile.rules) == TDMREP_MAX_RULES
    paths = [f"/img/{'a' * 300}{i % 10}.png" for i in range(200)]  # the images of a few pages: paths repeat
    started = time.process_time()
    assert not any(hostile.reservation(p) for p in paths)
    assert time.process_time() - started < 1.0  # uncapped and unremembered: ~3 s
    assert hostile.reservation("/" + "a" * 20 + "Z").location.endswith("*Z")
