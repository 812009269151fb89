"""OUT/takedown/log.jsonl: what each takedown removed, from which files, when and why; and the tombstones.

One JSON line per takedown that changed something (a takedown that finds nothing new to remove or to
tombstone writes nothing). The file is only ever appended to: each takedown publishes the old content plus
its line atomically (a temporary name, then a rename; an object store commits the whole object).

The log holds no URL and no sample id in clear text, since it must not keep what it removes: URLs are
recorded as the SHA-256 of the normalised URL, ids as the SHA-256 of the id's decimal (or key) text, images as
the SHA-256 of their sha256 hex. These hashes are also the tombstones: the download stage skips a tombstoned
URL and refuses a body whose sha256 is tombstoned (status taken_down), the embed and index stages drop a
tombstoned sample, so a later run does not bring a removed sample back, under its URL or under another.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.uri import atomic_write, exists, open_uri

DEFAULT_PORTS = {"http": 80, "https": 443}
TAKEN_DOWN = "taken down (OUT/takedown/log.jsonl)"  # the error_message of a tombstoned sample


def canonical_url(url: str) -> str:
    """A URL as takedowns compare it: scheme and host lowercased, the fragment and a default port dropped."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
        return url
    scheme = parts.scheme.lower()
    user = parts.netloc.rpartition("@")[0]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = (user + "@" if user else "") + host + (f":{port}" if port not in (None, DEFAULT_PORTS[scheme]) else "")
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def digest(text: str) -> str:
    """SHA-256 hex of a URL or an id's text, as the log stores it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Tombstones:
    """The hashed URLs, sample ids and image sha256s every takedown under OUT removed."""

    urls: frozenset[str] = field(default_factory=frozenset)
    ids: frozenset[str] = field(default_factory=frozenset)
    images: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.urls or self.ids or self.images)

    def holds(self, url: str | None, uid: int | str | None = None, sha256: str | None = None) -> bool:
        """Whether a sample (its URL as the pipeline normalised it, its SAMPLE_ID / uid, its image's sha256 hex)
        was taken down."""
        return (
            (url is not None and (digest(url) in self.urls or digest(canonical_url(url)) in self.urls))
            or (uid is not None and digest(str(uid)) in self.ids)
            or self.holds_image(sha256)
        )

    def holds_image(self, sha256: str | None) -> bool:
        """Whether an image (the sha256 hex of its original bytes) was taken down."""
        return sha256 is not None and digest(sha256) in self.images

    def mask(self, urls, uids=None, sha256s=None) -> np.ndarray:
        """holds() of each (url, uid, sha256), as a boolean array (uids, sha256s: None, or one per url)."""
        uids = [None] * len(urls) if uids is None else uids
        sha256s = [None] * len(urls) if sha256s is None else sha256s
        return np.array([self.holds(u, i, s) for u, i, s in zip(urls, uids, sha256s)], dtype=bool)


def log_file(out: str) -> str:
    return layout.takedown_log(layout.takedown_dir(out))


def read_log(out: str) -> list[dict]:
    uri = log_file(out)
    if not exists(uri):
        return []
    with open_uri(uri, "r") as f:
        return [json.loads(line) for line in f if line.strip()]


def tombstones(out: str) -> Tombstones:
    """The tombstones of OUT (empty when no takedown ran there)."""
    urls: set[str] = set()
    ids: set[str] = set()
    images: set[str] = set()
    for entry in [*read_log(out), *pending_entries(out)]:  # a takedown still pending keeps its samples out too
        urls.update(entry.get("url_sha256", ()))
        ids.update(entry.get("id_sha256", ()))
        images.update(entry.get("image_sha256", ()))
    return Tombstones(frozenset(urls), frozenset(ids), frozenset(images))


def pending_file(out: str) -> str:
    """OUT/takedown/pending.json: the journal of a takedown that has not finished (tasks/takedown/journal.py)."""
    return layout.takedown_dir(out).rstrip("/") + "/pending.json"


def pending_entries(out: str) -> list[dict]:
    uri = pending_file(out)
    if not exists(uri):
        return []
    with open_uri(uri, "r") as f:
        return [json.load(f)]


def append(out: str, entry: dict) -> dict:
    """Append one entry (stamped with the time) to OUT/takedown/log.jsonl atomically; returns it."""
    entry = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **entry}
    uri = log_file(out)
    old = b""
    if exists(uri):
        with open_uri(uri, "rb") as f:
            old = f.read()
        if old and not old.endswith(b"\n"):
            old += b"\n"
    with atomic_write(uri, "wb") as f:
        f.write(old + json.dumps(entry, sort_keys=True).encode() + b"\n")
    return entry
