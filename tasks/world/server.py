"""ImageServer: serves the world's images to its virtual hosts over http and https, misbehaving on purpose.

Pages name hosts like img.site-3.world.test; a client maps every "host:port" to a local
"ip:port" (`resolve`, like curl --resolve: port 80 to the http listener, 443 to the TLS
one, whose certificates come from a throwaway CA at `ca_pem_path`) and the server routes
by the Host header. Images are rendered on request from their id; what each image's URL
does (503 twice, 429, redirect loop, endless body, decompression bomb, 1 MiB header...) is its
behaviour (tasks/world/behaviours.py), and `World.expected_downloads()` says how a
correct downloader ends on each URL under `download_settings()`.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import shutil
import ssl
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pyarrow.parquet as pq
import trustme

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.world import behaviours as bh
from clipcrawl.tasks.world.lists import world_blocklists
from clipcrawl.tasks.world.payloads import BODIES, HOSTILE, Runs, body, header_flood, stream_chunk

IMAGE_PATH = re.compile(r"/(\d{6})\.(jpg|png|webp|gif)$")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
ROBOTS = b"User-agent: otherbot\nDisallow: /\n\nUser-agent: *\nDisallow: /private/\nAllow: /\n"
ROBOTS_CLOSED = b"User-agent: *\nDisallow: /\n"
STATUS_BODIES = {
    403: b"forbidden\n",
    404: b"not found\n",
    410: b"gone\n",
    429: b"slow down\n",
    500: b"internal server error\n",
    503: b"service unavailable\n",
}
WARM_LIMIT = 4096  # bodies rendered before serving (a small world has ~300): see ImageServer.start
WRITE_BLOCK = 64 * 1024  # runs of small pieces go out in writes of about this size
TDM_HEADERS = {
    "tdm_reserved_header": {"tdm-reservation": "1", "tdm-policy": bh.TDM_POLICY_URL},
    "tdm_unreserved_header": {"tdm-reservation": "0"},
}
TDMREP = {  # host -> its /.well-known/tdmrep.json (other hosts: 404)
    bh.TDM_HOST: orjson.dumps(bh.TDMREP_RULES),
    bh.BROKEN_TDM_HOST: orjson.dumps(bh.TDMREP_RULES)[:-20],  # cut off mid-rule: no JSON, no reservation
    bh.TDM_PAGE_HOST: orjson.dumps(bh.TDMREP_PAGE_RULES),
}
X_ROBOTS = {
    "noai_header": "noai",
    "otherbot_noai_header": "otherbot: noai, noimageai",
    "ourbot_noai_header": f"{bh.OUR_TOKEN}: noimageai",
}


class _Handler(BaseHTTPRequestHandler):
    server: _WorldHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is dropped after this

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests and the demo run many requests
        pass

    def _send(
        self,
        code: int,
        body: bytes = b"",
        ctype: str = "text/plain",
        headers: dict | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)

    def _status(self, code: int, headers: dict | None = None) -> None:
        self._send(code, STATUS_BODIES.get(code, b""), headers=headers)

    def _stream(self, ctype: str, length: int | None, drip: bool) -> None:
        """An endless body: fast 64 KiB chunks, or one byte every DRIP_INTERVAL; stops when the client goes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.head_only:
            return
        chunk, sent, stopping = stream_chunk(), 0, self.server.world.stopping
        try:
            if drip:
                for i in range(int(bh.DRIP_CAP_S / bh.DRIP_INTERVAL)):
                    self.wfile.write(chunk[i % len(chunk) : i % len(chunk) + 1])
                    self.wfile.flush()
                    if stopping.wait(bh.DRIP_INTERVAL):
                        return
            else:
                while sent < bh.STREAM_CAP and not stopping.is_set():
                    self.wfile.write(chunk)
                    sent += len(chunk)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass

    def _send_runs(self, ctype: str, runs: Runs, headers: dict | None = None) -> None:
        """A hostile body, written run by run; the client is expected to hang up part way."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(len(part) * times for part, times in runs)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.head_only:
            return
        stopping = self.server.world.stopping
        try:
            for part, times in runs:
                batch = max(1, WRITE_BLOCK // len(part))
                full, rest = divmod(times, batch)
                for block, count in ((part * batch, full), (part * rest, 1)):
                    for _ in range(count):
                        if stopping.is_set():
                            return
                        self.wfile.write(block)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass

    def _send_header_flood(self, ctype: str, flood: bytes, data: bytes) -> None:
        """The image, after `flood` (raw header lines) in its response head."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        try:
            self.flush_headers()
            self.wfile.write(flood)
            self.end_headers()
            if not self.head_only:
                self.wfile.write(data)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass

    def do_HEAD(self):
        self.do_GET(head_only=True)

    def do_GET(self, head_only: bool = False):
        self.head_only = head_only
        world = self.server.world
        raw_host = self.headers.get("Host") or ""
        host = raw_host.split(":")[0].lower()
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        scheme = "https" if self.server.tls else "http"
        world.hit(f"{scheme}://{host}{path}")
        if host not in world.hosts:
            return self._send(404, b"unknown host\n")
        if path == "/robots.txt":
            if host == bh.NO_ROBOTS_HOST:
                return self._status(404)
            return self._send(200, ROBOTS_CLOSED if host == bh.CLOSED_HOST else ROBOTS)
        if path == "/.well-known/tdmrep.json" and host in TDMREP:
            return self._send(200, TDMREP[host], "application/json")
        m = IMAGE_PATH.search(path)
        behaviour = world.behaviours.get(int(m.group(1))) if m else None
        if behaviour is None:
            return self._status(404)
        image_id, fmt, name = int(m.group(1)), m.group(2), m.group(0)[1:]
        if path.startswith("/loop/"):
            other = "b" if path.startswith("/loop/a/") else "a"
            return self._send(302, b"", headers={"Location": f"{scheme}://{raw_host}/loop/{other}/{name}"})
        if path.startswith("/moved/") or bh.BEHAVIOURS[behaviour].host:
            behaviour = "ok"  # a redirect's target, or an image whose oddity is its host
        self._respond(
            behaviour, image_id, fmt, name, f"{scheme}://{raw_host}", world.hit_count(f"{scheme}://{host}{path}")
        )

    def _respond(self, b: str, image_id: int, fmt: str, name: str, origin: str, nth: int) -> None:
        world = self.server.world
        if b == "slow" and world.stopping.wait(bh.SLOW_DELAY):
            return
        if b == "timeout" and world.stopping.wait(bh.HANG_DELAY):
            return
        if b == "unavailable_twice" and nth <= bh.UNAVAILABLE_TIMES:
            return self._status(503)
        if b == "rate_limited" and nth <= bh.RATE_LIMITED_TIMES:
            return self._status(429, {"Retry-After": str(bh.RETRY_AFTER)})
        codes = {"error_500": 500, "not_found": 404, "gone": 410, "forbidden": 403}
        if b in codes:
            return self._status(codes[b])
        if b == "redirect":
            return self._send(302, b"", headers={"Location": f"{origin}/moved/{name}"})
        if b == "redirect_loop":
            return self._send(302, b"", headers={"Location": f"{origin}/loop/a/{name}"})
        if b == "disconnect":
            self.close_connection = True
            return
        if b in ("endless_body", "endless_drip", "huge_content_length"):
            return self._stream(
                CONTENT_TYPES[fmt], bh.HUGE_LENGTH if b == "huge_content_length" else None, drip=b == "endless_drip"
            )
        if b in HOSTILE:
            headers = {"Content-Encoding": "gzip"} if b == "gzip_bomb" else None
            return self._send_runs(CONTENT_TYPES[fmt], world.hostile(image_id, b), headers)
        if b in ("huge_header_line", "many_headers"):
            return self._send_header_flood(CONTENT_TYPES[fmt], header_flood(b), world.body(image_id, "ok", fmt))
        ctype = {"text_plain": "text/plain", "octet_stream": "application/octet-stream"}.get(b, CONTENT_TYPES[fmt])
        headers = {"X-Robots-Tag": X_ROBOTS[b]} if b in X_ROBOTS else TDM_HEADERS.get(b)
        self._send(200, world.body(image_id, b, fmt), ctype, headers)


class _World:
    """What both listeners share: the images' behaviours and the per-URL request counts."""

    def __init__(self, seed: int, hosts: set[str], behaviours: dict[int, str]):
        self.seed, self.hosts, self.behaviours = seed, hosts, behaviours
        self.stopping = threading.Event()
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._cached = functools.lru_cache(maxsize=WARM_LIMIT * 2)(self._render)
        self._cached_runs = functools.lru_cache(maxsize=WARM_LIMIT)(self._render_runs)

    def hit(self, url: str) -> None:
        with self._lock:
            self.hits[url] += 1

    def hit_count(self, url: str) -> int:
        with self._lock:
            return self.hits[url]

    def body(self, image_id: int, behaviour: str, fmt: str) -> bytes:
        # Behaviours without a body of their own send the ordinary image: one cache entry for all of them.
        return self._cached(image_id, behaviour if behaviour in BODIES else "ok", fmt)

    def _render(self, image_id: int, kind: str, fmt: str) -> bytes:
        return body(self.seed, image_id, kind, fmt)

    def hostile(self, image_id: int, behaviour: str) -> Runs:
        return self._cached_runs(image_id, behaviour)

    def _render_runs(self, image_id: int, behaviour: str) -> Runs:
        return HOSTILE[behaviour](self.seed, image_id)

    def warm(self, image_id: int, behaviour: str, fmt: str) -> None:
        if behaviour in HOSTILE:
            self.hostile(image_id, behaviour)
        self.body(image_id, behaviour, fmt)


class _WorldHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, world: _World, host: str, ssl_context: ssl.SSLContext | None = None):
        super().__init__((host, 0), _Handler)
        self.world, self.ssl_context = world, ssl_context

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a client that never
        # finishes it cannot stall the accept loop.
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if self.ssl_context is not None:
                request.close()

    def handle_error(self, request, client_address):
        pass  # clients that hang up mid-body, or fail the TLS handshake, are part of the game


def _tls_context(ca: trustme.CA, hosts: set[str]) -> ssl.SSLContext:
    """A server context for every host of the world; BADCERT_HOST gets an expired certificate (via SNI)."""
    names = {"world.test", "*.world.test"} | {"*." + h.split(".", 1)[1] for h in hosts if h.count(".") >= 3}
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*sorted(names)).configure_cert(ctx)
    expired = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(
        bh.BADCERT_HOST, not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2020, 12, 31)
    ).configure_cert(expired)

    def pick(sslobj, server_name, _ctx):
        if server_name == bh.BADCERT_HOST:
            sslobj.context = expired

    ctx.sni_callback = pick
    return ctx


class ImageServer:
    """`with ImageServer(world.root) as srv:` serves the images of the world at `root` on 127.0.0.1, http and https."""

    def __init__(self, root: str, host: str = "127.0.0.1"):
        with open(os.path.join(root, "world.json"), "rb") as f:
            info = orjson.loads(f.read())
        images = pq.read_table(
            os.path.join(root, "manifest", "images.parquet"), columns=["image_id", "behaviour", "urls"]
        ).to_pylist()
        behaviours = {i["image_id"]: i["behaviour"] for i in images}
        self._bodies = sorted(
            {
                (i["image_id"], i["behaviour"], IMAGE_PATH.search(u.split("?")[0]).group(2))
                for i in images
                for u in i["urls"]
            }
        )[:WARM_LIMIT]
        self.host = host
        self.root = root
        # the pages' hosts too: their tdmrep.json is asked before the images found on their pages
        pages = {
            *(bh.page_host(i) for i in range(info["spec"]["sites"])),
            *(bh.BEHAVIOURS[b].page_host for b in bh.PAGE_LEVEL),
        }
        self.hosts = sorted({*info["image_hosts"], *pages})
        self._world = _World(info["spec"]["seed"], set(self.hosts), behaviours)
        self._ca = trustme.CA(organization_name="clipcrawl synthetic world")
        self._tmp = tempfile.mkdtemp(prefix="world-ca-")
        self.ca_pem_path = os.path.join(self._tmp, "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_pem_path)
        self._servers = [
            _WorldHTTPServer(self._world, host),
            _WorldHTTPServer(self._world, host, _tls_context(self._ca, set(self.hosts))),
        ]
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        """The plain http listener."""
        return self._servers[0].server_address[1]

    @property
    def https_port(self) -> int:
        return self._servers[1].server_address[1]

    @property
    def hits(self) -> Counter:
        """Requests seen so far, by "scheme://host/path" (robots.txt included)."""
        return self._world.hits

    def _address(self, host: str, port: int) -> tuple[str, int] | None:
        if host == bh.NXDOMAIN_HOST:
            return None
        if host == bh.PRIVATE_HOST:
            return bh.PRIVATE_ADDRESS, port
        return self.host, self.port if port == 80 else self.https_port

    @property
    def host_map(self) -> dict[str, tuple[str, int]]:
        """Virtual host -> (ip, port) of its plain http listener, for every host that resolves."""
        return {h: self._address(h, 80) for h in self.hosts if self._address(h, 80)}

    @property
    def resolve(self) -> dict[str, str]:
        """'host:port' -> 'ip:port' for ports 80 and 443 of every host that resolves (DownloadSettings.resolve)."""
        out = {}
        for h in self.hosts:
            for port in (80, 443):
                if (addr := self._address(h, port)) is not None:
                    out[f"{h}:{port}"] = f"{addr[0]}:{addr[1]}"
        return out

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the world's CA (and only it)."""
        return ssl.create_default_context(cafile=self.ca_pem_path)

    def download_settings(self, **overrides) -> DownloadSettings:
        """Settings that reach this server (resolve, CA, loopback allowed) with short test timeouts.

        `World.expected_downloads()` is the ground truth for these settings (without overrides); they use the
        world's test blocklists (tasks/world/lists.py).
        """
        return DownloadSettings(
            **{
                **bh.TEST_SETTINGS,
                "resolve": self.resolve,
                "ca_bundle": self.ca_pem_path,
                "blocklists": world_blocklists(self.root),
                **overrides,
            }
        )

    def start(self, warm: bool = True) -> ImageServer:
        """Serve; with `warm`, render every body first (~3 s for a small world, in parallel) so that no
        response waits behind others' rendering and a test's short read timeout never fires on an ok image."""
        if warm:
            with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
                list(pool.map(lambda key: self._world.warm(*key), self._bodies))
        self._world.stopping.clear()
        self._threads = [
            threading.Thread(target=s.serve_forever, name=f"world-image-server-{i}", daemon=True)
            for i, s in enumerate(self._servers)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._world.stopping.set()  # sleeping, dripping and streaming handlers return
        if self._threads:
            for s in self._servers:
                s.shutdown()
            for t in self._threads:
                t.join(timeout=5)
            self._threads = []
        for s in self._servers:
            s.server_close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
