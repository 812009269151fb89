"""Real web captures (Wikipedia pages of 2012, the Internet Archive's home page, with the images they embed):
their pairs extracted by the ingest stage, then downloaded by the download stage from a loopback replay of
the stored responses, their hosts (upload.wikimedia.org, archive.org, ...) resolved to it by the `resolve`
setting. What the servers sent then is what the downloader gets now, byte for byte.

The captures are read from CLIPCRAWL_REALWEB (default: ../shared/realweb beside the repository; README there)."""

from __future__ import annotations

import asyncio
import io
import os
import ssl
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pyarrow.parquet as pq
import pytest
import trustme
from fastwarc.warc import ArchiveIterator, WarcRecordType
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from clipcrawl.tasks.core.config import ConsentSettings, DownloadSettings, ExtractSettings
from clipcrawl.tasks.core.status import DownloadStatus as S
from clipcrawl.tasks.download.fetch import Fetcher
from clipcrawl.tasks.download.shards import plan_shards
from clipcrawl.tasks.download.stage import download_shard
from tests.helpers import ingest_files
from tests.replay import RawServer, Replay, Request, response, stored_responses

REALWEB = Path(os.environ.get("CLIPCRAWL_REALWEB", Path(__file__).resolve().parents[2] / "shared" / "realweb"))
CAPTURES = sorted(str(p) for p in REALWEB.glob("*.warc.gz"))
# CI always has ../shared beside the checkout: there a missing capture fails the test instead of skipping it
needs_captures = pytest.mark.skipif(not CAPTURES and not os.environ.get("CI"), reason=f"no WARC captures in {REALWEB}")


def target_of(url: str) -> tuple[str, str]:
    """(host, path?query) of a URL: what the replay looks a request up by."""
    parts = urlsplit(url)
    return parts.hostname, (parts.path or "/") + (f"?{parts.query}" if "?" in url.split("#", 1)[0] else "")


class Stored:
    """What the captures hold, read with fastwarc on its own (not through the code under test)."""

    def __init__(self, paths: list[str]):
        self.raw = stored_responses(paths)  # as recorded, for the replay
        self.status: dict[tuple[str, str], int] = {}
        self.location: dict[tuple[str, str], str] = {}
        self.body: dict[tuple[str, str], bytes] = {}  # payloads, transfer and content encodings undone
        self.content_type: dict[tuple[str, str], str] = {}
        self.urls: list[str] = []  # each stored URL once, as recorded
        for path in paths:
            with open(path, "rb") as f:
                for record in ArchiveIterator(f, record_types=WarcRecordType.response, auto_decode="all"):
                    uri = record.headers.get("WARC-Target-URI")
                    key = target_of(uri)
                    if not uri.startswith(("http://", "https://")) or key in self.status:
                        continue
                    http = record.http_headers
                    self.urls.append(uri)
                    self.status[key] = http.status_code
                    self.content_type[key] = http.get("Content-Type", "")
                    self.body[key] = record.reader.read()
                    if location := http.get("Location"):
                        self.location[key] = urljoin(uri, location)

    def final(self, url: str) -> tuple[str, tuple[str, str] | None]:
        """The URL a request for `url` ends at, following stored redirects, and its stored response (None: not stored)."""
        for _ in range(10):
            key = target_of(url)
            if key not in self.location:
                return url, key if key in self.status else None
            url = self.location[key]
        raise AssertionError(f"redirect loop in the captures at {url}")

    def is_image(self, key: tuple[str, str] | None) -> bool:
        return key is not None and self.status[key] == 200 and self.content_type[key].startswith("image/")


@pytest.fixture(scope="module")
def stored():
    return Stored(CAPTURES)


@pytest.fixture(scope="module")
def replay(stored, tmp_path_factory):
    """The download settings that reach the replay of the captures (over http and https) instead of the web."""
    ca = trustme.CA()
    ca_path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    hosts = sorted({host for host, _ in stored.raw})
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(tls)
    server = Replay(stored.raw, tls=tls)
    resolve = {f"{host}:80": f"127.0.0.1:{server.port}" for host in hosts}
    resolve |= {f"{host}:443": f"127.0.0.1:{server.tls_ports['127.0.0.1']}" for host in hosts}
    base = {
        "allow_addresses": ["127.0.0.1/32"],
        "resolve": resolve,
        "ca_bundle": str(ca_path),
        "min_bytes": 0,  # the captures' images are small: icons, thumbnails
        "retries": 0,  # a replay has no transient failures: one would be a defect
        "image_threads": 1,
    }

    def settings(**overrides) -> DownloadSettings:
        return DownloadSettings(**(base | overrides))

    yield settings
    server.stop()


def extract_pairs(uris: list[str], out: str) -> list[str]:
    """OUT/pairs/ of WARC files, by the ingest stage's functions in the flow's order (extract, dedup, publish)."""
    ingest_files(uris, out, ExtractSettings())
    return sorted(str(p) for p in Path(out, "pairs").glob("*.parquet"))


def download(files: list[str], out: str, settings: DownloadSettings) -> tuple[list[dict], dict[int, dict]]:
    """The pairs of `files`, and the shards' rows ({uid: row}) once the download stage has run over them."""
    for spec in plan_shards(files, settings.shard_size):
        download_shard(spec, out, settings)
    pairs = [row for f in files for row in pq.read_table(f).to_pylist()]
    shards = sorted(Path(out, "images").glob("*.parquet"))
    return pairs, {row["uid"]: row for f in shards for row in pq.read_table(f).to_pylist()}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("realweb"))
    return out, extract_pairs(CAPTURES, out)


@needs_captures
def test_captured_pairs_download_with_their_urls_intact(stored, replay, pairs):
    out, files = pairs
    wanted, got = download(files, out, replay(shard_size=16))
    assert len(got) == len(wanted) >= 30
    successes = 0
    for pair in wanted:
        row = got[pair["uid"]]
        assert row["url"].encode() == pair["url"].encode()  # byte-identical, from the page to the shard
        final, key = stored.final(pair["url"])
        if stored.is_image(key):
            assert row["status"] == S.SUCCESS, row
            assert row["bytes"] == len(stored.body[key]) and row["final_url"] == final
            successes += 1
        else:  # the capture did not store it
            assert (row["status"], row["http_status"]) == (S.HTTP_4XX, 404), row
    assert successes == 19  # the pages embed 19 images that the captures stored


@needs_captures
def test_every_stored_response_is_fetched_as_stored(stored, replay):
    """Every URL the captures hold (pages, scripts, styles, images, redirects), requested as recorded: each
    ends at its stored response, body identical, after the stored redirects (http -> https included)."""

    async def fetch_all():
        async with Fetcher(replay(consent=ConsentSettings(respect_robots=False, respect_optouts=False))) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(url) for url in stored.urls))

    for url, r in zip(stored.urls, asyncio.run(fetch_all())):
        final, key = stored.final(url)
        assert key is not None, url
        if stored.status[key] == 200:
            assert r.status == S.SUCCESS and r.body == stored.body[key], (url, r.status, r.error_message)
        else:
            assert r.http_status == stored.status[key], (url, r)
        assert (urlsplit(r.final_url).scheme, target_of(r.final_url)) == (urlsplit(final).scheme, key), url


# The URL forms the captured pages lack, on a page of the same kind: the first is a 2012 Wikipedia thumbnail
# whose replay got a 404 when yarl sent /...%28...%29... as /...(...)...
HARD_SRCS = {  # img src -> (host, request target) a browser sends for it
    "//upload.wikimedia.org/wikipedia/commons/thumb/4/4c/Periclimenes_imperator_%28Emperor_shrimp%29_on_Bohadschia_argus_"
    "%28Sea_cucumber%29.jpg/334px-Periclimenes_imperator_%28Emperor_shrimp%29_on_Bohadschia_argus_%28Sea_cucumber%29.jpg": (
        "upload.wikimedia.org",
        "/wikipedia/commons/thumb/4/4c/Periclimenes_imperator_%28Emperor_shrimp%29_on_Bohadschia_argus_%28Sea_cucumber%29"
        ".jpg/334px-Periclimenes_imperator_%28Emperor_shrimp%29_on_Bohadschia_argus_%28Sea_cucumber%29.jpg",
    ),
    "http://cdn.test/i/a%2Fb%25c.jpg?sig=x%2By%3D&amp;q=a+b": ("cdn.test", "/i/a%2Fb%25c.jpg?sig=x%2By%3D&q=a+b"),
    "/bilder/Käse%20(alt).jpg": ("pages.test", "/bilder/K%C3%A4se%20(alt).jpg"),
    "http://bücher.test/umschlag%7e1.jpg": ("xn--bcher-kva.test", "/umschlag%7e1.jpg"),
    "http://cdn.test/search.jpg?q=blue whale&amp;n=1+2": ("cdn.test", "/search.jpg?q=blue%20whale&n=1+2"),
}


def test_hard_urls_go_from_page_to_shard_untouched(tmp_path):
    """A page with those srcs, in a WARC written by warcio, through the ingest and download stages: the url
    column is the same bytes in the pairs and the shard, and each request went out as a browser sends it."""
    page = "".join(f'<img alt="picture number {i}" src="{src}">' for i, src in enumerate(HARD_SRCS))
    html = f'<!doctype html><html><head><meta charset="utf-8"></head><body>{page}</body></html>'.encode()
    warc = tmp_path / "page.warc.gz"
    with open(warc, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(
                "http://pages.test/wiki/Shrimp", "response", payload=io.BytesIO(html), http_headers=http
            )
        )
    image = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 40)).save(image, "JPEG")
    expected = set(HARD_SRCS.values())

    def answer(request: Request) -> bytes:
        if (request.host, request.target.decode("latin-1")) in expected:
            return response(200, image.getvalue(), {"Content-Type": "image/jpeg"})
        return response(404)

    with RawServer(answer) as server:
        hosts = ["upload.wikimedia.org", "cdn.test", "pages.test", "bücher.test"]
        settings = DownloadSettings(
            allow_addresses=["127.0.0.1/32"],
            resolve={f"{host}:80": f"127.0.0.1:{server.port}" for host in hosts},
            min_bytes=0,
            retries=0,
            image_threads=1,
        )
        out = str(tmp_path / "out")
        wanted, got = download(extract_pairs([str(warc)], out), out, settings)
        site_files = (b"/robots.txt", b"/.well-known/tdmrep.json")  # each origin's own, asked before its images
        asked = {(r.host, r.target.decode("latin-1")) for r in server.requests if r.target not in site_files}
    assert len(wanted) == len(HARD_SRCS) and asked == expected
    for pair in wanted:
        row = got[pair["uid"]]
        assert row["url"].encode() == pair["url"].encode() and row["status"] == S.SUCCESS, row
