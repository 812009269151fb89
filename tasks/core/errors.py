"""Which failures are worth a retry: network trouble and overloaded servers, not bad data."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from typing import TypeVar

# HTTP statuses a later request may not get: request timeout, too early, rate-limited, server errors
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_S3_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


def _http_status(exc: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


E = TypeVar("E", bound=BaseException)


def cause_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception, then what it was raised from or while handling (__cause__, else __context__), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def find_cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of type `kind` in exc's cause chain, if any."""
    return next((e for e in cause_chain(exc) if isinstance(e, kind)), None)


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt may not see: timeouts, resets, 5xx, 429, S3 SlowDown."""
    for link in cause_chain(exc):
        if isinstance(link, InputError):  # wrong input stays wrong, whatever error it was found under
            return False
        if isinstance(link, (TimeoutError, asyncio.TimeoutError, socket.timeout, ConnectionError, socket.gaierror)):
            return True
        if isinstance(link, OSError) and link.errno in TRANSIENT_ERRNOS:
            return True
        if type(link).__name__ in {
            "ClientConnectionError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ClientPayloadError",
            "ServerTimeoutError",
            "EndpointConnectionError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
        }:
            return True
        code = getattr(link, "response", {}) if isinstance(getattr(link, "response", None), dict) else {}
        if code.get("Error", {}).get("Code") in TRANSIENT_S3_CODES:
            return True
        status = _http_status(link)
        if status in TRANSIENT_HTTP:
            return True
        if any(word in str(link) for word in ("503 Slow Down", "SlowDown", "Service Unavailable")):
            return True
    return False


class InputError(ValueError):
    """A stage was given the wrong input: it holds nothing to work on, or lacks a column the stage reads.

    No retry can fix that, so it is never transient: the run fails at once with this one-line reason."""


def pick_columns(uri: str, found: list[str], *wanted: str | tuple[str, ...]) -> list[str]:
    """The column to read for each wanted one (a tuple names alternatives: the first that `found` has).

    A file that lacks one raises InputError naming the file, the columns wanted and those it has."""
    picked, missing = [], []
    for want in wanted:
        names = (want,) if isinstance(want, str) else want
        name = next((n for n in names if n in found), None)
        (picked if name else missing).append(name or "/".join(names))
    if missing:
        needs = ", ".join(w if isinstance(w, str) else "/".join(w) for w in wanted)
        raise InputError(
            f"{uri}: missing column {', '.join(missing)} (needs {needs}; has {', '.join(found) or 'no columns'})"
        )
    return picked
