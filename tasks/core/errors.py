"""Which failures are worth a retry: network trouble and overloaded servers, not bad data."""

from __future__ import annotations

import asyncio
import errno
import socket

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
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


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt may not see: timeouts, resets, 5xx, 429, S3 SlowDown."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError, socket.timeout, ConnectionError, socket.gaierror)):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        if type(exc).__name__ in {
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
        code = getattr(exc, "response", {}) if isinstance(getattr(exc, "response", None), dict) else {}
        if code.get("Error", {}).get("Code") in TRANSIENT_S3_CODES:
            return True
        status = _http_status(exc)
        if status in TRANSIENT_HTTP:
            return True
        if any(word in str(exc) for word in ("503 Slow Down", "SlowDown", "Service Unavailable")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
