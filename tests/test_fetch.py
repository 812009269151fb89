"""Fetcher against a local aiohttp server on 127.0.0.1 (one handler per case), virtual hosts
mapped to it through settings.resolve, as the synthetic world does."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from email.utils import formatdate

import pytest
import trustme
from aiohttp import web

from clipcrawl.tasks.core.config import ConsentSettings, DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus as S
from clipcrawl.tasks.download import fetch as fetch_module
from clipcrawl.tasks.download.fetch import Fetcher, blocked_reason, literal_ip, parse_retry_after, request_url
from clipcrawl.tasks.download.optout import TDMREP_MAX_BYTES, TDMREP_PATH
from clipcrawl.tasks.world.behaviours import GZIP_BOMB_BYTES
from clipcrawl.tasks.world.payloads import gzip_bomb, header_flood, joined
from tests.replay import RawServer, Request, response

BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 24  # 6 KiB: over min_bytes
ROBOTS = {
    "robots.test": (200, "User-agent: *\nDisallow: /private/\n"),
    "picky.test": (200, "User-agent: otherbot\nDisallow:\n\nUser-agent: clipcrawl\nDisallow: /\n"),
    "forbidden.test": (403, "User-agent: *\nDisallow: /\n"),
    "broken.test": (500, "User-agent: *\nDisallow: /\n"),
    "slowrobots.test": (200, "User-agent: *\nDisallow: /\n"),  # its first robots.txt answer comes too late
}
TDM_POLICY_URL = "https://tdm.test/policy.json"
TDM_RULES = [
    {"location": "/public/*.jpg", "tdm-reservation": 0},
    {"location": "/public/", "tdm-reservation": 1, "tdm-policy": TDM_POLICY_URL},
]
TDMREP = {  # host -> (status, body) of its /.well-known/tdmrep.json (others: 404)
    "tdm.test": (200, json.dumps(TDM_RULES)),
    "tdmbroken.test": (200, '[{"location": "/", "tdm-reservation": 1}'),  # truncated JSON
    "tdmshape.test": (200, '{"location": "/", "tdm-reservation": 1}'),  # an object, not an array
    "tdmhtml.test": (200, "<html><body>Welcome!</body></html>"),  # a soft 404
    "tdmgone.test": (410, '[{"location": "/", "tdm-reservation": 1}]'),
    "tdmerror.test": (503, '[{"location": "/", "tdm-reservation": 1}]'),
    "tdmhuge.test": (200, '[{"location": "/", "tdm-reservation": 1}' + " " * TDMREP_MAX_BYTES + "]"),
    "slowtdm.test": (200, '[{"location": "/", "tdm-reservation": 1}]'),  # its first answer comes too late
    "flakytdm.test": (200, '[{"location": "/", "tdm-reservation": 1}]'),  # FLAKY_TDMREP: fails first
    "ratetdm.test": (200, '[{"location": "/", "tdm-reservation": 1}]'),
    "downtdm.test": (200, '[{"location": "/", "tdm-reservation": 1}]'),
    # a page host: its tdmrep.json reserves its /articles/ pages, and so the images found on them, wherever they are
    "tdmredirect.test": (302, "http://internal.test/tdmrep.json"),  # a redirect to a private address
    "tdmpage.test": (200, json.dumps([{"location": "/articles/", "tdm-reservation": 1, "tdm-policy": TDM_POLICY_URL}])),
}
# host -> (how many of its first tdmrep.json requests fail, with which status, Retry-After): then TDMREP's answer
FLAKY_TDMREP = {"flakytdm.test": (1, 503, None), "ratetdm.test": (1, 429, "0"), "downtdm.test": (3, 503, None)}
HOSTS = ["site.test", "busy.test", "busy2.test", *ROBOTS, *TDMREP]


class Server:
    """The misbehaving image server: http on one port, https (trustme cert) on another."""

    def __init__(self, tmp_path):
        self.hits: Counter[str] = Counter()  # path -> requests
        self.robots_hits: Counter[str] = Counter()  # host -> robots.txt requests
        self.tdmrep_hits: Counter[str] = Counter()  # host -> /.well-known/tdmrep.json requests
        self.inflight: Counter[str] = Counter()
        self.max_inflight: Counter[str] = Counter()
        self.ca = trustme.CA()
        self.ca_path = str(tmp_path / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        app = web.Application()
        app.middlewares.append(self._count)
        app.router.add_routes([web.get(path, handler) for path, handler in self.routes().items()])
        self.runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self.runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("secure.test").configure_cert(tls)
        http = web.TCPSite(self.runner, "127.0.0.1", 0)
        https = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=tls)
        await http.start()
        await https.start()
        self.port, self.tls_port = (site._server.sockets[0].getsockname()[1] for site in (http, https))

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    @web.middleware
    async def _count(self, request, handler):
        self.hits[request.path] += 1
        return await handler(request)

    def routes(self):
        return {
            "/robots.txt": self.robots,
            TDMREP_PATH: self.tdmrep,
            "/tdm-header": self.tdm_header,
            "/to-tdm-reserved": self.to_tdm_reserved,
            "/ok": self.ok,
            "/slow": self.slow,
            "/hang": self.hang,
            "/flaky": self.flaky,
            "/ratelimited": self.ratelimited,
            "/ratelimited-long": self.ratelimited_long,
            "/status/{code}": self.status,
            "/redirect": self.redirect,
            "/loop-a": self.loop_a,
            "/loop-b": self.loop_b,
            "/chain/{n}": self.chain,
            "/to-ftp": self.to_ftp,
            "/to-metadata": self.to_metadata,
            "/to-private": self.to_private,
            "/huge-declared": self.huge_declared,
            "/endless-fast": self.endless_fast,
            "/endless-drip": self.endless_drip,
            "/gzip-bomb": self.gzip_bomb,
            "/tiny": self.tiny,
            "/empty": self.empty,
            "/xrobots": self.xrobots,
            "/busy/{i}": self.busy,
            "/private/{i}": self.ok,
            "/public/{i}": self.ok,
        }

    # -- handlers, one per case
    async def robots(self, request):
        host = request.host.split(":")[0]
        self.robots_hits[host] += 1
        await asyncio.sleep(0.05)  # concurrent fetches of the host arrive while this is in flight
        if host == "slowrobots.test" and self.robots_hits[host] == 1:
            await asyncio.sleep(2)  # past the total timeout
        status, text = ROBOTS.get(host, (404, "not found"))
        return web.Response(status=status, text=text)

    async def tdmrep(self, request):
        host = request.host.split(":")[0]
        self.tdmrep_hits[host] += 1
        await asyncio.sleep(0.05)  # concurrent fetches of the origin arrive while this is in flight
        if host == "slowtdm.test" and self.tdmrep_hits[host] == 1:
            await asyncio.sleep(2)  # past the total timeout
        failing, code, retry_after = FLAKY_TDMREP.get(host, (0, 0, None))
        if self.tdmrep_hits[host] <= failing:
            return web.Response(status=code, headers={"Retry-After": retry_after} if retry_after else {})
        status, text = TDMREP.get(host, (404, "not found"))
        headers = {"Location": text} if status == 302 else None
        return web.Response(status=status, text=text, content_type="application/json", headers=headers)

    async def tdm_header(self, request):
        response = web.Response(body=BODY, content_type="image/png")
        for value in request.query.getall("value", []):
            response.headers.add("tdm-reservation", value)
        if "policy" in request.query:
            response.headers["tdm-policy"] = request.query["policy"]
        return response

    async def to_tdm_reserved(self, request):
        raise web.HTTPFound("http://tdm.test/public/1.png")

    async def ok(self, request):
        return web.Response(body=BODY, content_type="image/png")

    async def slow(self, request):
        await asyncio.sleep(0.3)
        return web.Response(body=BODY, content_type="image/png")

    async def hang(self, request):
        await asyncio.sleep(5)
        return web.Response(body=BODY)

    async def flaky(self, request):  # 503 twice per key, then the image
        key = request.query["key"]
        self.hits[key] += 1
        return web.Response(status=503) if self.hits[key] <= 2 else await self.ok(request)

    async def ratelimited(self, request):
        key = request.query["key"]
        self.hits[key] += 1
        if self.hits[key] == 1:
            return web.Response(status=429, headers={"Retry-After": request.query.get("after", "1")})
        return await self.ok(request)

    async def ratelimited_long(self, request):
        return web.Response(status=429, headers={"Retry-After": "3600"})

    async def status(self, request):
        return web.Response(status=int(request.match_info["code"]))

    async def redirect(self, request):
        raise web.HTTPFound("/ok")

    async def loop_a(self, request):
        raise web.HTTPFound("/loop-b")

    async def loop_b(self, request):
        raise web.HTTPMovedPermanently("/loop-a")

    async def chain(self, request):
        n = int(request.match_info["n"])
        if n == 0:
            return await self.ok(request)
        raise web.HTTPFound(f"/chain/{n - 1}")

    async def to_ftp(self, request):
        raise web.HTTPFound("ftp://site.test/a.jpg")

    async def to_metadata(self, request):
        raise web.HTTPFound("http://metadata.test/latest/meta-data/")

    async def to_private(self, request):
        raise web.HTTPFound("http://robots.test/private/1")

    async def huge_declared(self, request):
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = 10**10
        await response.prepare(request)
        await response.write(BODY)
        await asyncio.sleep(2)
        return response

    async def _stream(self, request, chunk, pause):
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                await response.write(chunk)
                await asyncio.sleep(pause)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    async def endless_fast(self, request):
        return await self._stream(request, b"x" * 65536, 0)

    async def endless_drip(self, request):
        return await self._stream(request, b"x" * 10, 0.05)

    async def gzip_bomb(self, request):  # a few KB on the wire, declared; 5 MB once inflated
        body = gzip.compress(b"\0" * 5_000_000)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "image/png"})

    async def tiny(self, request):
        return web.Response(body=b"GIF89a" + b"\0" * 94, content_type="image/gif")

    async def empty(self, request):
        return web.Response(body=b"", content_type="image/png")

    async def xrobots(self, request):
        response = web.Response(body=BODY, content_type="image/png")
        for value in request.query.getall("tag"):
            response.headers.add("X-Robots-Tag", value)
        return response

    async def busy(self, request):
        host = request.host.split(":")[0]
        self.inflight[host] += 1
        self.max_inflight[host] = max(self.max_inflight[host], self.inflight[host])
        try:
            await asyncio.sleep(0.05)
        finally:
            self.inflight[host] -= 1
        return await self.ok(request)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fetch"))
    yield srv
    srv.stop()


def settings(server, **overrides) -> DownloadSettings:
    resolve = {f"{host}:80": f"127.0.0.1:{server.port}" for host in HOSTS}
    resolve |= {
        "secure.test:443": f"127.0.0.1:{server.tls_port}",
        "internal.test:80": "10.0.0.7:80",
        "metadata.test:80": "169.254.169.254:80",
        "mapped.test:80": f"[::ffff:10.0.0.7]:{server.port}",
    }
    base = {
        "allow_addresses": ["127.0.0.1/32"],
        "resolve": resolve,
        "connect_timeout": 1.0,
        "read_timeout": 0.5,
        "total_timeout": 1.0,
        "retries": 2,
        "retry_backoff": 0.01,
        "max_bytes": 1_000_000,
        "min_bytes": 1000,
    }
    return DownloadSettings(**(base | overrides))


def fetch_all(server, urls, **overrides):
    async def go():
        async with Fetcher(settings(server, **overrides)) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(url) for url in urls))

    return asyncio.run(go())


def fetch(server, url, **overrides):
    return fetch_all(server, [url], **overrides)[0]


# -- success and timing


def test_success(server):
    r = fetch(server, "http://site.test/ok")
    assert (r.status, r.body, r.http_status, r.content_type) == (S.SUCCESS, BODY, 200, "image/png")
    assert r.error_message is None and r.attempts == 1 and r.final_url == "http://site.test/ok"


def test_slow_but_in_time_is_success(server):
    r = fetch(server, "http://site.test/slow")
    assert r.status == S.SUCCESS and r.seconds >= 0.3


def test_past_total_timeout_is_timeout(server):
    r = fetch(server, "http://site.test/hang", read_timeout=5.0, retries=0)
    assert r.status == S.TIMEOUT and "total timeout" in r.error_message
    assert r.seconds < 1.5


def test_silence_past_read_timeout_is_timeout(server):
    r = fetch(server, "http://site.test/hang", read_timeout=0.2, retries=1)
    assert r.status == S.TIMEOUT and "read timeout after 0.2 s" in r.error_message and r.attempts == 2


# -- retries


def test_5xx_then_success_is_retried(server):
    r = fetch(server, "http://site.test/flaky?key=a")
    assert r.status == S.SUCCESS and r.attempts == 3


def test_429_waits_for_retry_after(server):
    r = fetch(server, "http://site.test/ratelimited?key=b&after=1")
    assert r.status == S.SUCCESS and r.attempts == 2
    assert 0.9 <= r.seconds < 2


def test_429_retry_after_as_http_date(server):
    r = fetch(server, f"http://site.test/ratelimited?key=c&after={formatdate(time.time() + 1, usegmt=True)}")
    assert r.status == S.SUCCESS and r.attempts == 2 and r.seconds < 2.5


def test_retry_after_over_the_limit_gives_up(server):
    r = fetch(server, "http://site.test/ratelimited-long", max_retry_after=5)
    assert (r.status, r.http_status, r.attempts) == (S.HTTP_4XX, 429, 1)
    assert "Retry-After" in r.error_message


@pytest.mark.parametrize("code", [404, 403, 410, 400])
def test_4xx_is_not_retried(server, code):
    r = fetch(server, f"http://site.test/status/{code}")
    assert (r.status, r.http_status, r.attempts) == (S.HTTP_4XX, code, 1)
    assert r.error_message.startswith(f"HTTP {code}")


@pytest.mark.parametrize("code", [408, 425])
def test_request_timeout_and_too_early_are_retried(server, code):
    r = fetch(server, f"http://site.test/status/{code}", retries=1)
    assert (r.status, r.http_status, r.attempts) == (S.HTTP_4XX, code, 2)


def test_5xx_forever_gives_http_5xx_after_retries(server):
    before = server.hits["/status/500"]
    r = fetch(server, "http://site.test/status/500", retries=3)
    assert (r.status, r.http_status, r.attempts) == (S.HTTP_5XX, 500, 4)
    assert server.hits["/status/500"] - before == 4


def test_refused_connection_is_connection_error_after_retries(server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    r = fetch(server, f"http://127.0.0.1:{closed_port}/x.jpg", retries=1)
    assert r.status == S.CONNECTION_ERROR and r.attempts == 2


# -- redirects


def test_redirect_gives_final_url(server):
    r = fetch(server, "http://site.test/redirect")
    assert r.status == S.SUCCESS and r.final_url == "http://site.test/ok" and r.attempts == 2


def test_redirect_loop(server):
    r = fetch(server, "http://site.test/loop-a")
    assert r.status == S.TOO_MANY_REDIRECTS and "loop" in r.error_message


def test_too_many_redirects(server):
    assert fetch(server, "http://site.test/chain/3", max_redirects=3).status == S.SUCCESS
    r = fetch(server, "http://site.test/chain/4", max_redirects=3)
    assert r.status == S.TOO_MANY_REDIRECTS and r.http_status == 302


def test_redirect_to_ftp_is_unsupported_scheme(server):
    r = fetch(server, "http://site.test/to-ftp")
    assert r.status == S.UNSUPPORTED_SCHEME and r.final_url == "ftp://site.test/a.jpg"
    assert r.error_message == "unsupported scheme 'ftp' (redirected to ftp://site.test/a.jpg)"


def test_redirect_to_metadata_address_is_blocked(server):
    r = fetch(server, "http://site.test/to-metadata")
    assert r.status == S.BLOCKED_ADDRESS and "169.254.169.254 (link-local)" in r.error_message


def test_redirect_is_checked_against_robots(server):
    assert fetch(server, "http://site.test/to-private").status == S.ROBOTS_DISALLOWED


# -- sizes


def test_declared_huge_content_length_is_too_large(server):
    r = fetch(server, "http://site.test/huge-declared")
    assert r.status == S.TOO_LARGE and "Content-Length" in r.error_message and r.seconds < 1


def test_endless_fast_body_is_too_large(server):
    r = fetch(server, "http://site.test/endless-fast", total_timeout=5.0)
    assert r.status == S.TOO_LARGE and r.body is None and r.seconds < 2


def test_gzip_bomb_under_its_declared_length_is_too_large(server):
    # Content-Length is the compressed size: the cap applies to what is inflated
    r = fetch(server, "http://site.test/gzip-bomb")
    assert r.status == S.TOO_LARGE and r.body is None, (r.status, r.error_message)


# -- hostile responses (the world's), fetched in a fresh interpreter that measures its peak memory

FETCH_IN_A_FRESH_INTERPRETER = """
import asyncio, json, sys
from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.download.fetch import Fetcher

def peak():  # VmHWM: this process's peak resident memory so far, in bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

async def main(url, settings):
    async with Fetcher(settings) as fetcher:
        before = peak()
        r = await fetcher.fetch(url)
        return {"status": r.status, "message": r.error_message, "attempts": r.attempts, "growth": peak() - before}

print(json.dumps(asyncio.run(main(sys.argv[1], DownloadSettings.model_validate_json(sys.argv[2])))))
"""
HEAD_GROWTH = 16 << 20  # a refused response head costs about nothing


def answer_hostile(request: Request) -> bytes:
    if request.target == b"/gzip-bomb":
        return response(200, joined(gzip_bomb()), {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})
    if request.target in (b"/huge_header_line", b"/many_headers"):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n" % len(BODY)
        return head + header_flood(request.target[1:].decode()) + b"\r\n" + BODY
    return response(404)


@pytest.fixture(scope="module")
def hostile_server():
    with RawServer(answer_hostile) as srv:
        yield srv


def fetched_in_a_fresh_process(srv, path: str) -> dict:
    """Fetcher.fetch with the default size caps, in a new interpreter: status, message, attempts, and how much the
    peak resident memory grew while it fetched."""
    s = DownloadSettings(allow_addresses=["127.0.0.1/32"], resolve={"site.test:80": f"127.0.0.1:{srv.port}"})
    done = subprocess.run(
        [sys.executable, "-c", FETCH_IN_A_FRESH_INTERPRETER, f"http://site.test{path}", s.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "behaviour, reason",
    [("huge_header_line", "Got more than 8190 bytes"), ("many_headers", "Too many headers received")],
)
def test_a_response_head_over_the_limits_is_a_connection_error_never_retried(hostile_server, behaviour, reason):
    r = fetched_in_a_fresh_process(hostile_server, f"/{behaviour}")
    assert (r["status"], r["attempts"]) == (S.CONNECTION_ERROR, 1), r
    assert r["message"].startswith("malformed HTTP response from site.test: ") and reason in r["message"], r
    assert r["growth"] < HEAD_GROWTH, r


def test_the_worlds_gzip_bomb_is_one_valid_gzip_member():
    inflate, inflated = zlib.decompressobj(31), 0  # zlib checks the member's CRC and length at its end
    for part, times in gzip_bomb():
        for _ in range(times):
            inflated += len(inflate.decompress(part))
    assert inflate.eof and not inflate.unused_data and inflated == GZIP_BOMB_BYTES
    assert sum(len(part) * times for part, times in gzip_bomb()) < GZIP_BOMB_BYTES // 500


def test_the_worlds_gzip_bomb_is_too_large_in_bounded_memory(hostile_server):
    # ~2 MB on the wire, 2 GiB inflated: read up to max_bytes of what it inflates to, then dropped
    r = fetched_in_a_fresh_process(hostile_server, "/gzip-bomb")
    assert (r["status"], r["message"]) == (S.TOO_LARGE, "body over max_bytes 20000000"), r
    assert r["growth"] < 2 * DownloadSettings().max_bytes + HEAD_GROWTH, r  # the chunks read, and them joined


def test_endless_dripping_body_is_timeout(server):
    r = fetch(server, "http://site.test/endless-drip", retries=0)
    assert r.status == S.TIMEOUT and 0.9 < r.seconds < 1.5


@pytest.mark.parametrize("path", ["/tiny", "/empty"])
def test_small_bodies_are_too_small(server, path):
    r = fetch(server, f"http://site.test{path}")
    assert r.status == S.TOO_SMALL_BYTES and r.body is None


# -- opt-outs


@pytest.mark.parametrize(
    "tags, status",
    [
        (["noai"], S.OPT_OUT_HEADER),
        (["otherbot: noai"], S.SUCCESS),
        (["nofollow", "clipcrawl: noimageindex"], S.OPT_OUT_HEADER),
    ],
)
def test_x_robots_tag(server, tags, status):
    query = "&".join(f"tag={t}" for t in tags)
    r = fetch(server, f"http://site.test/xrobots?{query}")
    assert r.status == status
    if status == S.OPT_OUT_HEADER:
        assert r.error_message.startswith("X-Robots-Tag:")
        assert (
            fetch(server, f"http://site.test/xrobots?{query}", consent=ConsentSettings(respect_optouts=False)).status
            == S.SUCCESS
        )


def test_robots_txt_is_fetched_once_per_host(server):
    before = server.robots_hits["robots.test"]
    urls = [f"http://robots.test/{kind}/{i}" for i in range(10) for kind in ("public", "private")]
    results = fetch_all(server, urls)
    assert [r.status for r in results] == [S.SUCCESS, S.ROBOTS_DISALLOWED] * 10
    assert server.robots_hits["robots.test"] - before == 1  # one Fetcher, twenty concurrent fetches
    assert (
        fetch(server, "http://robots.test/private/1", consent=ConsentSettings(respect_robots=False)).status == S.SUCCESS
    )


def test_robots_txt_group_for_our_agent(server):
    assert fetch(server, "http://picky.test/public/1").status == S.ROBOTS_DISALLOWED


@pytest.mark.parametrize("host", ["forbidden.test", "broken.test", "site.test"])  # 403, 500, 404: allow all
def test_robots_txt_errors_allow(server, host):
    assert fetch(server, f"http://{host}/public/1").status == S.SUCCESS


def test_robots_txt_timeout_is_retried_not_taken_for_allow(server):
    r = fetch(server, "http://slowrobots.test/public/1")
    assert r.status == S.ROBOTS_DISALLOWED, r
    assert server.robots_hits["slowrobots.test"] == 2


# -- W3C TDMRep: the tdm-reservation header and the origin's /.well-known/tdmrep.json


@pytest.mark.parametrize(
    "values, status",
    [(["1"], S.TDM_RESERVED_HEADER), (["0"], S.SUCCESS), ([], S.SUCCESS), (["2"], S.SUCCESS)],
)
def test_tdm_reservation_header(server, values, status):
    url = "http://site.test/tdm-header?" + "&".join(f"value={v}" for v in values)
    r = fetch(server, url)
    assert r.status == status, r
    if status == S.TDM_RESERVED_HEADER:
        assert r.body is None and r.error_message == "tdm-reservation: 1"
        assert fetch(server, url, consent=ConsentSettings(respect_tdm_reservation=False)).status == S.SUCCESS
    else:
        assert r.body == BODY


def test_tdm_reservation_header_names_the_policy(server):
    r = fetch(server, f"http://site.test/tdm-header?value=1&policy={TDM_POLICY_URL}")
    assert (r.status, r.error_message) == (S.TDM_RESERVED_HEADER, f"tdm-reservation: 1 (tdm-policy: {TDM_POLICY_URL})")


def test_tdmrep_json_is_fetched_once_per_origin_before_the_images(server):
    before, hits = server.tdmrep_hits["tdm.test"], server.hits["/public/0.png"]
    urls = [f"http://tdm.test/public/{i}.{ext}" for i in range(10) for ext in ("jpg", "png")]
    results = fetch_all(server, urls)
    # the first matching rule decides: /public/*.jpg says 0, /public/ reserves the rest
    assert [r.status for r in results] == [S.SUCCESS, S.TDM_RESERVED_FILE] * 10
    assert server.tdmrep_hits["tdm.test"] - before == 1  # one Fetcher, twenty concurrent fetches
    assert server.hits["/public/0.png"] == hits  # a reserved image is never requested
    assert results[1].body is None and results[1].attempts == 0
    assert results[1].error_message == (
        f"tdmrep.json of tdm.test reserves /public/0.png (location '/public/', tdm-policy {TDM_POLICY_URL})"
    )
    assert fetch(server, "http://tdm.test/private/1").status == S.SUCCESS  # no rule matches: unset


def test_tdmrep_json_is_per_origin_scheme_host_and_port(server):
    before = sum(server.tdmrep_hits.values())
    other_port = {f"tdm.test:{port}": f"127.0.0.1:{server.port}" for port in (80, 8080)}
    results = fetch_all(
        server, ["http://tdm.test/public/1.png", "http://tdm.test:8080/public/1.png"], resolve=other_port
    )
    assert [r.status for r in results] == [S.TDM_RESERVED_FILE] * 2
    assert sum(server.tdmrep_hits.values()) - before == 2


def test_redirect_is_checked_against_the_final_origins_tdmrep_json(server):
    r = fetch(server, "http://site.test/to-tdm-reserved")
    assert r.status == S.TDM_RESERVED_FILE and r.final_url == "http://tdm.test/public/1.png", r
    assert r.attempts == 1  # the redirect was requested, its target was not


@pytest.mark.parametrize(
    "host", ["tdmbroken.test", "tdmshape.test", "tdmhtml.test", "tdmgone.test", "tdmerror.test", "tdmhuge.test"]
)
def test_a_broken_or_missing_tdmrep_json_reserves_nothing(server, host):
    r = fetch(server, f"http://{host}/public/1.png")
    assert (r.status, r.body) == (S.SUCCESS, BODY), r
    assert server.tdmrep_hits[host] >= 1  # it was asked, and its answer reserved nothing


def test_tdmrep_json_timeout_is_retried_not_taken_for_no_reservation(server):
    r = fetch(server, "http://slowtdm.test/public/1.png")
    assert r.status == S.TDM_RESERVED_FILE, r
    assert server.tdmrep_hits["slowtdm.test"] == 2


@pytest.mark.parametrize("host", ["flakytdm.test", "ratetdm.test"])
def test_tdmrep_json_5xx_and_429_are_retried(server, host):
    r = fetch(server, f"http://{host}/public/1.png")
    assert r.status == S.TDM_RESERVED_FILE, r
    assert server.tdmrep_hits[host] == 2


def test_tdmrep_json_failing_after_retries_is_asked_again_later(server, monkeypatch):
    """Down through every retry (503 x3): no reservation for the image that asked, and for the images of the origin
    that come before TDMREP_RETRY_SECONDS have passed; the first image after that asks again."""
    monkeypatch.setattr(fetch_module, "TDMREP_RETRY_SECONDS", 0.3)
    host = "downtdm.test"

    async def go():
        async with Fetcher(settings(server)) as fetcher:
            first = await fetcher.fetch(f"http://{host}/public/1.png")
            soon = await fetcher.fetch(f"http://{host}/public/2.png")
            hits = server.tdmrep_hits[host]
            await asyncio.sleep(0.4)
            return first, soon, hits, await fetcher.fetch(f"http://{host}/public/3.png")

    first, soon, hits, later = asyncio.run(go())
    assert (first.status, soon.status, hits) == (S.SUCCESS, S.SUCCESS, 3)  # retries=2: three requests, one fetch
    assert later.status == S.TDM_RESERVED_FILE and server.tdmrep_hits[host] == 4


def fetch_for_page(server, url, page_url, **overrides):
    async def go():
        async with Fetcher(settings(server, **overrides)) as fetcher:
            return await fetcher.fetch(url, page_url)

    return asyncio.run(go())


def test_the_page_origins_tdmrep_json_reserves_the_images_found_on_its_pages(server):
    before, hits = server.tdmrep_hits["tdmpage.test"], server.hits["/public/7.png"]
    r = fetch_for_page(server, "http://site.test/public/7.png", "http://tdmpage.test/articles/2024/a.html")
    assert (r.status, r.body, r.attempts) == (S.TDM_RESERVED_PAGE_FILE, None, 0), r
    assert server.hits["/public/7.png"] == hits  # the image was never requested
    assert r.error_message == (
        "tdmrep.json of tdmpage.test reserves the page /articles/2024/a.html"
        f" (location '/articles/', tdm-policy {TDM_POLICY_URL})"
    )
    assert server.tdmrep_hits["tdmpage.test"] == before + 1
    for page_url in ("http://tdmpage.test/about.html", None, "", "not a url", "ftp://tdmpage.test/articles/a"):
        assert fetch_for_page(server, "http://site.test/public/7.png", page_url).status == S.SUCCESS, page_url
    off = fetch_for_page(
        server,
        "http://site.test/public/7.png",
        "http://tdmpage.test/articles/a.html",
        consent=ConsentSettings(respect_tdm_reservation=False),
    )
    assert off.status == S.SUCCESS and server.tdmrep_hits["tdmpage.test"] == before + 2  # the about page's ask


def test_the_page_origins_tdmrep_json_passes_the_ssrf_guard(server):
    hits = server.hits["/public/8.png"]
    r = fetch_for_page(server, "http://site.test/public/8.png", "http://tdmredirect.test/articles/a.html")
    assert r.status == S.BLOCKED_ADDRESS and r.attempts == 0, r  # we will not ask there: we cannot know
    assert r.error_message.startswith(f"http://tdmredirect.test{TDMREP_PATH} redirects: ")
    assert "(private)" in r.error_message
    # a page on a refused address: its tdmrep.json is not asked (no reservation known), the image is
    r = fetch_for_page(server, "http://site.test/public/8.png", "http://internal.test/articles/a.html")
    assert r.status == S.SUCCESS and server.hits["/public/8.png"] == hits + 1


def test_tdm_switch_off_never_asks_for_tdmrep_json(server):
    before = sum(server.tdmrep_hits.values())
    urls = ["http://tdm.test/public/1.png", "http://tdmerror.test/public/1.png", "http://site.test/tdm-header?value=1"]
    results = fetch_all(server, urls, consent=ConsentSettings(respect_tdm_reservation=False))
    assert [r.status for r in results] == [S.SUCCESS] * 3
    assert sum(server.tdmrep_hits.values()) == before


# -- SSRF guard, DNS, schemes


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://internal.test/a.jpg", "10.0.0.7 (private)"),
        ("http://metadata.test/latest/meta-data/", "169.254.169.254 (link-local)"),
        ("http://mapped.test/ok", "(private)"),  # ::ffff:10.0.0.7, IPv4-mapped IPv6: still refused
    ],
)
def test_private_addresses_are_blocked(server, url, reason):
    r = fetch(server, url)
    assert r.status == S.BLOCKED_ADDRESS and reason in r.error_message


def test_loopback_without_allowlist_is_blocked_before_connecting(server):
    before = sum(server.hits.values())
    urls = [
        f"http://127.0.0.1:{server.port}/ok",
        f"http://localhost:{server.port}/ok",
        f"http://[::ffff:127.0.0.1]:{server.port}/ok",
        f"http://2130706433:{server.port}/ok",
        "http://site.test/ok",
    ]
    results = fetch_all(server, urls, allow_addresses=[])
    assert [r.status for r in results] == [S.BLOCKED_ADDRESS] * len(urls)
    assert results[0].error_message == "127.0.0.1 is loopback"
    assert results[1].error_message.startswith("localhost resolves to") and "(loopback)" in results[1].error_message
    assert sum(server.hits.values()) == before  # not even robots.txt was asked


def test_unresolvable_host_is_dns_error(server):
    r = fetch(server, "http://no-such-host.invalid/a.jpg")
    assert r.status == S.DNS_ERROR and "no-such-host.invalid" in r.error_message


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ftp://site.test/a.jpg",
        "a.jpg",
    ],
)
def test_non_http_schemes_are_unsupported(server, url):
    r = fetch(server, url)
    assert r.status == S.UNSUPPORTED_SCHEME and r.attempts == 0


def test_garbage_url_is_a_result_not_an_exception(server):
    for url in ["http://", "http://[::1/x", "http://exa mple.test/a.jpg", ""]:
        r = fetch(server, url)
        assert r.status in {S.CONNECTION_ERROR, S.UNSUPPORTED_SCHEME, S.DNS_ERROR}, (url, r)


# -- TLS


def test_https_with_trusted_ca(server):
    r = fetch(server, "https://secure.test/ok", ca_bundle=server.ca_path)
    assert r.status == S.SUCCESS and r.body == BODY


def test_https_with_untrusted_certificate(server):
    r = fetch(server, "https://secure.test/ok", retries=2)
    assert r.status == S.CONNECTION_ERROR and "TLS" in r.error_message and r.attempts == 1


# -- politeness


def test_per_host_cap(server):
    urls = [f"http://{host}/busy/{i}" for i in range(12) for host in ("busy.test", "busy2.test")]
    results = fetch_all(server, urls, per_host=2, concurrency=50)
    assert all(r.status == S.SUCCESS for r in results)
    assert server.max_inflight["busy.test"] == 2 and server.max_inflight["busy2.test"] == 2


# -- pure helpers


def test_blocked_reason():
    allowed = [ipaddress.ip_network("127.0.0.1/32")]
    ip = ipaddress.ip_address
    assert blocked_reason(ip("93.184.216.34"), []) is None
    assert blocked_reason(ip("2606:4700::1111"), []) is None
    assert blocked_reason(ip("127.0.0.1"), allowed) is None
    assert blocked_reason(ip("127.0.0.2"), allowed) == "loopback"
    assert blocked_reason(ip("::1"), []) == "loopback"
    assert blocked_reason(ip("fe80::1"), []) == "link-local"
    assert blocked_reason(ip("fc00::1"), []) == "private"
    assert blocked_reason(ip("::ffff:192.168.1.1"), []) == "private"
    assert blocked_reason(ip("2002:7f00:1::"), []) == "loopback"  # 6to4 of 127.0.0.1
    assert blocked_reason(ip("2001:0:4136:e378:8000:63bf:80ff:fffe"), []) == "loopback"  # Teredo client 127.0.0.1
    assert blocked_reason(ip("224.0.0.1"), []) == "multicast"
    assert blocked_reason(ip("0.0.0.0"), []) == "unspecified"
    assert blocked_reason(ip("240.0.0.1"), []) == "reserved"
    assert blocked_reason(ip("100.64.0.1"), []) == "not globally routable"


def test_literal_ip():
    assert literal_ip("10.0.0.7") == ipaddress.ip_address("10.0.0.7")
    assert literal_ip("[::1]") == ipaddress.ip_address("::1")
    assert literal_ip("127.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_ip("0x7f000001") == ipaddress.ip_address("127.0.0.1")
    assert literal_ip("img.site-3.world.test") is None
    assert literal_ip("1e100.net") is None


def test_parse_retry_after():
    assert parse_retry_after("120") == 120
    assert parse_retry_after(formatdate(1000 + 30, usegmt=True), now=1000) == 30
    assert parse_retry_after(formatdate(1000 - 30, usegmt=True), now=1000) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- URLs requested exactly as given (the wire, as a raw-socket server saw it)


SITE_FILES = (b"/robots.txt", TDMREP_PATH.encode())  # the origin's own files, fetched before its images


def answer_exact(request: Request) -> bytes:
    if request.target in SITE_FILES:
        return response(404)
    if request.target.startswith(b"/hop/"):
        return response(302, headers={"Location": HOPS[request.target.decode()]})
    return response(200, BODY, {"Content-Type": "image/png"})


HOPS = {  # redirect -> its Location header as sent (a str holding raw bytes as surrogates)
    "/hop/escaped": "/a%28b%29.jpg?sig=%2F%3D",
    "/hop/utf8": "http://site.test/K\udcc3\udca4se%28x%29.jpg",  # raw UTF-8 bytes in the header
    "/hop/relative": "../img/b%2Fc%7e.jpg?q=a+b c",
    "/hop/idn": "//bücher.test/x%7E.jpg",
}


@pytest.fixture(scope="module")
def raw_server():
    with RawServer(answer_exact) as srv:
        yield srv


def exact_settings(srv, **overrides) -> DownloadSettings:
    hosts = ["site.test", "bücher.test"]
    base = {
        "allow_addresses": ["127.0.0.1/32"],
        "resolve": {f"{host}:80": f"127.0.0.1:{srv.port}" for host in hosts},
        "min_bytes": 1000,
        "retries": 0,
    }
    return DownloadSettings(**(base | overrides))


def fetch_seen(srv, url, **overrides):
    """The fetch result and the requests (robots.txt aside) that reached the server."""
    before = len(srv.requests)

    async def go():
        async with Fetcher(exact_settings(srv, **overrides)) as fetcher:
            return await fetcher.fetch(url)

    result = asyncio.run(go())
    return result, [r for r in srv.requests[before:] if r.target not in SITE_FILES]


@pytest.mark.parametrize(
    "url, target",
    [
        # the form of a real Wikipedia thumbnail: yarl used to send /a(b).jpg, which the server 404s
        ("http://site.test/a%28b%29.jpg", "/a%28b%29.jpg"),
        # reserved characters, as they are and escaped: both stay
        (
            "http://site.test/p/a:b@c!$&'()*+,;=.jpg?x=a:b/c?d&y=(1)&z=%3A%40%21%24%26%2A%2B%2C%3B%3D",
            "/p/a:b@c!$&'()*+,;=.jpg?x=a:b/c?d&y=(1)&z=%3A%40%21%24%26%2A%2B%2C%3B%3D",
        ),
        ("http://site.test/dir%2fname%2F.jpg?sig=a%2Fb", "/dir%2fname%2F.jpg?sig=a%2Fb"),  # %2F, lower case too
        ("http://site.test/100%25.jpg?p=50%25&sig=%25%32", "/100%25.jpg?p=50%25&sig=%25%32"),
        ("http://site.test/%7e%7E.jpg", "/%7e%7E.jpg"),  # escaped unreserved characters stay escaped
        # non-ASCII as UTF-8 escapes, as browsers send it; the escapes already there untouched
        ("http://site.test/Käse%28alt%29 ü.jpg?q=über", "/K%C3%A4se%28alt%29%20%C3%BC.jpg?q=%C3%BCber"),
        # spaces in a query are %20, a + stays a + (it is not a space on the wire)
        ("http://site.test/i.jpg?q=a+b c&sig=x%2By", "/i.jpg?q=a+b%20c&sig=x%2By"),
    ],
)
def test_url_is_requested_exactly_as_given(raw_server, url, target):
    r, seen = fetch_seen(raw_server, url)
    assert r.status == S.SUCCESS, r
    assert [s.line for s in seen] == [f"GET {target} HTTP/1.1".encode()]
    assert seen[0].host == "site.test" and r.final_url == f"http://site.test{target}"


def test_idn_host_goes_out_in_its_ascii_form(raw_server):
    r, seen = fetch_seen(raw_server, "http://bücher.test/a%28b%29.jpg")
    assert r.status == S.SUCCESS, r
    assert [(s.host, s.target) for s in seen] == [("xn--bcher-kva.test", b"/a%28b%29.jpg")]
    assert r.final_url == "http://xn--bcher-kva.test/a%28b%29.jpg"


@pytest.mark.parametrize(
    "hop, host, target",
    [
        ("escaped", "site.test", "/a%28b%29.jpg?sig=%2F%3D"),
        ("utf8", "site.test", "/K%C3%A4se%28x%29.jpg"),
        ("relative", "site.test", "/img/b%2Fc%7e.jpg?q=a+b%20c"),
        ("idn", "xn--bcher-kva.test", "/x%7E.jpg"),
    ],
)
def test_redirect_target_is_requested_exactly_as_given(raw_server, hop, host, target):
    r, seen = fetch_seen(raw_server, f"http://site.test/hop/{hop}")
    assert r.status == S.SUCCESS and r.attempts == 2, r
    assert [(s.host, s.target.decode()) for s in seen] == [("site.test", f"/hop/{hop}"), (host, target)]
    assert r.final_url == f"http://{host}{target}"


@pytest.mark.parametrize(
    "url, target",
    [
        ("http://Site.TEST:80/a%28b%29.jpg#frag", "http://site.test/a%28b%29.jpg"),
        ("http://site.test", "http://site.test/"),
        # a backslash is a slash, as browsers read it; an empty query is lost (yarl has no empty query)
        ("http://site.test/a b\\c.jpg?", "http://site.test/a%20b/c.jpg"),
        ("https://[::1]:8443/x?y='z'", "https://[::1]:8443/x?y=%27z%27"),
        ('http://site.test/{a}^`|"<>.jpg?{a}^`|"<>', "http://site.test/%7Ba%7D%5E%60|%22%3C%3E.jpg?{a}^`|%22%3C%3E"),
        ("http://site.test/100%.jpg", "http://site.test/100%.jpg"),  # a lone % goes out as it is, as browsers send it
    ],
)
def test_request_url(url, target):
    assert str(request_url(url)) == target


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://exa mple.test/a.jpg", "invalid host"),
        ("http://evil.test\\@site.test/", "invalid host"),
        ("http:///a.jpg", "no host"),
        ("http://site.test:99999/", "Port out of range"),
        ("ftp://site.test/a.jpg", "unsupported scheme 'ftp'"),
        # aiohttp would take these for IP literals and skip the resolver, so the guard would not see them
        ("http://127.0.0.1./a.jpg", "neither an IPv4 address nor a name"),
        ("http://1.2.3.4.5/a.jpg", "neither an IPv4 address nor a name"),
    ],
)
def test_request_url_refuses(url, reason):
    with pytest.raises(ValueError, match=reason):
        request_url(url)


# -- every request passes the SSRF guard: robots.txt, and the redirects of both


class Redirector:
    """An image host on 127.0.0.2 (the one address allowed) whose robots.txt or image redirects where a test says,
    and a victim server on other loopback addresses that no request may reach."""

    def __init__(self):
        self.locations: dict[str, str] = {}  # "host path" -> Location
        self.host = RawServer(self.answer, addresses=["127.0.0.2"])
        addresses = ["127.0.0.1", "127.0.0.3"] + (["::1"] if socket.has_ipv6 and _can_bind("::1") else [])
        self.victim = RawServer(lambda request: response(200, BODY, {"Content-Type": "image/png"}), addresses)

    def answer(self, request: Request) -> bytes:
        where = f"{request.host} {request.target.decode()}"
        if where in self.locations:
            return response(302, headers={"Location": self.locations[where]})
        if request.target in SITE_FILES:
            return response(404)
        if request.target == b"/rules.json":
            return response(
                200, b'[{"location": "/private/", "tdm-reservation": 1}]', {"Content-Type": "application/json"}
            )
        if request.target == b"/rules.txt":
            return response(200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
        return response(200, BODY, {"Content-Type": "image/png"})

    def settings(self, host: str) -> DownloadSettings:
        return DownloadSettings(
            allow_addresses=["127.0.0.2/32"],
            resolve={f"{host}:80": f"127.0.0.2:{self.host.port}"},
            min_bytes=1000,
            retries=0,
            connect_timeout=1.0,
            total_timeout=2.0,
        )


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def redirector():
    r = Redirector()
    yield r
    r.host.stop()
    r.victim.stop()


GUARDED = [  # a Location to a refused address, and the reason given ({v1} etc.: the victim's ports)
    ("http://127.0.0.3:{v3}/x", "127.0.0.3 is loopback"),  # issue 19's reproduction
    ("http://127.0.0.1:{v1}/x", "127.0.0.1 is loopback"),
    ("http://0.0.0.0:{v1}/x", "0.0.0.0 is unspecified"),  # Linux connects 0.0.0.0 to the local host
    ("http://[::ffff:127.0.0.1]:{v1}/x", "::ffff:7f00:1 is loopback"),  # IPv4-mapped IPv6
    ("http://2130706433:{v1}/x", "2130706433 = 127.0.0.1 is loopback"),  # decimal
    ("http://0177.0.0.1:{v1}/x", "0177.0.0.1 = 127.0.0.1 is loopback"),  # octal
    ("http://0x7f.1:{v1}/x", "0x7f.1 = 127.0.0.1 is loopback"),  # hex, short form
    ("http://[::1]:{v6}/x", "::1 is loopback"),
    ("http://10.0.0.7/x", "10.0.0.7 is private"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
    ("http://[fd00::1]/x", "fd00::1 is private"),
    ("http://[fe80::1]/x", "fe80::1 is link-local"),
]


SITE_FILE_OF = {"robots.txt": "/robots.txt", "tdmrep.json": TDMREP_PATH}


@pytest.mark.parametrize("via", ["robots.txt", "tdmrep.json", "image"])
@pytest.mark.parametrize("location, reason", GUARDED)
def test_redirect_to_a_refused_address_is_never_requested(redirector, via, location, reason):
    names = {"127.0.0.1": "v1", "127.0.0.3": "v3", "::1": "v6"}
    ports = {names[address]: port for address, port in redirector.victim.ports.items()}
    if "{v6}" in location and "v6" not in ports:
        pytest.skip("no IPv6 loopback here")
    host = f"{via.replace('.', '-')}-{GUARDED.index((location, reason))}.test"
    location = location.format(**ports)
    redirector.locations[f"{host} {SITE_FILE_OF.get(via, '/img.png')}"] = location
    before, seen = redirector.victim.connections, len(redirector.host.requests)

    async def go():
        async with Fetcher(redirector.settings(host)) as fetcher:
            return await fetcher.fetch(f"http://{host}/img.png")

    r = asyncio.run(go())
    assert redirector.victim.connections == before  # nothing reached the refused address, not even a connection
    assert r.status == S.BLOCKED_ADDRESS and reason in r.error_message, r
    asked = [q.target for q in redirector.host.requests[seen:]]
    site_files = [b"/robots.txt", TDMREP_PATH.encode()]
    if via in SITE_FILE_OF:  # the image is refused with the origin's robots.txt or tdmrep.json, and says so
        assert r.error_message.startswith(f"http://{host}{SITE_FILE_OF[via]} redirects: ")
        assert asked == site_files[: site_files.index(SITE_FILE_OF[via].encode()) + 1]
    else:
        assert asked == [*site_files, b"/img.png"] and r.final_url == location


@pytest.mark.parametrize(
    ("host", "site_file", "moved_to", "refused"),
    [
        ("moved.test", "/robots.txt", "/rules.txt", S.ROBOTS_DISALLOWED),
        ("moved-tdm.test", TDMREP_PATH, "/rules.json", S.TDM_RESERVED_FILE),
    ],
)
def test_a_site_file_redirect_within_the_guard_is_followed(redirector, host, site_file, moved_to, refused):
    redirector.locations[f"{host} {site_file}"] = moved_to

    async def go():
        async with Fetcher(redirector.settings(host)) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(f"http://{host}/{p}/1.png") for p in ("private", "public")))

    private, public = asyncio.run(go())
    assert (private.status, public.status) == (refused, S.SUCCESS)
