"""Page-level opt-outs (robots meta tags, X-Robots-Tag) and W3C TDMRep reservations at extraction: WAT and WARC
files built here, a WAT built from real captures as Common Crawl's WAT generator builds one, and the world."""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from clipcrawl.tasks.core.config import ConsentSettings, DownloadSettings, ExtractSettings
from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.download.optout import OPT_OUT_DIRECTIVES
from clipcrawl.tasks.ingest.warc import page_links_from_html
from clipcrawl.tasks.ingest.wat import MAX_PAGE_METAS, page_links_from_wat
from clipcrawl.tasks.world import WorldSpec, generate_world
from clipcrawl.tasks.world.page_optouts import PAGE_OPT_OUTS
from tests.test_extract import PAGE, html_page, pairs, run, wat_json, write_warc

WITHHELD = (PairStatus.PAGE_OPT_OUT, PairStatus.TDM_RESERVED_HEADER, PairStatus.TDM_RESERVED_META)
# a pair, a link without alt, a link the URL filter drops, the pair again
LINKS = [
    ("a.jpg", "a red bike by a wall"),
    ("b.jpg", None),
    ("ftp://x.example/c.jpg", "an ftp picture"),
    ("a.jpg", "a red bike by a wall"),
]
FILTERED = {"no_alt": 1, "unsupported_scheme": 1}


def wat_headers(headers: list[tuple[str, str]]) -> dict:
    """Response headers as Common Crawl's WAT holds them: names as sent, a repeated name's values in a list."""
    out: dict = {}
    for name, value in headers:
        out[name] = (
            [*out[name], value] if isinstance(out.get(name), list) else [out[name], value] if name in out else value
        )
    return out


def write_page(path: Path, kind: str, metas, headers, links=LINKS, page=PAGE) -> None:
    """One page in a WAT (metas as Head.Metas, headers as Headers) or a WARC (meta tags in its head)."""
    if kind == "wat":
        doc = wat_json(page, links, metas=[{"name": n, "content": c} for n, c in metas], headers=wat_headers(headers))
        write_warc(path, [("wat", page, doc)])
    else:
        head = "".join(f'<meta name="{n}" content="{c}">' for n, c in metas)
        body = html_page(links, head_html=head).encode()
        write_warc(path, [("html", page, body, "text/html; charset=utf-8", "200 OK", headers)])


CASES = [  # (id, <meta name, content>s, response headers, what the page's pairs become: None kept)
    ("robots_noai", [("robots", "noai")], [], PairStatus.PAGE_OPT_OUT),
    ("robots_name_cased", [("ROBOTS", "NoImageAI")], [], PairStatus.PAGE_OPT_OUT),
    ("robots_noindex_in_a_list", [("robots", "nofollow, noindex")], [], PairStatus.PAGE_OPT_OUT),
    ("robots_none", [("robots", "none")], [], PairStatus.PAGE_OPT_OUT),
    ("robots_escaped_comma", [("robots", "nofollow&#44;noai")], [], PairStatus.PAGE_OPT_OUT),
    ("robots_index_follow", [("robots", "index, follow, max-image-preview: large")], [], None),
    ("robots_scoped_to_otherbot", [("robots", "otherbot: noai")], [], None),
    ("robots_scoped_to_us", [("robots", "clipcrawl: noai")], [], PairStatus.PAGE_OPT_OUT),
    ("our_token_meta", [("ClipCrawl", "noimageai")], [], PairStatus.PAGE_OPT_OUT),
    ("otherbot_meta", [("otherbot", "noai, noindex")], [], None),
    ("googlebot_meta", [("googlebot", "noindex")], [], None),
    ("other_metas", [("description", "noai"), ("keywords", "robots, tdm-reservation")], [], None),
    ("x_robots_tag", [], [("X-Robots-Tag", "noai")], PairStatus.PAGE_OPT_OUT),
    ("x_robots_tag_lowercase", [], [("x-robots-tag", "noimageindex")], PairStatus.PAGE_OPT_OUT),
    (
        "x_robots_tag_repeated",
        [],
        [("X-Robots-Tag", "max-image-preview: large"), ("X-Robots-Tag", "noai")],
        PairStatus.PAGE_OPT_OUT,
    ),
    ("x_robots_tag_otherbot", [], [("X-Robots-Tag", "otherbot: noai")], None),
    ("tdm_meta", [("tdm-reservation", "1")], [], PairStatus.TDM_RESERVED_META),
    ("tdm_meta_0", [("tdm-reservation", "0")], [], None),
    ("tdm_meta_invalid", [("tdm-reservation", "yes")], [], None),
    ("tdm_header", [], [("tdm-reservation", "1")], PairStatus.TDM_RESERVED_HEADER),
    ("tdm_header_cased", [], [("TDM-Reservation", "1")], PairStatus.TDM_RESERVED_HEADER),
    ("tdm_header_0", [], [("tdm-reservation", "0")], None),
    ("tdm_header_0_meta_1", [("tdm-reservation", "1")], [("tdm-reservation", "0")], PairStatus.TDM_RESERVED_META),
    ("header_before_meta", [("tdm-reservation", "1")], [("tdm-reservation", "1")], PairStatus.TDM_RESERVED_HEADER),
    ("opt_out_before_tdm", [("robots", "noai")], [("tdm-reservation", "1")], PairStatus.PAGE_OPT_OUT),
]


@pytest.mark.parametrize("kind", ["wat", "warc"])
@pytest.mark.parametrize("metas, headers, status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_page_signals(tmp_path, kind, metas, headers, status):
    write_page(tmp_path / "a.gz", kind, metas, headers)
    table, stats = run(tmp_path / "a.gz")
    if status is None:
        assert pairs(table) == {("http://example.com/dir/a.jpg", "a red bike by a wall")}
        assert stats.dropped == FILTERED | {"duplicate": 1}
    else:  # the links that pass the alt-text and URL filters, the repeated one too, get the page's reason
        assert table.num_rows == 0 and stats.kept == 0
        assert stats.dropped == FILTERED | {status.value: 2}
    assert stats.html_pages == 1 and stats.img_links == len(LINKS)


def four_pages(path: Path, kind: str) -> None:
    """A page that opts out by robots meta, one by X-Robots-Tag, one TDM-reserved by meta, one by header, one plain."""
    pages = [
        ([("robots", "noai")], []),
        ([], [("X-Robots-Tag", "noimageai")]),
        ([("tdm-reservation", "1")], []),
        ([], [("tdm-reservation", "1")]),
        ([("robots", "noindex")], []),
        ([], []),
    ]
    records = []
    for i, (metas, headers) in enumerate(pages):
        url, links = f"http://example.com/p{i}.html", [(f"/{i}.jpg", f"picture number {i}")]
        if kind == "wat":
            doc = wat_json(
                url, links, metas=[{"name": n, "content": c} for n, c in metas], headers=wat_headers(headers)
            )
            records.append(("wat", url, doc))
        else:
            head = "".join(f'<meta name="{n}" content="{c}">' for n, c in metas)
            records.append(("html", url, html_page(links, head_html=head).encode(), "text/html", "200 OK", headers))
    write_warc(path, records)


@pytest.mark.parametrize("kind", ["wat", "warc"])
def test_reasons_counted_per_file_and_switches(tmp_path, kind):
    four_pages(tmp_path / "a.gz", kind)
    _, stats = run(tmp_path / "a.gz")
    assert stats.to_dict()["dropped"] == {"page_opt_out": 3, "tdm_reserved_header": 1, "tdm_reserved_meta": 1}
    assert stats.kept == 1 and stats.with_alt == 6
    _, no_optouts = run(tmp_path / "a.gz", consent=ConsentSettings(respect_optouts=False))
    assert no_optouts.dropped == {"tdm_reserved_header": 1, "tdm_reserved_meta": 1} and no_optouts.kept == 4
    _, no_tdm = run(tmp_path / "a.gz", consent=ConsentSettings(respect_tdm_reservation=False))
    assert no_tdm.dropped == {"page_opt_out": 3} and no_tdm.kept == 3
    table, neither = run(
        tmp_path / "a.gz", consent=ConsentSettings(respect_optouts=False, respect_tdm_reservation=False)
    )
    assert neither.dropped == {} and table.num_rows == 6
    _, noai_only = run(
        tmp_path / "a.gz", consent=ConsentSettings(optout_directives=["NoAI"])
    )  # noimageai and noindex no longer count
    assert noai_only.dropped == {"page_opt_out": 1, "tdm_reserved_header": 1, "tdm_reserved_meta": 1}


@pytest.mark.parametrize("kind", ["wat", "warc"])
def test_the_token_names_our_meta_tag(tmp_path, kind):
    write_page(tmp_path / "a.gz", kind, [("otherbot", "noai"), ("clipcrawl", "noai")], [])
    _, ours = run(tmp_path / "a.gz")
    _, theirs = run(tmp_path / "a.gz", consent=ConsentSettings(user_agent_token="OtherBot"))
    assert ours.dropped.get("page_opt_out") == theirs.dropped.get("page_opt_out") == 2
    write_page(tmp_path / "b.gz", kind, [("clipcrawl", "noai")], [])
    _, other_token = run(tmp_path / "b.gz", consent=ConsentSettings(user_agent_token="otherbot"))
    assert "page_opt_out" not in other_token.dropped and other_token.kept == 1


def test_both_stages_share_one_consent_model():
    s = ExtractSettings().consent
    assert s == DownloadSettings().consent and isinstance(s, ConsentSettings)
    assert s.respect_optouts and s.respect_tdm_reservation and s.user_agent_token == "clipcrawl"
    assert set(s.optout_directives) == OPT_OUT_DIRECTIVES
    assert ConsentSettings(optout_directives=[" NoAI "]).optout_directives == ["noai"]


def test_a_withheld_pair_is_kept_from_a_page_that_does_not_withhold_it(tmp_path):
    pair = [("http://example.com/a.jpg", "the same picture twice")]
    recs = [
        (
            "wat",
            "http://example.com/1",
            wat_json("http://example.com/1", pair, metas=[{"name": "robots", "content": "noai"}]),
        ),
        ("wat", "http://example.com/2", wat_json("http://example.com/2", pair)),
        ("wat", "http://example.com/3", wat_json("http://example.com/3", pair, headers={"tdm-reservation": "1"})),
    ]
    write_warc(tmp_path / "a.wat.gz", recs)
    table, stats = run(tmp_path / "a.wat.gz")
    assert table.column("page_url").to_pylist() == ["http://example.com/2"]
    assert stats.dropped == {"page_opt_out": 1, "tdm_reserved_header": 1}  # withheld, not duplicates


def test_odd_meta_and_header_shapes_withhold_nothing(tmp_path):
    doc = json.loads(wat_json(PAGE, [("a.jpg", "a fine picture")]))
    http = doc["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]
    http["HTML-Metadata"]["Head"]["Metas"] = [7, "robots", None, {"name": 3, "content": "noai"}, {"name": "robots"}]
    http["Headers"] = {"X-Robots-Tag": 5, "tdm-reservation": [None, {"v": "1"}]}
    odd = json.loads(json.dumps(doc))
    odd["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Head"]["Metas"] = {"robots": "noai"}
    odd["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["Headers"] = ["X-Robots-Tag", "noai"]
    for i, d in enumerate((doc, odd)):
        write_warc(tmp_path / f"{i}.wat.gz", [("wat", PAGE, json.dumps(d).encode())])
        table, stats = run(tmp_path / f"{i}.wat.gz")
        assert stats.kept == 1 and stats.malformed_records == 0, i


def test_parsers_collect_only_the_names_asked_for():
    metas = [
        {"name": "viewport", "content": "width=device-width"},
        {"property": "robots", "content": "noai"},  # a property is no name
        {"name": " Robots ", "content": "noai"},
        {"name": "tdm-reservation", "content": "1"},
    ]
    doc = wat_json(PAGE, [("a.jpg", "alt text")], metas=metas, headers={"x-robots-tag": ["a", "b"], "Server": "x"})
    page = page_links_from_wat(doc, frozenset({"robots"}), frozenset({"x-robots-tag"}))
    assert page.metas == (("robots", "noai"),) and page.headers == (("x-robots-tag", "a"), ("x-robots-tag", "b"))
    assert page_links_from_wat(doc).metas == page_links_from_wat(doc).headers == ()
    head = '<meta property="robots" content="noai"><meta name=" Robots " content="noai"><meta name="robots">'
    html = html_page([("a.jpg", "alt text")], head_html=head).replace(
        "</body>", '<meta name="ROBOTS" content="x"></body>'
    )
    parsed = page_links_from_html(PAGE, 200, html.encode(), "utf-8", frozenset({"robots", "tdm-reservation"}))
    assert parsed.metas == (("robots", "noai"), ("robots", "x"))  # anywhere in the page, as a WAT lists them
    assert page_links_from_html(PAGE, 200, html.encode(), "utf-8").metas == ()


# --- a WAT built from real captures, as Common Crawl's WAT generator (ia-web-commons) builds one

REALWEB = Path(os.environ.get("CLIPCRAWL_REALWEB", Path(__file__).resolve().parents[2] / "shared" / "realweb"))
CAPTURE = REALWEB / "wikipedia-2012-sopa-homepage.warc.gz"
needs_capture = pytest.mark.skipif(not CAPTURE.exists() and not os.environ.get("CI"), reason=f"no {CAPTURE}")


class _WatHtml(HTMLParser):
    """HTML-Metadata as ia-web-commons' ExtractingParseObserver writes it: every <meta> with any of name, rel,
    content, http-equiv, property (in that key order) into Head.Metas wherever it stands; img tags into Links."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.metas: list[dict] = []
        self.links: list[dict] = []
        self.base: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "meta":
            entry = {k: a[k] for k in ("name", "rel", "content", "http-equiv", "property") if a.get(k) is not None}
            if entry:
                self.metas.append(entry)
        elif tag == "img" and a.get("src") is not None:
            self.links.append({"path": "IMG@/src", "url": a["src"]} | {k: a[k] for k in ("alt", "title") if k in a})
        elif tag == "base" and a.get("href") is not None:
            self.base = a["href"]

    handle_startendtag = handle_starttag


def wat_of(url: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    html = _WatHtml()
    html.feed(body.decode("utf-8", "replace"))
    head = {"Metas": html.metas} | ({"Base": html.base} if html.base else {})
    doc = {
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.0", "Status": "200", "Reason": "OK"},
                    "Headers": wat_headers(headers),
                    "HTML-Metadata": {"Head": head, "Links": html.links},
                },
            },
        }
    }
    return json.dumps(doc).encode()


def real_pages() -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """(url, response headers, body) of the capture's HTML pages (bodies decoded, so their framing headers go)."""
    out = []
    with open(CAPTURE, "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response, auto_decode="all"):
            if rec.http_headers.status_code == 200 and "html" in (rec.http_content_type or ""):
                headers = [
                    (k, v)
                    for k, v in rec.http_headers.astuples()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                ]
                out.append((rec.headers.get("WARC-Target-URI"), headers, rec.reader.read()))
    return out


def write_real(path: Path, kind: str, pages) -> None:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for url, headers, body in pages:
        if kind == "wat":
            payload = io.BytesIO(wat_of(url, headers, body))
            writer.write_record(
                writer.create_warc_record(url, "metadata", payload=payload, warc_content_type="application/json")
            )
        else:
            http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.0")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
    path.write_bytes(buf.getvalue())


@needs_capture
@pytest.mark.parametrize("kind", ["wat", "warc"])
def test_real_pages_in_the_real_wat_shape(tmp_path, kind):
    pages = real_pages()
    assert pages
    write_real(tmp_path / "real.gz", kind, pages)
    _, base = run(tmp_path / "real.gz")
    assert base.kept > 0 and not set(base.dropped) & set(WITHHELD)  # real metas (generator, og:*) and headers
    would_keep = base.kept + base.dropped.get("duplicate", 0)
    robots = b'<meta name="robots" content="noindex,noai">'
    variants = {
        PairStatus.PAGE_OPT_OUT: [(u, h, b.replace(b"<head>", b"<head>" + robots, 1)) for u, h, b in pages],
        # two X-Robots-Tag headers: one JSON list in the WAT
        PairStatus.PAGE_OPT_OUT.value + "/header": [
            (u, [*h, ("X-Robots-Tag", "noarchive"), ("X-Robots-Tag", "noimageai")], b) for u, h, b in pages
        ],
        PairStatus.TDM_RESERVED_HEADER: [(u, [*h, ("tdm-reservation", "1")], b) for u, h, b in pages],
    }
    for name, variant in variants.items():
        write_real(tmp_path / "variant.gz", kind, variant)
        table, stats = run(tmp_path / "variant.gz")
        status = name.split("/")[0]
        assert table.num_rows == 0 and stats.dropped.get(status) == would_keep, name


# --- the world: pages of each kind, in WAT and WARC, against its ground truth


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(
        str(tmp_path_factory.mktemp("world")), WorldSpec(seed=11, segments=1, files_per_segment=1, pages_per_file=8)
    )


def test_world_pages_agree_with_the_ground_truth(world):
    rows = world.manifest_pairs().to_pylist()
    truth = Counter(r["status"] for r in rows)
    kinds = {label for r in rows for label in r["case"].split("+") if label.startswith("page_")}
    assert kinds == {f"page_{o.name}" for o in PAGE_OPT_OUTS}
    assert all(truth[s] > 0 for s in WITHHELD)
    withheld = {(r["url"], r["text"]) for r in rows if r["status"] in WITHHELD}
    for uri in world.wat_uris() + world.warc_uris():
        table, stats = run(uri)
        assert pairs(table) == world.expected_pairs(), uri
        assert {s: stats.dropped.get(s.value, 0) for s in WITHHELD} == {s: truth[s] for s in WITHHELD}, uri
        table, _ = run(uri, consent=ConsentSettings(respect_optouts=False, respect_tdm_reservation=False))
        assert pairs(table) == world.expected_pairs() | withheld, uri


# --- the report


def test_the_report_counts_withheld_pairs_among_the_drop_reasons(tmp_path):
    from clipcrawl.tasks.report import stage as report
    from clipcrawl.tasks.report.html import write_report
    from tests.test_report import SETTINGS, write_pairs

    dropped = {"no_alt": 2, "alt_too_short": 1, "page_opt_out": 2, "tdm_reserved_header": 1, "tdm_reserved_meta": 1}
    write_pairs(tmp_path, "a", "S1", with_alt=10, kept=4, dropped=dropped | {"duplicate": 1}, seconds=1.0)
    stats = report.collect(str(tmp_path), SETTINGS)
    reasons = stats["stages_detail"]["ingest"]["reasons"]
    assert {k: reasons[k] for k in ("page_opt_out", "tdm_reserved_header", "tdm_reserved_meta")} == {
        "page_opt_out": 2,
        "tdm_reserved_header": 1,
        "tdm_reserved_meta": 1,
    }
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    # 10 with alt, less the alt-text drop and the 4 withheld; then the duplicate
    assert (funnel["extracted"], funnel["text_filtered"], funnel["deduplicated"]) == (10, 5, 4)
    page = Path(write_report(str(tmp_path), stats)).read_text()  # the drop-reason chart and its text
    assert all(reason in page for reason in ("page_opt_out", "tdm_reserved_header", "tdm_reserved_meta"))


# (id, <meta> attributes, response headers, what the page's pairs become)
ATTRIBUTE_CASES = [
    ("http_equiv_x_robots_tag", [{"http-equiv": "X-Robots-Tag", "content": "noai"}], [], PairStatus.PAGE_OPT_OUT),
    ("http_equiv_other_bot", [{"http-equiv": "X-Robots-Tag", "content": "otherbot: noai"}], [], None),
    ("http_equiv_tdm", [{"http-equiv": "tdm-reservation", "content": "1"}], [], PairStatus.TDM_RESERVED_META),
    ("space_separated", [{"name": "robots", "content": "noarchive noimageai"}], [], PairStatus.PAGE_OPT_OUT),
    ("semicolon_separated", [{"name": "robots", "content": "noarchive;noai"}], [], PairStatus.PAGE_OPT_OUT),
    ("folded_tdm_header", [], [("tdm-reservation", "1, 1")], PairStatus.TDM_RESERVED_HEADER),
    ("folded_tdm_header_0", [], [("tdm-reservation", "0,1")], PairStatus.TDM_RESERVED_HEADER),
    ("folded_x_robots_tag", [], [("X-Robots-Tag", "noarchive noai")], PairStatus.PAGE_OPT_OUT),
]


@pytest.mark.parametrize("kind", ["wat", "warc"])
@pytest.mark.parametrize(
    "metas, headers, status", [c[1:] for c in ATTRIBUTE_CASES], ids=[c[0] for c in ATTRIBUTE_CASES]
)
def test_http_equiv_folded_headers_and_spaced_directives(tmp_path, kind, metas, headers, status):
    links = [("a.jpg", "a red bike by a wall")]
    if kind == "wat":
        write_warc(tmp_path / "a.gz", [("wat", PAGE, wat_json(PAGE, links, metas=metas, headers=wat_headers(headers)))])
    else:
        head = "".join("<meta " + " ".join(f'{k}="{v}"' for k, v in m.items()) + ">" for m in metas)
        body = html_page(links, head_html=head).encode()
        write_warc(tmp_path / "a.gz", [("html", PAGE, body, "text/html; charset=utf-8", "200 OK", headers)])
    _, stats = run(tmp_path / "a.gz")
    assert (dict(stats.dropped), stats.kept) == (({status.value: 1}, 0) if status else ({}, 1))


def test_the_meta_tags_collected_per_page_are_capped():
    many = 20 * MAX_PAGE_METAS
    doc = wat_json(
        PAGE,
        [("a.jpg", "alt text")],
        metas=[{"name": "robots", "content": "index"}] * many,
        headers={"X-Robots-Tag": ["index"] * many},
    )
    page = page_links_from_wat(doc, frozenset({"robots"}), frozenset({"x-robots-tag"}))
    assert len(page.metas) == len(page.headers) == MAX_PAGE_METAS
    odd = doc.replace(b'"Metas": [', b'"Metas": [7, ')  # an entry that is no object: the generic decode
    assert odd != doc and len(page_links_from_wat(odd, frozenset({"robots"})).metas) == MAX_PAGE_METAS
    html = html_page([("a.jpg", "alt text")], head_html='<meta name="robots" content="index">' * many)
    assert len(page_links_from_html(PAGE, 200, html.encode(), "utf-8", frozenset({"robots"})).metas) == MAX_PAGE_METAS
