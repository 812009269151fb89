"""The synthetic crawl world: determinism, Common Crawl formats, ground truth, image server."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import http.client
import io
import os
import socket
import ssl
import struct
import time
import urllib.request
import urllib.robotparser
import zlib
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

from clipcrawl.tasks.core.config import ConsentSettings, DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus, PairStatus
from clipcrawl.tasks.download.fetch import Fetcher
from clipcrawl.tasks.download.optout import NO_TDM_RULES, parse_tdmrep
from clipcrawl.tasks.world import ImageServer, Scene, WorldSpec, generate_world, render_scene, sample_training_pairs
from clipcrawl.tasks.world.behaviours import (
    BEHAVIOURS,
    BOMB_SIZE,
    HUGE_LENGTH,
    NXDOMAIN_HOST,
    PRIVATE_ADDRESS,
    expected_status,
)
from clipcrawl.tasks.world.captions import ALT_CASES, expected_text
from clipcrawl.tasks.world.groundtruth import compare_pairs
from clipcrawl.tasks.world.page_optouts import PAGE_OPT_OUTS
from clipcrawl.tasks.world.pages import LICENSE_DECOYS
from clipcrawl.tasks.world.payloads import body as payload
from clipcrawl.tasks.world.scenes import image_spec
from clipcrawl.tasks.world.srcs import BAD_SRC_STATUS, SRC_CASES

SPEC = WorldSpec(seed=7, segments=2, files_per_segment=2, pages_per_file=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(str(tmp_path_factory.mktemp("world")), SPEC)


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def _members(data: bytes) -> list[bytes]:
    """Split a file into its gzip members (each must decompress on its own)."""
    members = []
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        members.append(d.decompress(data))
        assert d.eof, "truncated gzip member"
        data = d.unused_data
    return members


def _wat_docs(path: str) -> list[tuple[dict, dict]]:
    with open(path, "rb") as f:
        return [
            (dict(r.rec_headers.headers), orjson.loads(r.content_stream().read()))
            for r in ArchiveIterator(f)
            if r.rec_type == "metadata"
        ]


def test_same_spec_gives_same_bytes(world, tmp_path):
    again = generate_world(str(tmp_path / "again"), SPEC)
    assert _files(world.root) == _files(again.root)
    regenerated = generate_world(str(tmp_path / "again"), SPEC, force=True)
    assert _files(regenerated.root) == _files(world.root)
    other = generate_world(
        str(tmp_path / "other"), WorldSpec(seed=8, segments=1, files_per_segment=1, pages_per_file=10)
    )
    assert _files(other.root).keys() != _files(world.root).keys() or _files(other.root) != _files(world.root)


def test_listing_files_name_every_file(world):
    crawl = os.path.join(world.root, "crawl-data", SPEC.crawl_id)
    wat = gzip.decompress(Path(os.path.join(crawl, "wat.paths.gz")).read_bytes()).decode().split()
    warc = gzip.decompress(Path(os.path.join(crawl, "warc.paths.gz")).read_bytes()).decode().split()
    segments = gzip.decompress(Path(os.path.join(crawl, "segment.paths.gz")).read_bytes()).decode().split()
    assert len(wat) == len(warc) == SPEC.segments * SPEC.files_per_segment and len(segments) == SPEC.segments
    assert all(p.startswith(f"crawl-data/{SPEC.crawl_id}/segments/") and p.endswith(".warc.wat.gz") for p in wat)
    assert all("/warc/CC-MAIN-" in p and p.endswith("0.warc.gz") or p.endswith(".warc.gz") for p in warc)
    assert [os.path.join(world.root, p) for p in sorted(wat)] == world.wat_uris()
    assert all(os.path.exists(p) for p in world.wat_uris() + world.warc_uris())
    assert orjson.loads(Path(os.path.join(world.root, "collinfo.json")).read_bytes())[0]["id"] == SPEC.crawl_id


def test_one_gzip_member_per_record(world):
    for path in world.wat_uris()[:1] + world.warc_uris()[:1]:
        members = _members(Path(path).read_bytes())
        assert all(m.startswith(b"WARC/1.0\r\n") and m.endswith(b"\r\n\r\n") for m in members)
        assert members[0].split(b"\r\n")[1] == b"WARC-Type: warcinfo"
        with open(path, "rb") as f:
            assert len(list(ArchiveIterator(f))) == len(members)


def test_wat_json_shape(world):
    def strings_only(x):
        if isinstance(x, dict):
            return all(strings_only(v) for v in x.values())
        if isinstance(x, list):
            return all(strings_only(v) for v in x)
        return isinstance(x, str)

    kinds = defaultdict(int)
    with open(world.warc_uris()[0], "rb") as f:
        warc_ids = {r.rec_headers.get_header("WARC-Record-ID"): r.rec_type for r in ArchiveIterator(f)}
    docs = _wat_docs(world.wat_uris()[0])
    for headers, doc in docs:
        assert strings_only(doc)
        assert headers["Content-Type"] == "application/json"
        env = doc["Envelope"]
        kind = env["WARC-Header-Metadata"]["WARC-Type"]
        assert warc_ids[headers["WARC-Refers-To"]] == kind
        kinds[kind] += 1
        if kind == "request":
            assert "HTTP-Request-Metadata" in env["Payload-Metadata"]
    assert len(docs) == len(warc_ids)
    assert kinds["warcinfo"] == 1 and kinds["request"] > kinds["response"] > 0 and kinds["metadata"] > 0
    assert 0.25 < kinds["response"] / len(docs) < 0.4


def test_container_offsets_point_into_the_warc(world):
    warc = Path(world.warc_uris()[0]).read_bytes()
    for _, doc in _wat_docs(world.wat_uris()[0])[:20]:
        c = doc["Container"]
        start, length = int(c["Offset"]), int(c["Gzip-Metadata"]["Deflate-Length"]) + 18
        record = gzip.decompress(warc[start : start + length])
        assert int(c["Gzip-Metadata"]["Inflated-Length"]) == len(record)
        rid = doc["Envelope"]["WARC-Header-Metadata"]["WARC-Record-ID"].encode()
        assert rid in record[:1000]


def _wat_images(world) -> dict[str, list[dict]]:
    """page url -> IMG@/src links, with the page's base, from every WAT."""
    pages = {}
    for path in world.wat_uris():
        for _, doc in _wat_docs(path):
            meta = doc["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata", {}).get("HTML-Metadata")
            if meta:
                url = doc["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"]
                base = meta["Head"].get("Base", url)
                pages[url] = [dict(link, base=base) for link in meta["Links"] if link["path"] == "IMG@/src"]
    return pages


def test_manifest_matches_wat_links(world):
    pairs = world.manifest_pairs().to_pylist()
    by_page = defaultdict(list)
    for row in pairs:
        by_page[row["page_url"]].append(row)
    wat = _wat_images(world)
    assert set(by_page) <= set(wat) and any(not links for links in wat.values())  # pages without images
    for page, rows in by_page.items():
        links = wat[page]
        assert [link["url"] for link in links] == [r["src"] for r in rows]
        assert [link.get("alt") for link in links] == [r["alt"] for r in rows]  # absent stays absent
        for link, row in zip(links, rows):
            assert row["text"] == expected_text(link.get("alt"))
            if row["url"] is not None:  # the generator's canonical URL equals what a URL joiner resolves
                assert urljoin(link["base"], html.unescape(link["url"])) == row["url"]
    assert any(r["alt"] == "" for r in pairs) and any(r["alt"] is None for r in pairs)
    assert any("&amp;" in r["src"] for r in pairs) and any("&#" in (r["alt"] or "") for r in pairs)


def test_every_case_present_and_statuses(world):
    pairs = world.manifest_pairs().to_pylist()
    assert {r["src_case"] for r in pairs} == set(SRC_CASES)
    assert {r["alt_case"] for r in pairs} == set(ALT_CASES)
    labels = {label for r in pairs for label in r["case"].split("+")}
    assert {
        "base_href",
        "shared",
        "charset_windows-1251",
        "charset_shift_jis",
        "charset_gb2312",
        "charset_iso-8859-1",
    } <= labels
    statuses = {r["status"] for r in pairs}
    assert statuses == {str(s) for s in PairStatus} - {PairStatus.DUPLICATE}
    kept = [r for r in pairs if r["status"] == PairStatus.KEPT]
    assert 0.6 < sum(r["matches"] for r in kept) / len(kept) < 0.9
    assert any(4096 >= len(r["text"]) > 1000 for r in kept)
    # The same (url, text) kept in several files and segments.
    where = defaultdict(set)
    for r in kept:
        where[(r["url"], r["text"])].add((r["segment"], r["wat_file"]))
    assert max(len({s for s, _ in v}) for v in where.values()) > 1
    assert world.expected_pairs() == set(where)


def test_warc_html_holds_raw_bytes_of_declared_charset(world):
    class Imgs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.alts = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.alts.append(dict(attrs).get("alt"))

    rows = defaultdict(list)
    for r in world.manifest_pairs().to_pylist():
        rows[r["page_url"]].append(r)
    seen = set()
    for path in world.warc_uris():
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                url = rec.rec_headers.get_header("WARC-Target-URI")
                if rec.rec_type != "response" or url not in rows:
                    continue
                charset = rows[url][0]["charset"]
                body = rec.content_stream().read()
                parser = Imgs()
                parser.feed(body.decode(charset))
                assert [expected_text(a) if a is None else " ".join(a.split()) for a in parser.alts] == [
                    r["text"] for r in rows[url]
                ]
                seen.add(charset)
    assert seen == {"utf-8", "windows-1251", "shift_jis", "iso-8859-1", "gb2312"}


def _license_tags(world) -> dict[str, tuple[str, list[tuple[str, str, str | None]]]]:
    """page url -> (base, its <link> then <a> tags as (name, href, rel)), from every WAT."""
    pages = {}
    for path in world.wat_uris():
        for _, doc in _wat_docs(path):
            meta = doc["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata", {}).get("HTML-Metadata")
            if meta:
                url = doc["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"]
                tags = [("link", x["url"], x.get("rel")) for x in meta["Head"]["Link"]]
                tags += [("a", x["url"], x.get("rel")) for x in meta["Links"] if x["path"] == "A@/href"]
                pages[url] = (meta["Head"].get("Base", url), tags)
    return pages


def _license_of(base: str, tags: list[tuple[str, str, str | None]]) -> str | None:
    """The rule, written independently of tasks/: the first rel=license CC link, else the first <a> to one."""

    def cc(href):
        url = urljoin(base, html.unescape(href))
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and parts.hostname in ("creativecommons.org", "www.creativecommons.org")
        return url if ok and parts.path.startswith(("/licenses/", "/publicdomain/")) else None

    rel = [cc(h) for _, h, r in tags if "license" in (r or "").lower().split() and cc(h)]
    plain = [cc(h) for name, h, _ in tags if name == "a" and cc(h)]
    return (rel + plain + [None])[0]


def test_manifest_licenses_match_wat_and_html(world):
    rows = {r["page_url"]: r for r in world.manifest_pairs().to_pylist()}
    assert world.page_licenses() == {page: r["license"] for page, r in rows.items()}
    tags = _license_tags(world)
    for page, licence in world.page_licenses().items():
        assert licence == _license_of(*tags[page]), page

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = {"link": [], "a": []}

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag in self.tags and "href" in attrs:
                self.tags[tag].append((tag, attrs["href"], attrs.get("rel")))

    checked = 0
    for path in world.warc_uris():
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                url = rec.rec_headers.get_header("WARC-Target-URI")
                if rec.rec_type == "response" and url in rows:
                    parser = Tags()
                    parser.feed(rec.content_stream().read().decode(rows[url]["charset"]))
                    wat = [(name, html.unescape(href), rel) for name, href, rel in tags[url][1]]
                    assert parser.tags["link"] + parser.tags["a"] == wat, url
                    checked += 1
    assert checked == len(rows)


def test_licenses_are_varied(world):
    licensed = [x for x in world.page_licenses().values() if x]
    assert 0.08 < len(licensed) / len(world.page_licenses()) < 0.3
    labels = {label for r in world.manifest_pairs().to_pylist() for label in r["case"].split("+")}
    assert {
        "license_footer_rel",
        "license_head_link",
        "license_plain_anchor",
        "license_decoy_then_rel",
        "license_decoy_only",
    } <= labels
    hrefs = {href for _, tags in _license_tags(world).values() for _, href, _ in tags}
    for prefix in (
        "http://creativecommons.org/licenses/",
        "https://creativecommons.org/licenses/",
        "//creativecommons.org/",
        "https://creativecommons.org/publicdomain/",
    ):
        assert any(h.startswith(prefix) for h in hrefs), prefix
    assert len(hrefs & set(LICENSE_DECOYS)) >= 2


def test_compare_pairs_checks_licenses(world, tmp_path):
    """A published row whose license differs from its page's manifest license makes the runs unequal."""
    rows = [r for r in world.manifest_pairs().to_pylist() if r["status"] == PairStatus.KEPT]
    unique = list({(r["url"], r["text"]): r for r in rows}.values())
    table = pa.table(
        {
            "url": [r["url"] for r in unique],
            "caption": [r["text"] for r in unique],  # the manifest's text, as pairs/ publish it
            "page_url": [r["page_url"] for r in unique],
            "license": pa.array([r["license"] for r in unique], pa.string()),
        }
    )
    (tmp_path / "pairs").mkdir()
    pq.write_table(table, tmp_path / "pairs" / "a.parquet")
    assert compare_pairs(world, str(tmp_path))["equal"]
    licensed = next(i for i, r in enumerate(unique) if r["license"])
    unlicensed = next(i for i, r in enumerate(unique) if not r["license"])
    wrong = table.column("license").to_pylist()
    wrong[licensed], wrong[unlicensed] = None, "https://creativecommons.org/licenses/by/1.0/"
    pq.write_table(table.set_column(3, "license", pa.array(wrong, pa.string())), tmp_path / "pairs" / "a.parquet")
    report = compare_pairs(world, str(tmp_path))
    assert not report["equal"] and report["wrong_license_rows"] == 2 and not report["missing"] and not report["extra"]
    assert {(w["license"], w["expected"]) for w in report["wrong_license"]} == {
        (None, unique[licensed]["license"]),
        ("https://creativecommons.org/licenses/by/1.0/", None),
    }


def test_images_manifest(world):
    images = world.manifest_images().to_pylist()
    assert {
        "image_id",
        "urls",
        "host",
        "shape",
        "colour",
        "count",
        "background",
        "size",
        "caption",
        "format",
        "flagged",
        "behaviour",
        "expected_status",
    } <= set(images[0])
    assert any(i["flagged"] for i in images) and {i["behaviour"] for i in images} == set(BEHAVIOURS)
    assert sum(i["behaviour"] == "ok" for i in images) > 0.75 * len(images)
    assert {i["format"] for i in images} == {"jpg", "png", "webp", "gif"}
    assert {i["expected_status"] for i in images} <= {str(s) for s in DownloadStatus}


def test_render_and_training_pairs():
    scene = Scene("star", "red", 3, "blue", "large", 1)
    a, b = render_scene(scene, (96, 64)), render_scene(scene, (96, 64))
    assert a.size == (96, 64) and a.tobytes() == b.tobytes()
    pairs = list(sample_training_pairs(5, seed=1))
    assert len(pairs) == 5 and all(isinstance(img, Image.Image) and len(cap) >= 5 for img, cap in pairs)
    assert [c for _, c in pairs] == [c for _, c in sample_training_pairs(5, seed=1)]


def _get(srv, url):
    """Fetch `url` through the server, resolving its virtual host like curl --resolve."""
    scheme, rest = url.split("://", 1)
    host, path = rest.split("/", 1)
    ip, port = srv.host_map.get(host, ("127.0.0.1", srv.port))
    req = urllib.request.Request(f"http://{ip}:{port}/{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), None


def test_server_serves_rendered_images_by_host(world):
    images = [i for i in world.manifest_images().to_pylist() if i["behaviour"] == "ok"]
    with ImageServer(world.root) as srv:
        assert set(srv.host_map) == {*world.image_hosts, *world.page_hosts} - {NXDOMAIN_HOST}
        assert any(h.startswith("img.site-") for h in srv.host_map) and "cdn.world.test" in srv.host_map
        for image in images[:12]:
            url = image["urls"][-1]
            status, body, ctype = _get(srv, url)
            assert status == 200 and ctype.startswith("image/")
            img = Image.open(io.BytesIO(body))
            spec = image_spec(SPEC.seed, image["image_id"])
            assert (
                img.size == (spec.width, spec.height) and img.format.lower().replace("jpeg", "jpg") == image["format"]
            )
            if image["format"] == "png":
                expected = render_scene(spec.scene, (spec.width, spec.height))
                assert hashlib.sha1(img.convert("RGB").tobytes()).digest() == hashlib.sha1(expected.tobytes()).digest()
        status, body, _ = _get(srv, "http://img.site-0.world.test/robots.txt")
        assert status == 200 and b"User-agent" in body
        assert _get(srv, "http://unknown.example/images/000001.jpg")[0] == 404
        assert _get(srv, "http://img.site-0.world.test/images/nothing.jpg")[0] == 404
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/robots.txt", timeout=1)


def test_wat_only_knob(tmp_path):
    spec = WorldSpec(
        seed=3,
        segments=1,
        files_per_segment=1,
        pages_per_file=20,
        warc=False,
        links_per_page=(50, 60),
        images_per_page=(20, 30),
    )
    w = generate_world(str(tmp_path / "watonly"), spec)
    assert w.warc_uris() == [] and len(w.wat_uris()) == 1
    docs = _wat_docs(w.wat_uris()[0])
    links = [
        len(d["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"])
        for _, d in docs
        if "HTML-Metadata" in d["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata", {})
    ]
    assert min(links) > 50


def test_opt_out_pages_in_wat_and_warc(world):
    """Each file ends with one page of each page-level opt-out; its meta tags and headers are in the WARC's HTML
    and response, and where Common Crawl's WAT puts them (Head.Metas, Headers); its pairs' ground truth says why."""
    rows = world.manifest_pairs().to_pylist()
    seen = defaultdict(set)
    for wat_path, warc_path in zip(world.wat_uris(), world.warc_uris()):
        wat = {
            d["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"]: d["Envelope"]["Payload-Metadata"][
                "HTTP-Response-Metadata"
            ]
            for _, d in _wat_docs(wat_path)
            if "HTML-Metadata" in d["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata", {})
        }
        with open(warc_path, "rb") as f:
            warc = {
                r.rec_headers.get_header("WARC-Target-URI"): (r.http_headers.headers, r.content_stream().read())
                for r in ArchiveIterator(f)
                if r.rec_type == "response"
            }
        for optout in PAGE_OPT_OUTS:
            (url,) = [u for u in wat if u.endswith(f"-{optout.name}.html")]
            metas = wat[url]["HTML-Metadata"]["Head"]["Metas"]
            assert all(m in metas for m in optout.metas) and set(optout.headers) <= set(wat[url]["Headers"].items())
            headers, body = warc[url]
            assert all(h in headers for h in optout.headers)
            assert all(f'<meta name="{m["name"]}" content="{m["content"]}">'.encode() in body for m in optout.metas)
            # the links that pass the alt-text and URL filters
            passed = {r["status"] for r in rows if r["page_url"] == url and r["src_case"] not in BAD_SRC_STATUS}
            seen[optout.name] |= passed - {PairStatus.NO_ALT, PairStatus.ALT_TOO_SHORT, PairStatus.ALT_TOO_LONG}
            assert all(f"page_{optout.name}" in r["case"] for r in rows if r["page_url"] == url)
    assert seen == {o.name: {str(o.status or PairStatus.KEPT)} for o in PAGE_OPT_OUTS}


# --- the misbehaving server and the download ground truth -------------------------------------------------


def _behaviour_urls(world) -> dict[str, list[str]]:
    """behaviour -> the kept image URLs showing it (http first)."""
    images = {i["image_id"]: i["behaviour"] for i in world.manifest_images().to_pylist()}
    out = defaultdict(set)
    for r in world.manifest_pairs().to_pylist():
        if r["status"] == PairStatus.KEPT and r["url"].startswith("http"):
            out[images[r["image_id"]]].add(r["url"])
    return {b: sorted(urls, key=lambda u: (u.startswith("https"), u)) for b, urls in out.items()}


@pytest.mark.parametrize(
    "spec",
    [SPEC, WorldSpec(seed=11, segments=1, files_per_segment=1, pages_per_file=1, warc=False)],
    ids=["small", "one-page"],
)
def test_every_behaviour_has_a_kept_pair_and_a_ground_truth(world, tmp_path, spec):
    w = world if spec == SPEC else generate_world(str(tmp_path / "tiny"), spec)
    by_behaviour = _behaviour_urls(w)
    assert set(by_behaviour) == set(BEHAVIOURS)
    expected = w.expected_downloads()
    kept = {
        r["url"]
        for r in w.manifest_pairs().to_pylist()
        if r["status"] == PairStatus.KEPT and r["url"].split(":")[0] in ("http", "https")
    }
    assert set(expected) == kept
    # every outcome of a download but unsupported_scheme (never kept), the opt-in image filters and taken_down
    # (a takedown's tombstone under OUT: tests/test_takedown.py)
    assert set(expected.values()) == {str(s) for s in DownloadStatus} - {
        DownloadStatus.UNSUPPORTED_SCHEME,
        DownloadStatus.TAKEN_DOWN,
        DownloadStatus.TOO_SMALL_PIXELS,
        DownloadStatus.BAD_ASPECT_RATIO,
    }
    strict = w.expected_downloads(DownloadSettings(min_image_size=64, max_aspect_ratio=10))
    assert {DownloadStatus.TOO_SMALL_PIXELS, DownloadStatus.BAD_ASPECT_RATIO} <= set(strict.values())
    table = {b: {expected[u] for u in urls} for b, urls in by_behaviour.items()}
    assert all(len(v) == 1 for v in table.values()), table  # one status per behaviour
    assert {b: v.pop() for b, v in table.items()} == {
        "ok": "success",
        "slow": "success",
        "timeout": "timeout",
        "unavailable_twice": "success",
        "error_500": "http_5xx",
        "rate_limited": "success",
        "not_found": "http_4xx",
        "gone": "http_4xx",
        "forbidden": "http_4xx",
        "redirect": "success",
        "redirect_loop": "too_many_redirects",
        "disconnect": "connection_error",
        "text_plain": "success",
        "octet_stream": "success",
        "truncated_jpeg": "decode_error",
        "endless_body": "too_large",
        "endless_drip": "timeout",
        "huge_content_length": "too_large",
        "pixel_bomb": "too_many_pixels",
        "tiny_image": "too_small_bytes",
        "empty_body": "too_small_bytes",
        "cmyk_jpeg": "success",
        "png_alpha": "success",
        "gif_animated": "success",
        "webp_alpha": "success",
        "small_pixels": "success",
        "panorama": "success",
        "svg_as_jpeg": "not_an_image",
        "html_as_jpeg": "not_an_image",
        "noai_header": "opt_out_header",
        "otherbot_noai_header": "success",
        "ourbot_noai_header": "opt_out_header",
        "robots_disallowed": "robots_disallowed",
        "md5_listed": "blocklisted",
        "sha256_listed": "blocklisted",
        "pdq_listed": "blocklisted",
        "url_listed": "blocklisted",
        "domain_listed": "blocklisted",
        "tdm_reserved_header": "tdm_reserved_header",
        "tdm_unreserved_header": "success",
        "tdm_reserved_file": "tdm_reserved_file",
        "tdm_unreserved_file": "success",
        "tdm_reserved_page_file": "tdm_reserved_page_file",
        "tdm_broken_file": "success",
        "blocked_address": "blocked_address",
        "dns_error": "dns_error",
        "bad_certificate": "connection_error",
        "huge_header_line": "connection_error",
        "many_headers": "connection_error",
        "gzip_bomb": "too_large",
        "jpeg_icc_bomb": "too_large",
        "jpeg_metadata_flood": "success",
        "png_metadata_bomb": "success",
        "gif_many_frames": "success",
    }
    assert any(u.startswith("https://") for u in expected)


def test_ground_truth_follows_settings():
    s = DownloadSettings()
    assert expected_status("unavailable_twice", (200, 200), s.model_copy(update={"retries": 1})) == "http_5xx"
    assert expected_status("slow", (200, 200), s.model_copy(update={"read_timeout": 0.3})) == "timeout"
    assert (
        expected_status(
            "noai_header", (200, 200), s.model_copy(update={"consent": ConsentSettings(respect_optouts=False)})
        )
        == "success"
    )
    assert (
        expected_status(
            "robots_disallowed", (200, 200), s.model_copy(update={"consent": ConsentSettings(respect_robots=False)})
        )
        == "success"
    )
    no_tdm = s.model_copy(update={"consent": ConsentSettings(respect_tdm_reservation=False)})
    assert expected_status("tdm_reserved_header", (200, 200), no_tdm) == "success"
    assert expected_status("tdm_reserved_file", (200, 200), no_tdm) == "success"
    assert expected_status("pixel_bomb", BOMB_SIZE, s.model_copy(update={"max_image_pixels": 10**9})) == "success"


def test_served_images_decode_over_the_byte_floor(world):
    """Whatever should succeed is a decodable image over 5 KB of the manifest's size (grain keeps flat scenes big)."""
    for image in world.manifest_images().to_pylist():
        if image["expected_status"] != "success" and image["behaviour"] not in ("noai_header", "ourbot_noai_header"):
            continue
        data = payload(SPEC.seed, image["image_id"], image["behaviour"], image["format"])
        img = Image.open(io.BytesIO(data))
        img.load()
        assert len(data) >= 5000 and img.size == (image["width"], image["height"]), image


@pytest.fixture(scope="module")
def server(world):
    with ImageServer(world.root) as srv:
        yield srv


def _request(srv, url, method="GET", ctx=None, timeout=5.0):
    """One request, no redirects followed, through `srv.resolve` (like curl --resolve); returns the response."""
    scheme, rest = url.split("://", 1)
    host, path = rest.split("/", 1)
    ip, port = srv.resolve[f"{host}:{443 if scheme == 'https' else 80}"].rsplit(":", 1)
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, timeout=timeout, context=ctx or srv.ssl_context())
    else:
        conn = http.client.HTTPConnection(host, timeout=timeout)
    conn._create_connection = lambda _addr, *a, **k: socket.create_connection((ip, int(port)), *a, **k)
    conn.request(method, "/" + path)
    return conn.getresponse()


@pytest.fixture(scope="module")
def urls(world):
    return {b: u[0] for b, u in _behaviour_urls(world).items()}


def test_resolve_map_and_settings(server, world):
    r = server.resolve
    assert r["img.site-3.world.test:80"] == f"127.0.0.1:{server.port}"
    assert r["img.site-3.world.test:443"] == f"127.0.0.1:{server.https_port}"
    assert r["intranet.world.test:80"] == f"{PRIVATE_ADDRESS}:80" and f"{NXDOMAIN_HOST}:80" not in r
    assert {k.rsplit(":", 1)[0] for k in r} == {*world.image_hosts, *world.page_hosts} - {NXDOMAIN_HOST}
    # every page's origin resolves to the server: a download asks it for its tdmrep.json, never a real resolver
    assert {urlsplit(u).hostname for u in world.manifest_pairs().column("page_url").to_pylist()} <= set(
        world.page_hosts
    )
    s = server.download_settings(retries=5)
    assert s.resolve == r and s.ca_bundle == server.ca_pem_path and os.path.exists(s.ca_bundle)
    assert s.retries == 5 and s.allow_addresses == ["127.0.0.1/32"] and s.total_timeout < 10
    assert world.expected_downloads(server.download_settings()) == world.expected_downloads()


def test_transient_errors_then_success(server, urls):
    url = urls["unavailable_twice"]
    assert [_request(server, url).status for _ in range(4)] == [503, 503, 200, 200]
    first = _request(server, urls["rate_limited"])
    assert first.status == 429 and first.getheader("Retry-After") == "1"
    assert _request(server, urls["rate_limited"]).status == 200
    assert _request(server, urls["error_500"]).status == 500 and _request(server, urls["error_500"]).status == 500
    assert [_request(server, urls[b]).status for b in ("not_found", "gone", "forbidden")] == [404, 410, 403]


def test_redirects(server, urls):
    moved = _request(server, urls["redirect"])
    assert moved.status == 302 and "/moved/" in moved.getheader("Location")
    target = _request(server, moved.getheader("Location"))
    assert target.status == 200 and Image.open(io.BytesIO(target.read())).size
    seen, url = [], urls["redirect_loop"]
    for _ in range(6):
        resp = _request(server, url)
        assert resp.status == 302
        url = resp.getheader("Location")
        seen.append(url)
    assert len(set(seen)) == 2 and seen[1] == seen[3] == seen[5]


def test_lying_and_endless_bodies(server, urls):
    trunc = _request(server, urls["truncated_jpeg"])
    data = trunc.read()
    assert int(trunc.getheader("Content-Length")) == len(data) > 5000 and data[:2] == b"\xff\xd8"
    assert not data.endswith(b"\xff\xd9")
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(data)).load()
    bomb = _request(server, urls["pixel_bomb"])
    data = bomb.read()
    assert len(data) < 200_000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == BOMB_SIZE
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    huge = _request(server, urls["huge_content_length"])
    assert int(huge.getheader("Content-Length")) == HUGE_LENGTH and len(huge.read(1 << 20)) == 1 << 20
    endless = _request(server, urls["endless_body"])
    assert endless.getheader("Content-Length") is None and len(endless.read(4 << 20)) == 4 << 20
    t0 = time.perf_counter()
    drip = _request(server, urls["endless_drip"])
    assert drip.read(4) and time.perf_counter() - t0 > 0.5
    empty = _request(server, urls["empty_body"])
    assert empty.status == 200 and empty.read() == b""
    assert len(_request(server, urls["tiny_image"]).read()) < 5000


def test_slow_hanging_and_closing(server, urls):
    t0 = time.perf_counter()
    assert _request(server, urls["slow"]).status == 200 and 0.45 < time.perf_counter() - t0 < 1.5
    with pytest.raises(TimeoutError):
        _request(server, urls["timeout"], timeout=1.0)
    with pytest.raises(http.client.RemoteDisconnected):
        _request(server, urls["disconnect"])


def test_content_and_opt_outs(server, urls):
    for name, ctype in (
        ("svg_as_jpeg", "image/jpeg"),
        ("html_as_jpeg", "image/jpeg"),
        ("text_plain", "text/plain"),
        ("octet_stream", "application/octet-stream"),
    ):
        resp = _request(server, urls[name])
        data = resp.read()
        assert resp.getheader("Content-Type") == ctype and len(data) > 5000
        if name.endswith("as_jpeg"):
            with pytest.raises(Image.UnidentifiedImageError):
                Image.open(io.BytesIO(data))
        else:
            Image.open(io.BytesIO(data)).load()
    for name, mode in (("cmyk_jpeg", "CMYK"), ("png_alpha", "RGBA"), ("webp_alpha", "RGBA"), ("gif_animated", "P")):
        img = Image.open(io.BytesIO(_request(server, urls[name]).read()))
        assert img.mode == mode and getattr(img, "n_frames", 1) == (3 if name == "gif_animated" else 1)
    assert _request(server, urls["noai_header"]).getheader("X-Robots-Tag") == "noai"
    assert _request(server, urls["otherbot_noai_header"]).getheader("X-Robots-Tag").startswith("otherbot:")
    assert _request(server, urls["ok"]).getheader("X-Robots-Tag") is None
    assert _request(server, urls["tdm_reserved_header"]).getheader("tdm-reservation") == "1"
    assert _request(server, urls["tdm_unreserved_header"]).getheader("tdm-reservation") == "0"
    assert _request(server, urls["ok"]).getheader("tdm-reservation") is None


def test_tdmrep_json_reserves_what_the_ground_truth_says(server, urls, world):
    def rules(url):
        host = urlsplit(url).hostname
        resp = _request(server, f"http://{host}/.well-known/tdmrep.json")
        return resp.status, resp.read()

    status, data = rules(urls["tdm_reserved_file"])
    assert status == 200 and rules(urls["tdm_unreserved_file"]) == (200, data)
    parsed = parse_tdmrep(data)
    assert parsed.reservation(urlsplit(urls["tdm_reserved_file"]).path)
    assert not parsed.reservation(urlsplit(urls["tdm_unreserved_file"]).path)
    status, broken = rules(urls["tdm_broken_file"])
    assert status == 200 and broken and parse_tdmrep(broken) == NO_TDM_RULES
    with pytest.raises(ValueError):
        orjson.loads(broken)
    assert rules(urls["ok"])[0] == 404  # an ordinary host has none
    # the page-level reservation: the image is linked only on pages whose origin's tdmrep.json reserves them
    url = urls["tdm_reserved_page_file"]
    pages = {r["page_url"] for r in world.manifest_pairs().to_pylist() if r["url"] == url}
    assert pages and rules(url)[0] == 404  # the image's own host reserves nothing
    for page in pages:
        status, data = rules(page)
        assert status == 200 and parse_tdmrep(data).reservation(urlsplit(page).path), page


def test_tdm_reservations_are_honoured_as_the_ground_truth_says(server, world):
    """The downloader on every URL of the TDMRep behaviours, with the page it was found on: the ground truth's
    status, a reserved file's (or page's) image never requested, each origin's tdmrep.json (the images' and the
    pages') asked once; with the switch off, no tdmrep.json asked at all."""
    urls = [u for b, us in _behaviour_urls(world).items() if b.startswith("tdm_") for u in us]
    page_of = {r["url"]: r["page_url"] for r in world.manifest_pairs().to_pylist() if r["url"] in urls}
    expected = world.expected_downloads()

    def download(**overrides):
        async def go():
            async with Fetcher(server.download_settings(**overrides)) as fetcher:
                return await asyncio.gather(*(fetcher.fetch(u, page_of[u]) for u in urls))

        before = dict(server.hits)
        results = asyncio.run(go())
        return {u: r.status for u, r in zip(urls, results)}, {
            u: n - before.get(u, 0) for u, n in server.hits.items() if n > before.get(u, 0)
        }

    got, asked = download()
    assert got == {u: expected[u] for u in urls}
    assert {"tdm_reserved_header", "tdm_reserved_file", "tdm_reserved_page_file", "success"} <= set(got.values())
    reserved_files = [u for u in urls if got[u] in ("tdm_reserved_file", "tdm_reserved_page_file")]
    assert reserved_files and not [u for u in reserved_files if u in asked]
    tdmrep = {u: n for u, n in asked.items() if u.endswith("/.well-known/tdmrep.json")}
    # a reserved page ends its samples before their images' own origins are asked
    images = [u for u in urls if got[u] != "tdm_reserved_page_file"]
    origins = {u.split("/")[0] + "//" + urlsplit(u).hostname for u in [*images, *page_of.values()]}
    assert set(tdmrep) == {f"{o}/.well-known/tdmrep.json" for o in origins} and set(tdmrep.values()) == {1}
    got, asked = download(consent=ConsentSettings(respect_tdm_reservation=False))
    assert set(got.values()) == {"success"} and not [u for u in asked if "tdmrep" in u]


def _robots(server, host) -> urllib.robotparser.RobotFileParser:
    resp = _request(server, f"http://{host}/robots.txt")
    rp = urllib.robotparser.RobotFileParser()
    if resp.status == 404:
        rp.allow_all = True
    else:
        rp.parse(resp.read().decode().splitlines())
    return rp


def test_robots_and_private_hosts(server, urls):
    closed = _robots(server, "closed.world.test")
    assert urls["robots_disallowed"].startswith("http://closed.world.test/")
    assert not closed.can_fetch("clipcrawl", urls["robots_disallowed"])
    usual = _robots(server, "img.site-0.world.test")
    assert usual.can_fetch("clipcrawl", urls["ok"]) and not usual.can_fetch("otherbot", urls["ok"])
    assert _robots(server, "cdn.world.test").can_fetch("clipcrawl", "http://cdn.world.test/s1/000100.jpg")
    assert urls["blocked_address"].startswith("http://intranet.world.test/")
    assert urls["dns_error"].startswith(f"http://{NXDOMAIN_HOST}/")
    assert not any("intranet" in u or "nxdomain" in u for u in server.hits)  # only the downloader could go there


def test_https_needs_the_world_ca(server, world, urls):
    https = next(u for u in _behaviour_urls(world)["png_alpha"] if u.startswith("https://img."))
    resp = _request(server, https)
    assert resp.status == 200 and Image.open(io.BytesIO(resp.read())).size
    with pytest.raises(ssl.SSLCertVerificationError):
        _request(server, https, ctx=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        _request(server, urls["bad_certificate"])


def test_aiohttp_through_the_resolve_map(server, urls):
    """What the downloader does: aiohttp with a resolver built from `resolve`, the CA for https."""
    import asyncio

    import aiohttp
    from aiohttp.abc import AbstractResolver

    class Resolver(AbstractResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            ip, p = server.resolve[f"{host}:{port}"].rsplit(":", 1)
            return [
                {
                    "hostname": host,
                    "host": ip,
                    "port": int(p),
                    "family": family,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            ]

        async def close(self):
            pass

    async def fetch():
        conn = aiohttp.TCPConnector(resolver=Resolver(), ssl=server.ssl_context())
        async with (
            aiohttp.ClientSession(connector=conn) as session,
            session.get(urls["redirect"].replace("http://", "https://")) as resp,
        ):
            return resp.status, str(resp.url), await resp.read()

    status, final, data = asyncio.run(fetch())
    assert status == 200 and final.startswith("https://") and "/moved/" in final and len(data) > 5000
