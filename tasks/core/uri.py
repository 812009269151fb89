"""One URI helper: every location is an fsspec URI (local path, file://, s3://, https:// for reading)."""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import fsspec


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for `uri`.

    Remote filesystems do not cache directory listings: other processes (Dask workers, other runs) add
    and replace objects, and a listing cached in a long-lived worker would hide them from listdir, make
    exists() answer False, and give a replaced object its old size when it is opened.
    """
    from fsspec.core import url_to_fs  # imported at first use: a script that reads a file pays it once, not at start

    return url_to_fs(uri) if is_local(uri) else url_to_fs(uri, use_listings_cache=False)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(uri, *parts)


def name_of(uri: str) -> str:
    """The last path component of a URI, without query."""
    return posixpath.basename(uri.split("?", 1)[0].rstrip("/"))


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def open_uri(uri: str, mode: str = "rb", **kwargs) -> IO:
    """Open a URI for streaming (no compression handling: callers decide). A plain local path is opened by
    Python itself: the file object fsspec would wrap around it costs a Python call per read."""
    if ":" not in uri and not uri.startswith("~") and not kwargs:  # file:/x, a::chain and ~ stay fsspec's
        return open(uri, mode)  # noqa: SIM115 - the caller closes it, as it closes fsspec's
    fs, path = filesystem(uri)
    return fs.open(path, mode, **kwargs)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def listdir(uri: str, suffix: str = "") -> list[str]:
    """Sorted URIs of the files directly under `uri` ending with `suffix`."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffix))
    return [fs.unstrip_protocol(p) if "://" in uri else p for p in names]


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "wb") -> Iterator[IO]:
    """Write `uri` so that readers see either nothing or the whole file.

    Local files are written under a temporary name in the same directory and renamed;
    object stores (s3) commit an object only when its upload completes, so they are
    written in place. A failure removes the temporary file (object stores: discards the
    upload, so no partial object is committed) and re-raises.
    """
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if "://" in uri else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not is_local(uri):
        with _remote_write(fs, path, mode) as f:
            yield f
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _remote_write(fs: fsspec.AbstractFileSystem, path: str, mode: str) -> Iterator[IO]:
    """An object written in place, committed when the block ends normally; an exception discards it.

    Leaving fsspec's own `with fs.open(...)` block always closes the file, and closing commits the upload
    (a multipart upload is completed with the parts sent so far): a failed write would publish a truncated
    object. Here the upload is discarded instead (s3: the multipart upload is aborted)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    raw = fs.open(path, "wb")
    f = raw if mode == "wb" else io.TextIOWrapper(raw, encoding="utf-8")
    try:
        yield f
        f.close()  # commits
    except BaseException:
        with contextlib.suppress(Exception):
            raw.discard()
        with contextlib.suppress(Exception):
            raw.closed = True  # never committed, also not when garbage-collected
        raise


def write_json(uri: str, obj) -> None:
    """Publish a JSON document atomically."""
    import json

    with atomic_write(uri, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


def read_json(uri: str):
    import json

    with open_uri(uri, "r") as f:
        return json.load(f)
