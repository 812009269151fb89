"""Pair extraction from tiny WAT/WARC files built here with warcio."""

from __future__ import annotations

import gzip
import io
import json
import sys
from urllib.parse import urljoin

import pyarrow as pa
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.ingest import language
from clipcrawl.tasks.ingest.extract import ExtractError, FileStats, iter_pairs
from clipcrawl.tasks.ingest.normalize import normalize_text, pair_uid, resolve_base, resolve_url

PAGE = "http://example.com/dir/page.html"

# (src as written, alt as written or None) -> expected (url, text) or the drop reason
CASES = [
    ("img/a.jpg", "a relative image", ("http://example.com/dir/img/a.jpg", "a relative image")),
    ("/root.jpg", "root relative image", ("http://example.com/root.jpg", "root relative image")),
    ("//cdn.example.org/p.jpg", "protocol relative", ("http://cdn.example.org/p.jpg", "protocol relative")),
    ("https://other.example.net/x.png", "already absolute", ("https://other.example.net/x.png", "already absolute")),
    (
        "pic.php?id=1&amp;size=2",
        "Tom &amp; Jerry &eacute;t&eacute;",
        ("http://example.com/dir/pic.php?id=1&size=2", "Tom & Jerry été"),
    ),
    (
        "q.php?a=1&copy=2",
        "legacy entity kept in urls",
        ("http://example.com/dir/q.php?a=1&copy=2", "legacy entity kept in urls"),
    ),
    ("data:image/png;base64,iVBORw0KGgo=", "inline data image", "unsupported_scheme"),
    ("javascript:void(0)", "scripted image", "unsupported_scheme"),
    ("ftp://files.example.com/a.jpg", "ftp image here", "unsupported_scheme"),
    ("mailto:a@example.com", "mail me please", "unsupported_scheme"),
    ("", "empty source url", "invalid_url"),
    ("http://", "no host at all", "invalid_url"),
    ("http://[::1/x.jpg", "broken ipv6 host", "invalid_url"),
    ("e.jpg", "", "alt_too_short"),
    ("f.jpg", "abcd", "alt_too_short"),
    ("g.jpg", "abcde", ("http://example.com/dir/g.jpg", "abcde")),
    ("h.jpg", "x" * 5000, "alt_too_long"),
    ("i.jpg", "Красный велосипед у стены", ("http://example.com/dir/i.jpg", "Красный велосипед у стены")),
    ("j.jpg", "赤い自転車です", ("http://example.com/dir/j.jpg", "赤い自転車です")),
    ("k.jpg", "  a&nbsp;red\n\tbike \u00a0 ", ("http://example.com/dir/k.jpg", "a red bike")),
    ("l.jpg", "IMG_0001.JPG", ("http://example.com/dir/l.jpg", "IMG_0001.JPG")),
    (" m.jpg\n", "spaces around src", ("http://example.com/dir/m.jpg", "spaces around src")),
    ("n.jpg", None, "no_alt"),
]


def wat_json(
    page_url: str,
    links: list[tuple[str, str | None]],
    base: str | None = None,
    status: int = 200,
    tags: list[tuple[str, str, str | None]] = (),
    metas: list[dict] = (),
    headers: dict | None = None,
) -> bytes:
    """`tags`: extra (name, href, rel or None) <link>/<a> tags, as in `html_page`; `metas`: Head.Metas entries;
    `headers`: the response's Headers (a repeated header's values a list, as Common Crawl writes them)."""
    head = {"Title": "a page"} | ({"Base": base} if base is not None else {})
    if metas:
        head["Metas"] = list(metas)
    head_links = [
        {"path": "LINK@/href", "url": href} | ({"rel": rel} if rel else {}) for t, href, rel in tags if t == "link"
    ]
    if head_links:
        head["Link"] = head_links
    link_objs = [{"path": "A@/href", "url": "/about", "text": "About"}]
    link_objs += [
        {"path": "A@/href", "url": href} | ({"rel": rel} if rel else {}) | {"text": "a link"}
        for t, href, rel in tags
        if t == "a"
    ]
    for src, alt in links:
        link_objs.append({"path": "IMG@/src", "url": src} | ({"alt": alt} if alt is not None else {}))
    doc = {
        "Container": {"Filename": "x.warc.gz", "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": str(status), "Reason": "OK"},
                    "Headers": {"Content-Type": "text/html"} | (headers or {}),
                    "HTML-Metadata": {"Head": head, "Links": link_objs},
                },
            },
        },
    }
    return json.dumps(doc, ensure_ascii=False).encode()


def request_json(page_url: str) -> bytes:
    return json.dumps(
        {
            "Envelope": {
                "WARC-Header-Metadata": {"WARC-Type": "request", "WARC-Target-URI": page_url},
                "Payload-Metadata": {"HTTP-Request-Metadata": {}},
            }
        }
    ).encode()


def html_page(
    links: list[tuple[str, str | None]],
    base: str | None = None,
    charset_meta: str | None = None,
    tags: list[tuple[str, str, str | None]] = (),
    head_html: str = "",
) -> str:
    head = (f'<meta charset="{charset_meta}">' if charset_meta else "") + (
        f'<base href="{base}">' if base is not None else ""
    )
    head += head_html
    tag = {name: "" for name in ("link", "a")}
    for name, href, rel in tags:
        rel_attr = f' rel="{rel}"' if rel else ""
        tag[name] += f'<link{rel_attr} href="{href}">' if name == "link" else f'<a{rel_attr} href="{href}">a link</a>'
    imgs = "".join(f'<img src="{s}"' + (f' alt="{a}"' if a is not None else "") + ">" for s, a in links)
    return (
        f"<!DOCTYPE html><html><head>{head}<title>t</title>{tag['link']}</head>"
        f"<body><p>Hi</p>{imgs}<footer>{tag['a']}</footer></body></html>"
    )


def write_warc(path, records: list[tuple], gzip_members: bool = True) -> None:
    """records: ("wat", uri, json bytes) | ("html", uri, body bytes, content-type[, status[, [(header, value)]]])
    | ("request", uri)."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gzip_members)
    writer.write_record(writer.create_warcinfo_record("x.warc.gz", {"software": "test"}))
    for rec in records:
        if rec[0] == "wat":
            writer.write_record(
                writer.create_warc_record(
                    rec[1], "metadata", payload=io.BytesIO(rec[2]), warc_content_type="application/json"
                )
            )
        elif rec[0] == "html":
            status = rec[4] if len(rec) > 4 else "200 OK"
            extra = list(rec[5]) if len(rec) > 5 else []
            http = StatusAndHeaders(status, [("Content-Type", rec[3]), *extra], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(rec[1], "response", payload=io.BytesIO(rec[2]), http_headers=http)
            )
        elif rec[0] == "request":
            http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
            writer.write_record(
                writer.create_warc_record(rec[1], "request", payload=io.BytesIO(b""), http_headers=http)
            )
    path.write_bytes(buf.getvalue())


def run(uri, **kw) -> tuple[pa.Table, FileStats]:
    settings = ExtractSettings(**({"detect_language": False} | kw))
    stats = FileStats(uri=str(uri))
    batches = list(iter_pairs(str(uri), settings, stats))
    table = (
        pa.Table.from_batches(batches)
        if batches
        else pa.table({"uid": pa.array([], pa.uint64()), "url": [], "caption": []})
    )
    return table, stats


def pairs(table: pa.Table) -> set[tuple[str, str]]:
    return set(zip(table.column("url").to_pylist(), table.column("caption").to_pylist()))


def expected_pairs(cases, page=PAGE) -> set:
    return {e for _, _, e in cases if isinstance(e, tuple)}


def expected_drops(cases) -> dict:
    out: dict[str, int] = {}
    for _, _, e in cases:
        if isinstance(e, str):
            out[e] = out.get(e, 0) + 1
    return out


def test_wat_cases(tmp_path):
    links = [(s, a) for s, a, _ in CASES]
    write_warc(
        tmp_path / "a.wat.gz",
        [("request", PAGE), ("wat", PAGE, request_json(PAGE)), ("wat", PAGE, wat_json(PAGE, links))],
    )
    table, stats = run(tmp_path / "a.wat.gz")
    assert pairs(table) == expected_pairs(CASES)
    d = stats.to_dict()
    assert d["kind"] == "wat"  # request records do not count as WARC pages
    assert d["status"] == "ok" and d["error"] is None
    assert d["dropped"] == expected_drops(CASES)
    assert d["img_links"] == len(CASES) and d["with_alt"] == len(CASES) - 1
    assert d["kept"] == table.num_rows == len(expected_pairs(CASES))
    assert d["responses"] == 1 and d["html_pages"] == 1 and d["records"] == 4
    assert table.column("uid").to_pylist() == [
        pair_uid(u, t) for u, t in zip(table.column("url").to_pylist(), table.column("caption").to_pylist())
    ]
    assert table.schema.field("uid").type == pa.uint64()
    assert table.column("page_url").to_pylist() == [PAGE] * table.num_rows


def test_warc_cases_match_wat(tmp_path):
    links = [(s, a) for s, a, _ in CASES]
    body = html_page(links).encode("utf-8")
    write_warc(tmp_path / "a.warc.gz", [("request", PAGE), ("html", PAGE, body, "text/html; charset=utf-8")])
    table, stats = run(tmp_path / "a.warc.gz")
    assert stats.kind == "warc"
    assert pairs(table) == expected_pairs(CASES)
    assert stats.dropped == expected_drops(CASES)


@pytest.mark.parametrize(
    "base,src,url",
    [
        ("http://static.example.com/assets/", "z.jpg", "http://static.example.com/assets/z.jpg"),
        ("/assets/", "z.jpg", "http://example.com/assets/z.jpg"),
        ("sub/", "../z.jpg", "http://example.com/dir/z.jpg"),
        ("https://s.example.com/a/?x=1&amp;y=2", "z.jpg", "https://s.example.com/a/z.jpg"),
    ],
)
def test_base_href_wat_and_warc(tmp_path, base, src, url):
    links = [(src, "picture with a base")]
    write_warc(tmp_path / "a.wat.gz", [("wat", PAGE, wat_json(PAGE, links, base=base))])
    write_warc(tmp_path / "a.warc.gz", [("html", PAGE, html_page(links, base=base).encode(), "text/html")])
    for name in ("a.wat.gz", "a.warc.gz"):
        table, _ = run(tmp_path / name)
        assert pairs(table) == {(url, "picture with a base")}, name


@pytest.mark.parametrize(
    "charset,how",
    [("windows-1251", "header"), ("shift_jis", "meta"), ("iso-8859-1", "header"), ("windows-1251", "detect")],
)
def test_warc_charsets(tmp_path, charset, how):
    text = {
        "windows-1251": "Красный велосипед у стены дома",
        "shift_jis": "赤い自転車が壁に立てかけてある",
        "iso-8859-1": "Café crème à côté du château",
    }[charset]
    filler = {
        "windows-1251": "Это длинный русский текст для определения кодировки. " * 20,
        "shift_jis": "",
        "iso-8859-1": "",
    }[charset]
    page = html_page([("a.jpg", text)], charset_meta=charset if how == "meta" else None).replace(
        "<p>Hi</p>", f"<p>{filler}</p>"
    )
    ctype = f"text/html; charset={charset}" if how == "header" else "text/html"
    write_warc(tmp_path / "a.warc.gz", [("html", PAGE, page.encode(charset), ctype)])
    table, stats = run(tmp_path / "a.warc.gz")
    assert pairs(table) == {("http://example.com/dir/a.jpg", text)}


def test_warc_skips_non_html_and_errors(tmp_path):
    links = [("a.jpg", "a fine picture")]
    write_warc(
        tmp_path / "a.warc.gz",
        [
            ("html", PAGE, html_page(links).encode(), "text/html"),
            ("html", PAGE + "?404", html_page([("b.jpg", "not found page")]).encode(), "text/html", "404 Not Found"),
            ("html", PAGE + ".json", b'{"img": "<img src=c.jpg alt=nope>"}', "application/json"),
            ("html", PAGE + "?sniff", html_page([("d.jpg", "sniffed html page")]).encode(), "application/octet-stream"),
        ],
    )
    table, stats = run(tmp_path / "a.warc.gz")
    assert pairs(table) == {
        ("http://example.com/dir/a.jpg", "a fine picture"),
        ("http://example.com/dir/d.jpg", "sniffed html page"),
    }
    assert stats.responses == 4 and stats.html_pages == 2


def test_dedup_within_file(tmp_path):
    p2 = "http://example.com/other.html"
    links = [("/a.jpg", "same pair twice"), ("/a.jpg", "same pair twice"), ("/a.jpg", "other text same url")]
    write_warc(
        tmp_path / "a.wat.gz",
        [
            ("wat", PAGE, wat_json(PAGE, links)),
            ("wat", p2, wat_json(p2, [("http://example.com/a.jpg", "same pair twice")])),
        ],
    )
    table, stats = run(tmp_path / "a.wat.gz")
    assert table.num_rows == 2 and stats.dropped == {"duplicate": 2}
    assert len(set(table.column("uid").to_pylist())) == 2


def test_language(tmp_path):
    links = [
        ("a.jpg", "Красный велосипед стоит у стены"),
        ("b.jpg", "A red bicycle leaning against the wall"),
        ("c.jpg", "Ein rotes Fahrrad lehnt an der Wand"),
    ]
    write_warc(tmp_path / "a.wat.gz", [("wat", PAGE, wat_json(PAGE, links))])
    table, _ = run(tmp_path / "a.wat.gz", detect_language=True)
    assert table.column("language").to_pylist() == ["ru", "en", "de"]
    table, _ = run(tmp_path / "a.wat.gz", detect_language=False)
    assert table.column("language").null_count == 3


def test_each_text_of_a_batch_gets_its_own_language():
    """A batch of repeated, mixed texts gives each text the language it gets alone, in a later batch too."""
    texts = [
        "A red bicycle leaning against the wall",
        "Ein rotes Fahrrad lehnt an der Wand",
        "Красный велосипед стоит у стены",
        "un vélo rouge contre le mur",
    ]
    batch = [texts[i] for i in (0, 1, 0, 2, 1, 3, 3, 0)]
    alone = [language.LanguageDetector().detect(text) for text in batch]
    assert alone == ["en", "de", "en", "ru", "de", "fr", "fr", "en"]
    detector = language.LanguageDetector()
    assert detector.detect_many(batch) == alone
    assert detector.detect_many(batch[::-1]) == alone[::-1]


def test_normalize_text_fast_path_equals_split_join():
    """Text returned as is (no whitespace but single inner spaces) equals the split-and-join of every other."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    for space in spaces:
        for text in (f"{space}a", f"a{space}", f"a{space}b", f"a {space}b", space, f"a{space}{space}b"):
            assert normalize_text(text) == " ".join(text.split()), repr(text)
    for text in ("a b", "a  b", " a", "a ", "", "ab\u200bc", "é ü"):
        assert normalize_text(text) == " ".join(text.split()), repr(text)


@pytest.mark.parametrize(
    "base",
    [
        "http://h.com/a/b/c.html?q=1#f",
        "https://h.com",
        "http://h.com/a/",
        "http://h.com:81/a/b/c/",
        "http://h.com/a//b/c",  # urljoin drops empty segments
        "http://h.com/a/./b/../c/d",  # and resolves the base's dot segments
        "http://u:p@h.com/a/b",
        "http://h.com/a b/\u00e9/x",
    ],
)
def test_dot_relative_srcs_resolve_as_urljoin(base):
    srcs = ["./a.jpg", "../a.jpg", "../../../../a.jpg", "./../img/a.jpg", "../img/./a.jpg", "../a/../b.jpg"]
    srcs += [
        "../a.jpg?x=../y",
        "../a.jpg#../f",
        "../a;p.jpg",
        "../a;?x=1",
        "../a?#f",
        "./a//b.jpg",
        "../",
        "./",
        ".",
        "..",
    ]
    srcs += ["../a:b.jpg", "./?q", "../#f", ".a.jpg", "..a.jpg", "../ä.jpg"]
    page = resolve_base(base, None)
    for src in srcs:
        assert resolve_url(src, page) == (urljoin(base, src), PairStatus.KEPT), src


def test_batches_are_bounded(tmp_path):
    recs = []
    for p in range(30):
        page = f"http://example.com/p{p}.html"
        recs.append(("wat", page, wat_json(page, [(f"/img/{p}/{i}.jpg", f"picture number {i}") for i in range(100)])))
    write_warc(tmp_path / "a.wat.gz", recs)
    settings = ExtractSettings(batch_rows=1024, detect_language=False)
    stats = FileStats(uri="x")
    sizes = [b.num_rows for b in iter_pairs(str(tmp_path / "a.wat.gz"), settings, stats)]
    assert max(sizes) <= 1024 and sum(sizes) == 3000 == stats.kept and len(sizes) >= 3


# --- bad input -------------------------------------------------------------------------------


def many_pages(n=200):
    recs = []
    for p in range(n):
        page = f"http://example.com/p{p}.html"
        recs.append(("wat", page, request_json(page)))
        recs.append(
            ("wat", page, wat_json(page, [(f"/img/{p}/{i}.jpg", f"picture number {i} of page {p}") for i in range(20)]))
        )
    return recs


def test_truncated_gzip_is_partial(tmp_path):
    write_warc(tmp_path / "full.wat.gz", many_pages())
    data = (tmp_path / "full.wat.gz").read_bytes()
    (tmp_path / "cut.wat.gz").write_bytes(data[: len(data) // 2])
    full, _ = run(tmp_path / "full.wat.gz")
    table, stats = run(tmp_path / "cut.wat.gz")
    assert stats.status == "partial"
    assert "cut.wat.gz" in stats.error and "truncated" in stats.error and "records" in stats.error
    assert 0 < table.num_rows < full.num_rows
    assert pairs(table) <= pairs(full)


def test_corrupt_gzip_midway_is_partial(tmp_path):
    write_warc(tmp_path / "full.wat.gz", many_pages())
    data = bytearray((tmp_path / "full.wat.gz").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 200] = b"\xff" * 200
    (tmp_path / "bad.wat.gz").write_bytes(bytes(data))
    full, _ = run(tmp_path / "full.wat.gz")
    table, stats = run(tmp_path / "bad.wat.gz")
    assert stats.status == "partial" and "bad.wat.gz" in stats.error
    assert 0 < table.num_rows < full.num_rows and pairs(table) <= pairs(full)


def test_single_gzip_stream_is_read(tmp_path):
    write_warc(tmp_path / "plain.wat", many_pages(), gzip_members=False)
    (tmp_path / "one.wat.gz").write_bytes(gzip.compress((tmp_path / "plain.wat").read_bytes()))
    write_warc(tmp_path / "members.wat.gz", many_pages())
    ref, _ = run(tmp_path / "members.wat.gz")
    for name in ("one.wat.gz", "plain.wat"):
        table, stats = run(tmp_path / name)
        assert stats.status == "ok" and pairs(table) == pairs(ref), name


@pytest.mark.parametrize(
    "content",
    [b"hello, this is not a warc file at all\n" * 10, gzip.compress(b"<html>nope</html>" * 10, mtime=0), b""],
    ids=["text", "gzipped-html", "empty"],
)
def test_not_a_warc(tmp_path, content):
    (tmp_path / "x.wat.gz").write_bytes(content)
    stats = FileStats(uri=str(tmp_path / "x.wat.gz"))
    with pytest.raises(ExtractError, match="not a WARC/WAT file"):
        list(iter_pairs(str(tmp_path / "x.wat.gz"), ExtractSettings(), stats))
    assert stats.status == "failed" and "x.wat.gz" in stats.error


def test_malformed_json_record_is_skipped(tmp_path):
    good = [("/a.jpg", "a good picture here")]
    write_warc(
        tmp_path / "a.wat.gz",
        [
            ("wat", PAGE, wat_json(PAGE, good)[:-40]),  # cut JSON that still mentions IMG@/src
            ("wat", PAGE, b'{"Envelope": [1, 2, "IMG@/src"]}'),  # valid JSON, wrong structure
            ("wat", PAGE + "?2", wat_json(PAGE + "?2", good)),
        ],
    )
    table, stats = run(tmp_path / "a.wat.gz")
    assert stats.malformed_records == 2 and stats.status == "ok"
    assert pairs(table) == {("http://example.com/a.jpg", "a good picture here")}


def test_garbage_in_a_plain_warc_costs_only_itself(tmp_path):
    """Unparsable bytes between records and after the last: each stretch is one malformed record, and reading
    resumes at the next line that starts a record."""
    write_warc(tmp_path / "a.wat", many_pages(20), gzip_members=False)
    write_warc(tmp_path / "c.wat", many_pages(40)[20:], gzip_members=False)
    garbage = b"this is definitely not a warc record\r\n" * 50
    data = (tmp_path / "a.wat").read_bytes() + garbage + (tmp_path / "c.wat").read_bytes() + garbage
    (tmp_path / "b.wat").write_bytes(data)
    whole, _ = run(tmp_path / "a.wat")
    rest, _ = run(tmp_path / "c.wat")
    table, stats = run(tmp_path / "b.wat")
    assert pairs(table) == pairs(whole) | pairs(rest) and table.num_rows == 40 * 20
    assert stats.status == "ok" and stats.malformed_records == 2
    assert "unparsable WARC record" in stats.malformed_first


def test_missing_file_propagates(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_pairs(str(tmp_path / "nope.wat.gz"), ExtractSettings(), FileStats(uri="x")))


def test_unreachable_http_propagates():
    aiohttp = pytest.importorskip("aiohttp")
    stats = FileStats(uri="http://127.0.0.1:9/x.wat.gz")
    with pytest.raises((aiohttp.ClientError, OSError)) as info:
        list(iter_pairs("http://127.0.0.1:9/x.wat.gz", ExtractSettings(), stats))
    assert not isinstance(info.value, ExtractError)
    assert stats.status == "failed"


def test_stats_dict_keys(tmp_path):
    write_warc(tmp_path / "a.wat.gz", [("wat", PAGE, wat_json(PAGE, [("/a.jpg", "a good picture here")]))])
    _, stats = run(tmp_path / "a.wat.gz")
    d = stats.to_dict()
    assert set(d) == {
        "uri",
        "kind",
        "status",
        "error",
        "records",
        "responses",
        "html_pages",
        "img_links",
        "with_alt",
        "kept",
        "dropped",
        "skipped_records",
        "malformed_records",
        "malformed_first",
        "truncated_pages",
        "compressed_bytes",
        "seconds",
    }
    assert d["kind"] == "wat" and d["compressed_bytes"] == (tmp_path / "a.wat.gz").stat().st_size
    json.dumps(d)


def test_mixed_file(tmp_path):
    links = [("a.jpg", "a picture in both")]
    p2 = "http://example.com/dir/two.html"
    write_warc(
        tmp_path / "m.warc.gz",
        [("wat", PAGE, wat_json(PAGE, links)), ("html", p2, html_page(links).encode(), "text/html")],
    )
    table, stats = run(tmp_path / "m.warc.gz")
    assert stats.kind == "mixed" and stats.dropped == {"duplicate": 1} and table.num_rows == 1


# --- license -----------------------------------------------------------------------------------

CC_BY = "https://creativecommons.org/licenses/by/4.0/"
# (page, base href, tags (name, href as written, rel)) -> the license every pair of the page gets
LICENSE_CASES = {
    "none": (PAGE, None, [("a", "/contact", None), ("link", "/style.css", "stylesheet")], None),
    "plain_anchor": (PAGE, None, [("a", "/x", None), ("a", CC_BY, None), ("a", CC_BY + "deed.fr", None)], CC_BY),
    "rel_beats_earlier_plain": (
        PAGE,
        None,
        [
            ("a", "https://creativecommons.org/licenses/by-nd/4.0/", None),
            ("a", "http://creativecommons.org/licenses/by-sa/3.0/", "license"),
        ],
        "http://creativecommons.org/licenses/by-sa/3.0/",
    ),
    "rel_tokens": (
        PAGE,
        None,
        [("a", CC_BY, None), ("a", "https://www.creativecommons.org/licenses/by-nc/4.0/", "noopener License")],
        "https://www.creativecommons.org/licenses/by-nc/4.0/",
    ),
    "head_link_protocol_relative": (
        PAGE,
        None,
        [("link", "//creativecommons.org/publicdomain/zero/1.0/", "license"), ("a", CC_BY, "license")],
        "http://creativecommons.org/publicdomain/zero/1.0/",
    ),
    "decoys": (
        PAGE,
        None,
        [
            ("a", "https://creativecommons.org/", None),
            ("a", "https://creativecommons.org/about/", None),
            ("a", "https://search.creativecommons.org/licenses/by/4.0/", None),
            ("a", "https://example-licenses.world.test/licenses/by/4.0/", "license"),
            ("a", "https://creativecommons.org.evil.test/licenses/by/4.0/", None),
            ("a", "https://creativecommons.org@evil.test/licenses/by/4.0/", None),
            ("a", "ftp://creativecommons.org/licenses/by/4.0/", None),
            ("link", CC_BY, "alternate"),
            ("link", "/license.html", "license"),
        ],
        None,
    ),
    "rel_license_elsewhere_then_plain_cc": (
        PAGE,
        None,
        [("a", "https://example.com/terms", "license"), ("a", CC_BY, None)],
        CC_BY,
    ),
    "relative_to_base": (
        PAGE,
        "https://creativecommons.org/",
        [("a", "licenses/by-nc/4.0/", "license")],
        "https://creativecommons.org/licenses/by-nc/4.0/",
    ),
    "relative_to_page": (
        "https://creativecommons.org/about/cclicenses/",
        None,
        [("a", "../../licenses/by/2.0/", None)],
        "https://creativecommons.org/licenses/by/2.0/",
    ),
    "entity_in_href": (
        PAGE,
        None,
        [("a", CC_BY + "?ref=chooser&amp;lang=de", "license")],
        CC_BY + "?ref=chooser&lang=de",
    ),
}


@pytest.mark.parametrize("case", LICENSE_CASES)
def test_license_from_wat_and_warc(tmp_path, case):
    page, base, tags, expected = LICENSE_CASES[case]
    other = "http://example.com/other.html"  # a page without license in the same file
    links = [("a.jpg", "first picture here"), ("b.jpg", "second picture here")]
    write_warc(
        tmp_path / "a.wat.gz",
        [
            ("wat", page, wat_json(page, links, base=base, tags=tags)),
            ("wat", other, wat_json(other, [("c.jpg", "a third picture")])),
        ],
    )
    write_warc(
        tmp_path / "a.warc.gz",
        [
            ("html", page, html_page(links, base=base, tags=tags).encode(), "text/html"),
            ("html", other, html_page([("c.jpg", "a third picture")]).encode(), "text/html"),
        ],
    )
    for name in ("a.wat.gz", "a.warc.gz"):
        table, _ = run(tmp_path / name)
        got = dict(zip(table.column("caption").to_pylist(), table.column("license").to_pylist()))
        assert got == {"first picture here": expected, "second picture here": expected, "a third picture": None}, name


def test_license_search_needs_the_marker_and_survives_odd_links(tmp_path):
    # a license link written with an upper-case host is not searched for (cheap case-sensitive test)
    upper = wat_json(
        PAGE, [("a.jpg", "a fine picture")], tags=[("a", "https://CreativeCommons.ORG/licenses/by/4.0/", "license")]
    )
    # an unexpected Head.Link shape loses the license search, not the page's pairs
    odd = json.loads(wat_json(PAGE + "?2", [("b.jpg", "another fine picture")], tags=[("a", CC_BY, None)]))
    odd["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Head"]["Link"] = "not a list"
    write_warc(tmp_path / "a.wat.gz", [("wat", PAGE, upper), ("wat", PAGE + "?2", json.dumps(odd).encode())])
    table, stats = run(tmp_path / "a.wat.gz")
    assert dict(zip(table.column("caption").to_pylist(), table.column("license").to_pylist())) == {
        "a fine picture": None,
        "another fine picture": CC_BY,
    }
    assert stats.malformed_records == 0
