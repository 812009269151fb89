"""The synthetic crawl world: determinism, Common Crawl formats, ground truth, image server."""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import os
import urllib.request
import zlib
from collections import defaultdict
from html.parser import HTMLParser
from urllib.parse import urljoin

import orjson
import pytest
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

from tasks.status import PairStatus
from tasks.world import ImageServer, Scene, WorldSpec, generate_world, render_scene, sample_training_pairs
from tasks.world.captions import ALT_CASES, expected_text
from tasks.world.scenes import image_spec
from tasks.world.srcs import SRC_CASES

SPEC = WorldSpec(seed=7, segments=2, files_per_segment=2, pages_per_file=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(str(tmp_path_factory.mktemp("world")), SPEC)


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
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
        return [(dict(r.rec_headers.headers), orjson.loads(r.content_stream().read()))
                for r in ArchiveIterator(f) if r.rec_type == "metadata"]


def test_same_spec_gives_same_bytes(world, tmp_path):
    again = generate_world(str(tmp_path / "again"), SPEC)
    assert _files(world.root) == _files(again.root)
    regenerated = generate_world(str(tmp_path / "again"), SPEC, force=True)
    assert _files(regenerated.root) == _files(world.root)
    other = generate_world(str(tmp_path / "other"), WorldSpec(seed=8, segments=1, files_per_segment=1,
                                                              pages_per_file=10))
    assert _files(other.root).keys() != _files(world.root).keys() or _files(other.root) != _files(world.root)


def test_listing_files_name_every_file(world):
    crawl = os.path.join(world.root, "crawl-data", SPEC.crawl_id)
    wat = gzip.decompress(open(os.path.join(crawl, "wat.paths.gz"), "rb").read()).decode().split()
    warc = gzip.decompress(open(os.path.join(crawl, "warc.paths.gz"), "rb").read()).decode().split()
    segments = gzip.decompress(open(os.path.join(crawl, "segment.paths.gz"), "rb").read()).decode().split()
    assert len(wat) == len(warc) == SPEC.segments * SPEC.files_per_segment and len(segments) == SPEC.segments
    assert all(p.startswith(f"crawl-data/{SPEC.crawl_id}/segments/") and p.endswith(".warc.wat.gz") for p in wat)
    assert all("/warc/CC-MAIN-" in p and p.endswith("0.warc.gz") or p.endswith(".warc.gz") for p in warc)
    assert [os.path.join(world.root, p) for p in sorted(wat)] == world.wat_uris()
    assert all(os.path.exists(p) for p in world.wat_uris() + world.warc_uris())
    assert orjson.loads(open(os.path.join(world.root, "collinfo.json"), "rb").read())[0]["id"] == SPEC.crawl_id


def test_one_gzip_member_per_record(world):
    for path in world.wat_uris()[:1] + world.warc_uris()[:1]:
        members = _members(open(path, "rb").read())
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
    warc = open(world.warc_uris()[0], "rb").read()
    for _, doc in _wat_docs(world.wat_uris()[0])[:20]:
        c = doc["Container"]
        start, length = int(c["Offset"]), int(c["Gzip-Metadata"]["Deflate-Length"]) + 18
        record = gzip.decompress(warc[start:start + length])
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
    assert {"base_href", "shared", "charset_windows-1251", "charset_shift_jis", "charset_gb2312",
            "charset_iso-8859-1"} <= labels
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
                assert [expected_text(a) if a is None else " ".join(a.split()) for a in parser.alts] == \
                       [r["text"] for r in rows[url]]
                seen.add(charset)
    assert seen == {"utf-8", "windows-1251", "shift_jis", "iso-8859-1", "gb2312"}


def test_images_manifest(world):
    images = world.manifest_images().to_pylist()
    assert {"image_id", "urls", "host", "shape", "colour", "count", "background", "size", "caption", "format",
            "flagged", "behaviour"} <= set(images[0])
    assert any(i["flagged"] for i in images) and all(i["behaviour"] == "ok" for i in images)
    assert {i["format"] for i in images} == {"jpg", "png", "webp", "gif"}


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
    images = world.manifest_images().to_pylist()
    with ImageServer(world.root) as srv:
        assert set(srv.host_map) == set(world.image_hosts)
        assert any(h.startswith("img.site-") for h in srv.host_map) and "cdn.world.test" in srv.host_map
        for image in images[:12]:
            url = image["urls"][-1]
            status, body, ctype = _get(srv, url)
            assert status == 200 and ctype.startswith("image/")
            img = Image.open(io.BytesIO(body))
            spec = image_spec(SPEC.seed, image["image_id"])
            assert img.size == (spec.width, spec.height) and img.format.lower().replace("jpeg", "jpg") == image["format"]
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
    spec = WorldSpec(seed=3, segments=1, files_per_segment=1, pages_per_file=20, warc=False,
                     links_per_page=(50, 60), images_per_page=(20, 30))
    w = generate_world(str(tmp_path / "watonly"), spec)
    assert w.warc_uris() == [] and len(w.wat_uris()) == 1
    docs = _wat_docs(w.wat_uris()[0])
    links = [len(d["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"])
             for _, d in docs if "HTML-Metadata" in d["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata", {})]
    assert min(links) > 50
