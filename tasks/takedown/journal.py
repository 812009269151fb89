"""OUT/takedown/pending.json and OUT/takedown/lock: a takedown that stops half-way is finished by the next one.

Before it rewrites anything, a takedown publishes its journal: what it matched as SHA-256 hashes (URLs, uids,
image sha256s, keys; never the text), its log entry's tombstones, and the result files it deletes. Each
rewrite step is idempotent (tasks/takedown/rewrite.py), so a takedown run over a pending journal resolves the
hashes against the samples still in OUT, runs every step again, writes the log entry and drops the journal.
Until then the journal's tombstones hold for later runs as the log's do.

One takedown at a time: an exclusive lock on OUT/takedown/lock (fcntl on a local OUT, waited for; on an
object store a lock object created exclusively where the filesystem can, else the deployment's concurrency
limit of 1 is the guard).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import atomic_write, exists, filesystem, is_local, open_uri
from clipcrawl.tasks.takedown.log import pending_file
from clipcrawl.tasks.takedown.match import Hashed, Matched

log = logging.getLogger(__name__)
LOCK_WAIT_SECONDS = 600.0  # a takedown waits this long for another to finish, then fails saying so


def lock_file(out: str) -> str:
    return layout.takedown_dir(out).rstrip("/") + "/lock"


@contextlib.contextmanager
def locked(out: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold OUT's takedown lock for the block."""
    uri = lock_file(out)
    if is_local(uri):
        import fcntl

        path = uri.removeprefix("file://")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise InputError(f"takedown: another takedown holds {path} (waited {wait:.0f} s)") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "xb") as f:
            f.write(uuid.uuid4().hex.encode())
    except FileExistsError:
        raise InputError(f"takedown: {uri} exists: another takedown runs (or one died: delete the file)") from None
    except (ValueError, NotImplementedError, OSError) as exc:  # no exclusive create on this filesystem
        log.warning("takedown: no lock on %s (%s): the deployment's concurrency limit of 1 is the guard", uri, exc)
        yield
        return
    try:
        yield
    finally:
        fs.rm(path)


def begin(out: str, matched: Matched, entry: dict, results: list[str]) -> dict:
    """Publish the journal of a takedown about to rewrite OUT: its run id, the hashed match, the log entry's
    tombstones and counts, the result files to delete."""
    hashed = Hashed.of(matched)
    journal = {
        "run": uuid.uuid4().hex,
        "matched_sha256": {name: sorted(getattr(hashed, name)) for name in ("urls", "uids", "sha256", "keys")},
        "entry": entry,
        "results": results,
        # the log's field names, so that log.tombstones() reads a pending journal as it reads the log
        **{k: entry[k] for k in ("url_sha256", "id_sha256", "image_sha256")},
    }
    with atomic_write(pending_file(out), "w") as f:
        json.dump(journal, f, sort_keys=True)
    return journal


def pending(out: str) -> dict | None:
    """The journal of an unfinished takedown of OUT, if any."""
    uri = pending_file(out)
    if not exists(uri):
        return None
    with open_uri(uri, "r") as f:
        return json.load(f)


def hashed(journal: dict) -> Hashed:
    found = journal["matched_sha256"]
    return Hashed(*(frozenset(found[name]) for name in ("urls", "uids", "sha256", "keys")))


def end(out: str) -> None:
    """Drop the journal (its entry is in the log now)."""
    fs, path = filesystem(pending_file(out))
    if fs.exists(path):
        fs.rm(path)
