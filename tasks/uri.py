"""One URI helper: every location is an fsspec URI (local path, file://, s3://, https:// for reading)."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from typing import IO, Iterator

import fsspec
from fsspec.core import url_to_fs


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for `uri`."""
    return url_to_fs(uri)


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
    """Open a URI for streaming (no compression handling: callers decide)."""
    return fsspec.open(uri, mode, **kwargs).open()


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
    written in place. A failure removes the temporary file and re-raises.
    """
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if "://" in uri else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not is_local(uri):
        with fs.open(path, mode) as f:
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


def write_json(uri: str, obj) -> None:
    """Publish a JSON document atomically."""
    import json

    with atomic_write(uri, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


def read_json(uri: str):
    import json

    with open_uri(uri, "r") as f:
        return json.load(f)
