"""ImageServer: serves the world's images to its virtual hosts from one local port.

Pages name hosts like img.site-3.world.test (https in some pages, served as plain http
here); a client maps every host to 127.0.0.1:port (`host_map`, like curl --resolve) and
the server routes by the Host header. Images are rendered on request from their id.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pyarrow.parquet as pq

from tasks.world.scenes import render_image

IMAGE_PATH = re.compile(r"/(\d{6})\.(jpg|png|webp|gif)$")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
ROBOTS = b"User-agent: *\nAllow: /\n"


class _Handler(BaseHTTPRequestHandler):
    server: "_WorldHTTPServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests and the demo run many requests
        pass

    def _send(self, code: int, body: bytes, ctype: str = "text/plain", head_only: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head_only=True)

    def do_GET(self, head_only: bool = False):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        if host not in self.server.hosts:
            return self._send(404, b"unknown host\n", head_only=head_only)
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/robots.txt":
            return self._send(200, ROBOTS, head_only=head_only)
        m = IMAGE_PATH.search(path)
        behaviour = self.server.behaviours.get(int(m.group(1))) if m else None
        if behaviour is None:
            return self._send(404, b"not found\n", head_only=head_only)
        # Later stages add misbehaviours here (slow, 5xx, 429, redirects, truncated bodies...).
        if behaviour != "ok":
            raise NotImplementedError(f"image {m.group(1)}: behaviour {behaviour!r}")
        body = self.server.image_bytes(int(m.group(1)), m.group(2))
        self._send(200, body, CONTENT_TYPES[m.group(2)], head_only=head_only)


class _WorldHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, seed: int, hosts: set[str], behaviours: dict[int, str], host: str = "127.0.0.1"):
        super().__init__((host, 0), _Handler)
        self.seed, self.hosts, self.behaviours = seed, hosts, behaviours
        self.image_bytes = functools.lru_cache(maxsize=2048)(self._render)

    def _render(self, image_id: int, fmt: str) -> bytes:
        return render_image(self.seed, image_id, fmt)


class ImageServer:
    """`with ImageServer(world.root) as srv:` serves the images of the world at `root` on 127.0.0.1."""

    def __init__(self, root: str, host: str = "127.0.0.1"):
        with open(os.path.join(root, "world.json"), "rb") as f:
            info = orjson.loads(f.read())
        images = pq.read_table(os.path.join(root, "manifest", "images.parquet"), columns=["image_id", "behaviour"])
        behaviours = dict(zip(images["image_id"].to_pylist(), images["behaviour"].to_pylist()))
        self.host = host
        self._server = _WorldHTTPServer(info["spec"]["seed"], set(info["image_hosts"]), behaviours, host)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def host_map(self) -> dict[str, tuple[str, int]]:
        """Virtual host -> (ip, port) for every image host of the world."""
        return {h: (self.host, self.port) for h in sorted(self._server.hosts)}

    def start(self) -> "ImageServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="world-image-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
