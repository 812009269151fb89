"""Loopback HTTP servers for the download tests, built on raw sockets so that nothing between the
wire and the test rewrites what the client sent:

- RawServer records every request exactly as it arrived (request line and headers, as bytes) and
  answers with whole HTTP responses (bytes) that a function of the request returns;
- Replay answers from WARC captures: each stored response, status line, headers and body as recorded,
  looked up by the request's host and target (path and query) exactly as stored.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastwarc.warc import ArchiveIterator, WarcRecordType

HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Request:
    line: bytes  # b"GET /a%28b%29.jpg HTTP/1.1"
    headers: tuple[tuple[bytes, bytes], ...]
    address: str  # the server address it reached

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]

    @property
    def host(self) -> str:
        """The Host header without its port."""
        value = next((v for k, v in self.headers if k.lower() == b"host"), b"").decode("ascii")
        return value.rsplit(":", 1)[0] if not value.endswith("]") else value


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None, reason: str = "") -> bytes:
    """A whole HTTP/1.1 response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} {reason or 'Status'}".encode()]
    for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
        lines.append(f"{name}: {value}".encode("utf-8", "surrogateescape"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _keeps_alive(answer: bytes) -> bool:
    """Whether the connection may carry another request after `answer` (its body is framed, no close)."""
    head = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    names = {line.split(b":", 1)[0].strip(): line.split(b":", 1)[-1].strip() for line in head[1:]}
    if names.get(b"connection") == b"close" or head[0].startswith(b"http/1.0"):
        return False
    return b"content-length" in names or b"chunked" in names.get(b"transfer-encoding", b"")


class RawServer:
    """An HTTP/1.1 server on loopback addresses, in its own thread. `connections` counts accepted
    connections (a request refused before connecting leaves it unchanged)."""

    def __init__(
        self,
        respond: Callable[[Request], bytes],
        addresses: Iterable[str] = ("127.0.0.1",),
        tls: ssl.SSLContext | None = None,
    ):
        self.respond = respond
        self.requests: list[Request] = []
        self.connections = 0
        self.ports: dict[str, int] = {}  # address -> port
        self.tls_ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(list(addresses), tls), self.loop).result(10)

    async def _start(self, addresses: list[str], tls: ssl.SSLContext | None) -> None:
        self._servers = []
        for address in addresses:
            for context, ports in [(None, self.ports)] + ([(tls, self.tls_ports)] if tls else []):
                server = await asyncio.start_server(
                    lambda r, w, a=address: self._serve(r, w, a), address, 0, ssl=context
                )
                ports[address] = server.sockets[0].getsockname()[1]
                self._servers.append(server)

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                line, *rest = head[:-4].split(b"\r\n")
                headers = tuple((k.strip(), v.strip()) for k, _, v in (h.partition(b":") for h in rest))
                request = Request(line, headers, address)
                self.requests.append(request)
                answer = self.respond(request)
                writer.write(answer)
                await writer.drain()
                if not _keeps_alive(answer):
                    return
        except ConnectionError:
            return
        finally:
            writer.close()

    def stop(self) -> None:
        async def close():
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def stored_responses(paths: Iterable[str]) -> dict[tuple[str, str], bytes]:
    """{(host, path?query): the HTTP response as recorded} of the response records of WARC files
    (the first capture of a URL wins; the scheme is not part of the key)."""
    found: dict[tuple[str, str], bytes] = {}
    for path in paths:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
                uri = record.headers.get("WARC-Target-URI")
                parts = urlsplit(uri)
                if parts.scheme not in ("http", "https"):
                    continue
                target = (parts.path or "/") + (f"?{parts.query}" if "?" in uri.split("#", 1)[0] else "")
                found.setdefault((parts.hostname, target), record.reader.read())
    return found


class Replay(RawServer):
    """Serves stored responses (stored_responses) on 127.0.0.1, over http and, with `tls`, https;
    anything not stored is a 404."""

    def __init__(self, stored: dict[tuple[str, str], bytes], tls: ssl.SSLContext | None = None):
        self.stored = stored
        super().__init__(self._answer, tls=tls)

    def _answer(self, request: Request) -> bytes:
        key = (request.host.lower(), request.target.decode("latin-1"))
        return self.stored.get(key) or response(404, b"not in the captures", reason="Not Found")
