"""Fetching image bytes: fast (one pooled aiohttp session per shard task), polite (per-host cap,
robots.txt, X-Robots-Tag opt-outs, W3C TDMRep reservations, backoff) and safe (SSRF guard, size caps,
timeouts). Each URL, and each redirect's target, is requested as a browser requests it (request_url), never
requoted; every request, robots.txt, tdmrep.json and redirects included, passes the same guard.

    async with Fetcher(settings) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))

fetch() never raises for a bad URL or server: every outcome is a FetchResult whose status is
from the closed DownloadStatus set. Image decoding checks happen later (clipcrawl.tasks.download.images).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import ipaddress
import math
import random
import re
import socket
import ssl
import time
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Self
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.errors import TRANSIENT_HTTP, find_cause
from clipcrawl.tasks.core.status import DownloadStatus as S
from clipcrawl.tasks.download.blocklist import for_settings as blocklists_for
from clipcrawl.tasks.download.optout import (
    ALLOW_ALL,
    NO_TDM_RULES,
    ROBOTS_MAX_BYTES,
    TDM_POLICY,
    TDM_RESERVATION,
    TDMREP_MAX_BYTES,
    TDMREP_PATH,
    RobotsRules,
    TdmRules,
    parse_robots,
    parse_tdmrep,
    tdm_header_reservation,
    x_robots_opt_out,
)

USER_AGENT = "Mozilla/5.0 (compatible; {token}/0.1; +https://github.com/clipcrawl/clipcrawl)"
SCHEMES = ("http", "https")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 2.3.1.2: follow at least five
# A tdmrep.json that still fails after its retries for a reason that may pass (5xx, 429, a timeout, a dropped
# connection) is asked again by the first image of its origin that comes this long after (or after the server's
# Retry-After, if longer): see Fetcher._fetch_tdmrep.
TDMREP_RETRY_SECONDS = 30.0
DNS_CACHE_SECONDS = 300
CHUNK = 64 * 1024
# A response head's limits (aiohttp's defaults, held here so that they stay ours): a longer line or more
# headers ends the request as connection_error, before any body is read.
MAX_HEADER_LINE = 8190
MAX_HEADERS = 128
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NUMERIC_HOST = re.compile(r"[0-9][0-9a-fA-FxX.]*")


@dataclass
class FetchResult:
    status: S  # SUCCESS = body obtained; otherwise the reason
    error_message: str | None  # names the reason, e.g. "HTTP 404 Not Found"
    body: bytes | None
    http_status: int | None
    content_type: str | None
    final_url: str | None  # the last URL requested (after redirects), as sent (request_url)
    attempts: int  # HTTP requests sent or tried: redirect hops and retries included
    seconds: float
    blocklist: str | None = None  # BLOCKLISTED: the URL or domain list that holds the URL (or a redirect's)


# ---------------------------------------------------------------------------- SSRF guard


class BlockedAddress(Exception):
    """The host resolves to an address we must not connect to (raised before connecting)."""


def blocked_reason(ip: IPAddress, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """Why connecting to `ip` is refused ("private", "loopback", ...), or None when it is fine."""
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address inside: ::ffff:10.0.0.7 reaches 10.0.0.7
        ip = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None) or ip
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    for reason in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    return None if ip.is_global else "not globally routable"  # e.g. 100.64.0.0/10 (carrier NAT)


@functools.lru_cache(maxsize=1 << 16)  # hosts repeat across a shard's URLs
def literal_ip(host: str) -> IPAddress | None:
    """The address a host written as an IP literal names, legacy IPv4 forms (127.1, 2130706433) included."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]"))
    if _NUMERIC_HOST.fullmatch(host):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


# ------------------------------------------------------------------------- the URL on the wire


class UnsupportedScheme(ValueError):
    """Not an http(s) URL."""


def _escape_table(unsafe: bytes) -> list[str]:
    """The escape of each byte in a URL part: %XX for controls, space, non-ASCII and `unsafe`, else itself."""
    return [f"%{b:02X}" if b < 0x21 or b > 0x7E or b in unsafe else chr(b) for b in range(256)]


# The WHATWG URL standard's path and (special-scheme) query percent-encode sets: what a browser escapes when
# it requests a src; every other byte, and every %XX already there, goes out as written.
_PATH_ESCAPES = re.compile(r'[^!-~]|["#<>?^`{}]'), _escape_table(b'"#<>?^`{}')
_QUERY_ESCAPES = re.compile(r"""[^!-~]|["#<>']"""), _escape_table(b"\"#<>'")
_HOST_CHARS = re.compile(r"[a-z0-9\-._~!$&'()*+,;=]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def _escape(part: str, escapes: tuple[re.Pattern, list[str]]) -> str:
    search, table = escapes
    if not search.search(part):
        return part
    return "".join(map(table.__getitem__, part.encode("utf-8", "surrogateescape")))  # raw header bytes come back


@functools.lru_cache(maxsize=1 << 16)
def request_host(host: str) -> str:
    """A host name as it goes on the wire (and to the resolver): lower-case ASCII, an IDN in its punycode form."""
    try:
        ascii_host = URL.build(scheme="http", host=host.strip("[]")).raw_host
    except ValueError as exc:  # UnicodeError included: not a valid IDN
        raise ValueError(f"invalid host {host!r}: {exc}") from None
    if not (literal_ip(ascii_host) or _HOST_CHARS.fullmatch(ascii_host)):
        raise ValueError(f"invalid host {host!r}")
    if literal_ip(ascii_host) is None and ascii_host.replace(".", "").isdigit():
        # aiohttp takes a host of digits and dots for an IP and skips the resolver (and so the guard)
        raise ValueError(f"invalid host {host!r}: neither an IPv4 address nor a name")
    return ascii_host


def request_url(url: str) -> URL:
    """The URL to request for `url` as a browser requests it: scheme and host normalised (an IDN in its
    punycode form), non-ASCII and the few characters browsers escape percent-encoded (UTF-8), the
    fragment dropped, and every other byte of the path and query kept as given: `%28` stays `%28`,
    `%2F` stays `%2F`, `+` stays `+` (yarl would requote them, and servers may not take the requoted
    form for the same resource). ValueError says why a URL cannot be requested."""
    if not isinstance(url, str):
        raise ValueError(f"not a URL: {url!r}")
    url = url.strip(_C0_AND_SPACE)
    parts = urlsplit(url)  # also drops tabs and newlines anywhere, as browsers do
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsupportedScheme(f"unsupported scheme {scheme or '(none)'!r}")
    if not parts.hostname:
        raise ValueError("no host")
    if "\\" in parts.netloc:  # browsers end the host at a backslash: refuse what they would read otherwise
        raise ValueError(f"invalid host in {parts.netloc!r}")
    host = request_host(parts.hostname)
    port = parts.port  # ValueError when out of range
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority += f":{port}"
    if parts.username is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        authority = f"{_escape(userinfo, _PATH_ESCAPES)}@{authority}"
    path = _escape(parts.path.replace("\\", "/") or "/", _PATH_ESCAPES)
    query = f"?{_escape(parts.query, _QUERY_ESCAPES)}" if "?" in url.partition("#")[0] else ""
    return URL(f"{scheme}://{authority}{path}{query}", encoded=True)


def _parse_resolve(mapping: dict[str, str]) -> dict[tuple[str, int], tuple[str, int]]:
    parsed = {}
    for key, value in mapping.items():
        host, _, port = key.rpartition(":")
        ip, _, ip_port = value.rpartition(":")
        parsed[request_host(host.rstrip(".")), int(port)] = ip.strip("[]"), int(ip_port)
    return parsed


class GuardedResolver(AbstractResolver):
    """`settings.resolve` overrides (like curl --resolve), else the system resolver; then the SSRF guard.

    The guard sits in the resolver, so every connection is checked: redirects to internal hosts
    and DNS rebinding included. aiohttp skips resolvers for IP literals: Fetcher checks those.
    """

    def __init__(self, settings: DownloadSettings):
        self._overrides = _parse_resolve(settings.resolve)
        self._allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.allow_addresses]
        self._system = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        override = self._overrides.get((host.lower().rstrip("."), port))
        if override:
            ip, ip_port = override
            version = ipaddress.ip_address(ip).version
            results = [
                ResolveResult(
                    hostname=host,
                    host=ip,
                    port=ip_port,
                    proto=0,
                    family=socket.AF_INET if version == 4 else socket.AF_INET6,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            ]
        elif host.lower().rstrip(".").endswith(".invalid"):
            # RFC 6761: resolvers SHOULD answer .invalid names negatively; no query is sent
            raise OSError(socket.EAI_NONAME, f"{host}: name under .invalid never resolves (RFC 6761)")
        else:
            results = await self._system.resolve(host, port, family)  # OSError: aiohttp's DNS error
        for result in results:
            ip = ipaddress.ip_address(result["host"].split("%", 1)[0])
            if reason := blocked_reason(ip, self._allowed):
                raise BlockedAddress(f"{host} resolves to {ip} ({reason})")
        return results

    async def close(self) -> None:
        await self._system.close()


# ------------------------------------------------------------------- outcomes of one request


@dataclass
class _Outcome:
    status: S
    message: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    transient: bool = False  # worth another attempt
    retry_after: float | None = None  # seconds the server asked us to wait
    location: str | None = None  # set on a redirect (status then unused)
    blocklist: str | None = None  # BLOCKLISTED: the list's name


def outcome_for_exception(exc: BaseException, url: URL, settings: DownloadSettings) -> _Outcome:
    """The one place where exceptions become statuses (and retry decisions)."""
    if blocked := find_cause(exc, BlockedAddress):
        return _Outcome(S.BLOCKED_ADDRESS, str(blocked))
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return _Outcome(S.DNS_ERROR, f"cannot resolve {url.host}: {exc.os_error}")
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)) or find_cause(
        exc, ssl.SSLError
    ):
        return _Outcome(S.CONNECTION_ERROR, f"TLS failure with {url.host}: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _Outcome(S.TIMEOUT, f"connect timeout after {settings.connect_timeout} s", transient=True)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return _Outcome(S.TIMEOUT, f"read timeout after {settings.read_timeout} s", transient=True)
    if isinstance(exc, TimeoutError):
        return _Outcome(S.TIMEOUT, f"total timeout after {settings.total_timeout} s", transient=True)
    if isinstance(exc, aiohttp.InvalidURL):
        return _Outcome(S.CONNECTION_ERROR, f"invalid URL: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError) and (bad := find_cause(exc, HttpProcessingError)):
        # aiohttp refused the response head (a line over max_line_size, more than max_headers lines, bad syntax):
        # its ClientResponseError would show a 400 the server never sent. Not retried: the server will do it again.
        return _Outcome(S.CONNECTION_ERROR, f"malformed HTTP response from {url.host}: {bad.message}")
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)):
        return _Outcome(S.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}", transient=True)  # refused, reset, cut
    return _Outcome(S.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _http_error(resp: aiohttp.ClientResponse, settings: DownloadSettings) -> _Outcome:
    code = resp.status
    # 5xx -> http_5xx; 4xx, and the odd 1xx/3xx without a usable Location, -> http_4xx.
    outcome = _Outcome(
        S.HTTP_5XX if code >= 500 else S.HTTP_4XX,
        f"HTTP {code} {resp.reason or ''}".strip(),
        http_status=code,
        transient=code in TRANSIENT_HTTP,
    )
    wait = parse_retry_after(resp.headers.get("Retry-After")) if outcome.transient else None
    if wait is not None and wait > settings.max_retry_after:
        outcome.transient = False
        outcome.message += f" (Retry-After {wait:.0f} s over max_retry_after {settings.max_retry_after} s)"
    outcome.retry_after = wait
    return outcome


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, truncate: bool = False) -> bytes | None:
    """The whole body; past `limit` bytes None, or with `truncate` its first `limit` bytes."""
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return b"".join(chunks)[:limit] if truncate else None
    return b"".join(chunks)


async def read_response(resp: aiohttp.ClientResponse, settings: DownloadSettings) -> _Outcome:
    """Status, opt-out header and size checks of one response; reads the body only if all pass."""
    code, ctype = resp.status, resp.headers.get("Content-Type")
    if redirect := _redirect(resp):
        return redirect
    if not 200 <= code < 300:
        return _http_error(resp, settings)
    done = _Outcome(S.SUCCESS, http_status=code, content_type=ctype)
    if settings.consent.respect_optouts and (
        directive := x_robots_opt_out(
            resp.headers.getall("X-Robots-Tag", []),
            settings.consent.user_agent_token,
            settings.consent.optout_directives,
        )
    ):
        done.status, done.message = S.OPT_OUT_HEADER, f"X-Robots-Tag: {directive}"
    elif settings.consent.respect_tdm_reservation and tdm_header_reservation(resp.headers.getall(TDM_RESERVATION, [])):
        policy = resp.headers.get(TDM_POLICY)
        done.status = S.TDM_RESERVED_HEADER
        done.message = f"{TDM_RESERVATION}: 1" + (f" ({TDM_POLICY}: {policy[:200]})" if policy else "")
    elif resp.content_length is not None and resp.content_length > settings.max_bytes:
        done.status = S.TOO_LARGE
        done.message = f"Content-Length {resp.content_length} over max_bytes {settings.max_bytes}"
    elif (
        body := await _read_capped(resp, settings.max_bytes)
    ) is None:  # the inflated size: Content-Length may be gzip's
        done.status, done.message = S.TOO_LARGE, f"body over max_bytes {settings.max_bytes}"
    elif len(body) < settings.min_bytes:
        done.status, done.message = S.TOO_SMALL_BYTES, f"{len(body)} bytes under min_bytes {settings.min_bytes}"
    else:
        done.body = body
    return done


async def read_robots(resp: aiohttp.ClientResponse, settings: DownloadSettings) -> _Outcome:
    """A robots.txt response: its redirect, its first ROBOTS_MAX_BYTES bytes, or its HTTP error (never retried:
    an error status means no rules)."""
    if redirect := _redirect(resp):
        return redirect
    if not 200 <= resp.status < 300:
        return _Outcome(S.HTTP_5XX if resp.status >= 500 else S.HTTP_4XX, f"HTTP {resp.status}", resp.status)
    body = await _read_capped(resp, ROBOTS_MAX_BYTES, truncate=True)
    if len(body) >= ROBOTS_MAX_BYTES:
        resp.close()  # the rest stays unread: drop the connection rather than drain it
    return _Outcome(S.SUCCESS, http_status=resp.status, body=body)


async def read_tdmrep(resp: aiohttp.ClientResponse, settings: DownloadSettings) -> _Outcome:
    """A /.well-known/tdmrep.json response: its redirect, its body, or its HTTP error (429 and 5xx retried as an
    image's are, Retry-After honoured up to max_retry_after). A body over TDMREP_MAX_BYTES is TOO_LARGE, left
    unread: no file."""
    if redirect := _redirect(resp):
        return redirect
    if not 200 <= resp.status < 300:
        return _http_error(resp, settings)
    body = await _read_capped(resp, TDMREP_MAX_BYTES)
    if body is None:
        return _Outcome(S.TOO_LARGE, f"tdmrep.json over {TDMREP_MAX_BYTES} bytes", resp.status)
    return _Outcome(S.SUCCESS, http_status=resp.status, body=body)


def _redirect(resp: aiohttp.ClientResponse) -> _Outcome | None:
    if resp.status in REDIRECT_CODES and resp.headers.get("Location"):
        return _Outcome(S.SUCCESS, http_status=resp.status, location=resp.headers["Location"])
    return None


# ------------------------------------------------------------------------------ the fetcher


@dataclass
class _Progress:
    attempts: int = 0
    url: str | None = None
    redirects: int = 0


def _origin(url: URL) -> tuple[str, str, int]:
    return url.scheme, url.raw_host, url.port


class Fetcher:
    """One pooled HTTP session per shard task; `fetch(url)` is safe to run concurrently."""

    def __init__(self, settings: DownloadSettings):
        self.settings = settings
        self._allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.allow_addresses]
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        # the known-bad lists, as this shard task found them (loaded once per process and version); the image
        # checks of the shard use the same (stage._download)
        self.blocklists = blocklists_for(settings)
        self._robots: dict[tuple[str, str, int], asyncio.Task[RobotsRules]] = {}
        self._tdmrep: dict[tuple[str, str, int], asyncio.Task[TdmRules]] = {}
        self._tdmrep_again: dict[tuple[str, str, int], float] = {}  # origin -> when to ask its failed tdmrep.json again

    async def __aenter__(self) -> Self:
        s = self.settings
        tls = ssl.create_default_context()
        if s.ca_bundle:
            tls.load_verify_locations(cafile=s.ca_bundle)  # in addition to the system's CAs
        self._resolver = GuardedResolver(s)
        connector = aiohttp.TCPConnector(
            limit=s.concurrency,
            limit_per_host=s.per_host,
            ssl=tls,
            ttl_dns_cache=DNS_CACHE_SECONDS,
            resolver=self._resolver,
        )
        timeout = aiohttp.ClientTimeout(
            total=s.total_timeout, connect=s.connect_timeout, sock_connect=s.connect_timeout, sock_read=s.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            max_headers=MAX_HEADERS,
            headers={"User-Agent": USER_AGENT.format(token=s.consent.user_agent_token), "Accept": "image/*,*/*;q=0.8"},
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        for task in (*self._robots.values(), *self._tdmrep.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            await self._resolver.close()  # the connector leaves a resolver it did not create open

    async def fetch(self, url: str, page_url: str | None = None) -> FetchResult:
        """The image at `url`, found on the page at `page_url` (if known): with respect_tdm_reservation, a page
        that its origin's tdmrep.json reserves ends the sample before the image is requested."""
        started, progress = time.monotonic(), _Progress()
        try:
            outcome = None
            if page_url and self.settings.consent.respect_tdm_reservation:
                outcome = await self._page_reservation(page_url)
            if outcome is None:
                outcome = await self._follow(url, progress)
        except Exception as exc:  # noqa: BLE001 - a bug or an exotic failure: a row with a reason, never a crash
            outcome = _Outcome(S.CONNECTION_ERROR, f"unexpected {type(exc).__name__}: {exc}")
        return FetchResult(
            status=outcome.status,
            error_message=outcome.message,
            body=outcome.body,
            http_status=outcome.http_status,
            content_type=outcome.content_type,
            final_url=progress.url,
            attempts=progress.attempts,
            seconds=time.monotonic() - started,
            blocklist=outcome.blocklist,
        )

    async def _follow(self, url: str, progress: _Progress, site_file=None) -> _Outcome:
        """Request `url`, following at most max_redirects redirects, each hop checked again.

        With `site_file` (read_robots or read_tdmrep), `url` is an origin's robots.txt or tdmrep.json: read
        with it, up to ROBOTS_MAX_REDIRECTS redirects, and subject to neither robots.txt nor tdmrep.json. Its
        hops pass the same checks as an image's."""
        read = site_file or read_response
        max_redirects = ROBOTS_MAX_REDIRECTS if site_file else self.settings.max_redirects
        seen: set[str] = set()
        outcome = None
        for hop in range(max_redirects + 1):
            progress.url = url
            target, refusal = self._check_target(url, redirected=hop > 0)
            if refusal:
                return refusal
            progress.url = str(target)
            if progress.url in seen:
                return _Outcome(S.TOO_MANY_REDIRECTS, f"redirect loop back to {url}", http_status=outcome.http_status)
            if self.blocklists is not None and not site_file and (listed := self.blocklists.match_url(target)):
                where = f" (redirected to {progress.url[:200]})" if hop else ""
                return _Outcome(S.BLOCKLISTED, listed.message + where, blocklist=listed.list)
            if self.settings.consent.respect_robots and not site_file:
                rules = await self._robots_rules(target)
                if isinstance(rules, _Outcome):
                    return replace(rules)
                if not rules.allows(target.raw_path_qs):
                    return _Outcome(
                        S.ROBOTS_DISALLOWED, f"robots.txt of {target.raw_host} disallows {target.raw_path_qs}"
                    )
            if (
                self.settings.consent.respect_tdm_reservation
                and not site_file
                and (reserved := await self._tdm_reservation(target, S.TDM_RESERVED_FILE))
            ):
                return reserved
            outcome = await self._request(target, progress, read)
            if outcome.location is None:
                return outcome
            seen.add(progress.url)
            progress.redirects += 1
            try:  # RFC 3986 resolution on the strings as sent: nothing requoted
                url = urljoin(progress.url, outcome.location.strip())
            except ValueError:
                return _Outcome(
                    S.CONNECTION_ERROR, f"bad redirect Location {outcome.location!r}", http_status=outcome.http_status
                )
        return _Outcome(S.TOO_MANY_REDIRECTS, f"more than {max_redirects} redirects", http_status=outcome.http_status)

    def _check_target(self, url: str, redirected: bool) -> tuple[URL | None, _Outcome | None]:
        """The URL to send (request_url), or why it is refused before any connection (scheme, IP literal)."""
        where = f" (redirected to {url[:200]})" if redirected else ""
        try:
            target = request_url(url)
        except UnsupportedScheme as exc:
            return None, _Outcome(S.UNSUPPORTED_SCHEME, f"{exc}{where}")
        except ValueError as exc:
            return None, _Outcome(S.CONNECTION_ERROR, f"invalid URL: {exc}{where}")
        host = target.raw_host
        ip = literal_ip(host)
        if ip is not None and (reason := blocked_reason(ip, self._allowed)):
            named = host if host == str(ip) else f"{host} = {ip}"
            return None, _Outcome(S.BLOCKED_ADDRESS, f"{named} is {reason}{where}")
        return target, None

    async def _request(self, target: URL, progress: _Progress, read=read_response) -> _Outcome:
        """One hop, retried with exponential backoff and full jitter while the failure is transient."""
        s = self.settings
        for retry in range(s.retries + 1):
            progress.attempts += 1
            outcome = await self._attempt(target, read)
            if not outcome.transient or retry == s.retries:
                break
            wait = outcome.retry_after
            await asyncio.sleep(random.uniform(0, s.retry_backoff * 2**retry) if wait is None else wait)
        return outcome

    async def _attempt(self, target: URL, read) -> _Outcome:
        async with self._host_slot(target):
            try:
                async with self._session.get(target, allow_redirects=False) as resp:
                    outcome = await read(resp, self.settings)
                    if outcome.body is None and outcome.location is None:
                        resp.close()  # unread or cut-off body: drop the connection rather than drain it
                    return outcome
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status, in one place
                return outcome_for_exception(exc, target, self.settings)

    def _host_slot(self, url: URL) -> asyncio.Semaphore:
        """At most per_host requests in flight per host name (any port or scheme).

        The connector's limit_per_host also caps this, but waiting there would count against
        the request's timeouts; waiting here does not.
        """
        host = url.raw_host
        slot = self._host_slots.get(host)
        if slot is None:
            slot = self._host_slots[host] = asyncio.Semaphore(self.settings.per_host)
        return slot

    async def _robots_rules(self, url: URL) -> RobotsRules | _Outcome:
        """robots.txt rules of the URL's origin, fetched once per Fetcher (concurrent callers share the fetch),
        or the refusal that its fetch met."""
        origin = _origin(url)
        task = self._robots.get(origin)
        if task is None:
            task = self._robots[origin] = asyncio.ensure_future(self._fetch_robots(f"{url.origin()}/robots.txt"))
        return await asyncio.shield(task)  # one caller cancelled must not cancel the others' fetch

    async def _fetch_robots(self, robots_url: str) -> RobotsRules | _Outcome:
        # 4xx (401/403 included, Google's convention) means no robots.txt: allow all. So do 5xx and
        # unreachable hosts, deliberately unlike RFC 9309's "assume disallow": we fetch a few images,
        # not a crawl, a broken robots.txt is no opt-out, and a down host fails the image fetch anyway.
        # A slow or flaky host gets the retries an image gets, since its image may well come through.
        # A robots.txt that redirects to a refused address refuses the host's images: we will not ask
        # there, so we cannot know the host's rules.
        progress = _Progress()
        outcome = await self._follow(robots_url, progress, site_file=read_robots)
        if outcome.status == S.BLOCKED_ADDRESS and progress.redirects:
            return replace(outcome, message=f"{robots_url} redirects: {outcome.message}")
        if outcome.status != S.SUCCESS:
            return ALLOW_ALL
        return parse_robots(outcome.body.decode("utf-8", "replace"), self.settings.consent.user_agent_token)

    async def _tdm_rules(self, url: URL) -> TdmRules | _Outcome:
        """/.well-known/tdmrep.json rules of the URL's origin, fetched once per Fetcher (concurrent callers share
        the fetch; one that failed for a reason that may pass is fetched again later), or the refusal that its
        fetch met."""
        origin = _origin(url)
        task = self._tdmrep.get(origin)
        if task is None or (task.done() and self._tdmrep_again.get(origin, math.inf) <= time.monotonic()):
            self._tdmrep_again.pop(origin, None)
            fetching = self._fetch_tdmrep(f"{url.origin()}{TDMREP_PATH}", origin)
            task = self._tdmrep[origin] = asyncio.ensure_future(fetching)
        return await asyncio.shield(task)  # one caller cancelled must not cancel the others' fetch

    async def _fetch_tdmrep(self, tdmrep_url: str, origin: tuple[str, str, int]) -> TdmRules | _Outcome:
        # W3C TDMRep: "failure to provide access to such a representation implies that the origin server does
        # not implement this protocol". So 4xx (404, 410, 401/403 included), unresolvable or refused hosts, TLS
        # failures, an over-size body, bytes that are no JSON and JSON that is no array of rules all mean no
        # reservation, for the rest of the shard task; a malformed file never fails the fetch.
        # A failure that may pass (5xx, 429, a timeout, a dropped connection) gets the retries an image gets,
        # Retry-After honoured up to max_retry_after. If it still fails, the images that asked meanwhile are
        # not reserved (the spec's reading), but the failure is not taken for the origin's answer: the first
        # image of the origin that comes TDMREP_RETRY_SECONDS later (or after a longer Retry-After) asks again.
        # robots.txt differs on purpose (its 5xx allows all for the shard task): a robots.txt is about crawl
        # load, a reservation is the rightholder's consent.
        # A tdmrep.json that redirects to a refused address refuses the origin's images: we will not ask
        # there, so we cannot know whether the origin reserves them.
        progress = _Progress()
        outcome = await self._follow(tdmrep_url, progress, site_file=read_tdmrep)
        if outcome.status == S.BLOCKED_ADDRESS and progress.redirects:
            return replace(outcome, message=f"{tdmrep_url} redirects: {outcome.message}")
        if outcome.status != S.SUCCESS:
            if outcome.transient or outcome.http_status in TRANSIENT_HTTP:
                wait = max(TDMREP_RETRY_SECONDS, outcome.retry_after or 0.0)
                self._tdmrep_again[origin] = time.monotonic() + wait
            return NO_TDM_RULES
        return parse_tdmrep(outcome.body)

    async def _page_reservation(self, page_url: str) -> _Outcome | None:
        """Why the image found on `page_url` must not be requested: the tdmrep.json of the page's origin reserves
        the page (its rules matched against the page's path and query), or its fetch met a refusal. None: the
        page is not reserved, or is no http(s) URL (nothing to ask)."""
        try:
            page = request_url(page_url)
        except ValueError:  # UnsupportedScheme included
            return None
        return await self._tdm_reservation(page, S.TDM_RESERVED_PAGE_FILE, "the page ")

    async def _tdm_reservation(self, target: URL, status: S, what: str = "") -> _Outcome | None:
        """`status` when the tdmrep.json of `target`'s origin reserves its path and query, the refusal its fetch
        met, or None (not reserved)."""
        tdm = await self._tdm_rules(target)
        if isinstance(tdm, _Outcome):
            return replace(tdm)
        if rule := tdm.reservation(target.raw_path_qs):
            policy = f", {TDM_POLICY} {rule.policy[:200]}" if rule.policy else ""
            return _Outcome(
                status,
                f"tdmrep.json of {target.raw_host} reserves {what}{target.raw_path_qs[:200]}"
                f" (location {rule.location[:200]!r}{policy})",
            )
        return None
