"""Known-bad lists: exact hashes (MD5, SHA-256) of image bytes, perceptual hashes (Meta's PDQ), URLs and domains.

A list is configured as `KIND:URI` or `KIND:NAME=URI` (DownloadSettings.blocklists), KIND one of md5, sha256, pdq,
url, domain; URI any fsspec location (local path, file://, s3://, https://), `.gz`/`.bz2`/`.xz`/`.zst` (any case)
read compressed. NAME (default: the file's name) is what statuses and counts say: a match names its list, never the
image. Line formats (read as bytes; a UTF-8 BOM, blank lines and lines starting with `#` are skipped; a first line
that is no hash (a CSV header: `md5,filename`, `pdq256,quality`, `url`) is skipped; a bad line raises
BlocklistError naming the list, its URI and the line number):

- md5 / sha256: a hex digest first on the line (ASCII); the rest is ignored whatever its bytes, so
  `md5sum`/`sha256sum` output works.
- pdq: 64 hex characters (256 bits, ThreatExchange's order: the first bit is the most significant of the first
  hex digit) first on the line, then optionally `,quality` and any further CSV fields (pdq-photo-hasher's
  `hash,quality,filename`). An image matches by any of its 8 rotations and mirror images (pdq_hashes).
- url: one URL a line (UTF-8; the scheme may be left out), compared by url_key: the URL's host, port, path and
  query in a canonical form, so that other spellings of the same URL (host case, trailing dot, userinfo, http
  or https, default port, escapes of unreserved characters, dot segments) match; checked for every URL the
  downloader would request, redirects included. What is requested is never changed.
- domain: one host name a line (`*.` or a leading dot allowed); it blocks the host and all its subdomains.

Memory (measured, docs/download.md): exact digests live in one sorted fixed-width numpy array (16 B per MD5,
32 B per SHA-256, binary search); PDQ hashes in a multi-index hash table (32 B the hash + 64 B of bucket
positions); URLs and domains in Python sets (O(1)).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.core.uri import filesystem, name_of
from clipcrawl.tasks.download.optout import normalize_path

KINDS = ("md5", "sha256", "pdq", "url", "domain")
DIGEST_BYTES = {"md5": 16, "sha256": 32}
PDQ_BYTES = 32
PDQ_THRESHOLD = 31  # PDQ's recommended match distance (hashing.pdf)
PDQ_MIN_QUALITY = 50  # PDQ's advice: a hash of quality under 50 (a flat, featureless image) is not matched
CHUNK_BITS = 16  # multi-index hashing: 16 chunks of 16 bits
CHUNKS = PDQ_BYTES * 8 // CHUNK_BITS
MAX_FLIPS = 2  # probes per chunk within 2 bits: 137; over that (threshold >= 48) the index scans linearly
_SPEC = re.compile(r"(?P<kind>[a-z0-9]+):(?:(?P<name>[A-Za-z0-9_.\-]+)=)?(?P<uri>.+)", re.S)
_HEX = re.compile(rb"[0-9a-fA-F]+")
_FIELD = re.compile(rb"[\s,;]+")
_HEADER_WORDS = frozenset({b"url", b"urls", b"uri", b"domain", b"domains", b"host", b"hostname", b"hosts"})
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
_BOM = b"\xef\xbb\xbf"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# What fsspec's info() says of a file that changes when it is rewritten: local size, mtime and inode, an object
# store's ETag, generation or version, an HTTP server's ETag and Last-Modified.
_VERSION_FIELDS = (
    "size", "mtime", "ino", "ETag", "etag", "LastModified", "Last-Modified", "last_modified", "updated",
    "generation", "VersionId", "version_id", "md5Hash", "Content-MD5",
)  # fmt: skip


class BlocklistError(InputError):
    """A blocklist that cannot be used: a bad setting, an unreadable file or a bad line (named)."""


@dataclass(frozen=True)
class ListSpec:
    kind: str
    name: str
    uri: str


@dataclass(frozen=True)
class Match:
    """A sample found on a list: the list's name and kind, and for PDQ the Hamming distance. Never the image."""

    list: str
    kind: str
    distance: int | None = None

    @property
    def message(self) -> str:
        near = f", Hamming distance {self.distance}" if self.distance is not None else ""
        return f"on blocklist {self.list} ({self.kind}{near})"


def parse_spec(entry: str) -> ListSpec:
    """`KIND:URI` or `KIND:NAME=URI` -> ListSpec; BlocklistError says what is wrong."""
    m = _SPEC.fullmatch(entry.strip())
    if not m or m["kind"] not in KINDS:
        raise BlocklistError(f"blocklist {entry!r}: write KIND:URI or KIND:NAME=URI, KIND one of {', '.join(KINDS)}")
    uri = m["uri"].strip()
    name = m["name"] or name_of(uri)
    if not uri or not name:
        raise BlocklistError(f"blocklist {entry!r}: no file named")
    return ListSpec(m["kind"], name, uri)


def parse_specs(entries: Iterable[str]) -> list[ListSpec]:
    specs = [parse_spec(e) for e in entries]
    names = [s.name for s in specs]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise BlocklistError(f"two blocklists are named {dup[0]!r}: give one a name (KIND:NAME=URI)")
    return specs


def _filesystem(spec: ListSpec):
    try:
        return filesystem(spec.uri)
    except Exception as exc:  # noqa: BLE001 - an unknown protocol, a missing fsspec driver: name the list
        raise BlocklistError(f"blocklist {spec.name} ({spec.uri}): cannot open it: {exc}") from None


def list_version(spec: ListSpec) -> tuple:
    """What fsspec says of the list's file that changes when it is rewritten (size, mtime, ETag, ...)."""
    fs, path = _filesystem(spec)
    try:
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001 - missing, refused, unreachable: whatever the filesystem says
        raise BlocklistError(f"blocklist {spec.name} ({spec.uri}): cannot read it: {exc}") from None
    return (spec.uri, *(f"{k}={info[k]}" for k in _VERSION_FIELDS if info.get(k) is not None))


def _compression(path: str) -> str | None:
    lower = path.lower()
    return next((c for s, c in _COMPRESSION.items() if lower.endswith(s)), None)


def _lines(spec: ListSpec) -> Iterator[tuple[int, bytes]]:
    """(line number, stripped line) of the list's meaningful lines, as bytes: each kind decodes what it reads."""
    fs, path = _filesystem(spec)
    try:
        with fs.open(path, "rb", compression=_compression(path)) as f:
            for number, line in enumerate(f, 1):
                line = (line.removeprefix(_BOM) if number == 1 else line).strip()
                if line and not line.startswith(b"#"):
                    yield number, line
    except Exception as exc:  # noqa: BLE001 - unreadable, corrupt compression, a network failure: name the list
        raise BlocklistError(f"blocklist {spec.name} ({spec.uri}): cannot read it: {exc}") from exc


def _entries(spec: ListSpec) -> Iterator[tuple[int, bytes]]:
    """_lines less a header: a first line that is no hash (`md5,filename`, `hash,quality`, `url`)."""
    for i, (number, line) in enumerate(_lines(spec)):
        if i == 0 and _is_header(spec.kind, line):
            continue
        yield number, line


def _is_header(kind: str, line: bytes) -> bool:
    first = _FIELD.split(line, 1)[0]
    if kind in ("url", "domain"):
        return first.lower().strip(b"\"'") in _HEADER_WORDS
    return not _HEX.fullmatch(first) and re.fullmatch(rb"[A-Za-z0-9_\-\s,;\"']+", line) is not None


def _bad(spec: ListSpec, number: int, line: bytes, why: str) -> BlocklistError:
    text = line[:80].decode("utf-8", "replace")
    return BlocklistError(f"blocklist {spec.name} ({spec.uri}) line {number}: {why}: {text!r}")


def _hex_field(spec: ListSpec, number: int, line: bytes, width: int) -> bytes:
    value = _FIELD.split(line, 1)[0]
    if len(value) != 2 * width or not _HEX.fullmatch(value):
        raise _bad(spec, number, line, f"not a {spec.kind} hash ({2 * width} hex characters)")
    return bytes.fromhex(value.decode("ascii"))


# ------------------------------------------------------------------------------ exact digests


class DigestSet:
    """A set of fixed-width digests: one sorted numpy array of width-byte strings, searched by bisection."""

    def __init__(self, digests: bytes | bytearray, width: int):
        self.width = width
        self._array = np.unique(np.frombuffer(bytes(digests), dtype=f"S{width}"))

    def __len__(self) -> int:
        return len(self._array)

    @property
    def nbytes(self) -> int:
        return self._array.nbytes

    def __contains__(self, digest: bytes) -> bool:
        if len(digest) != self.width or not len(self._array):
            return False
        key = np.array(digest, dtype=f"S{self.width}")
        i = int(np.searchsorted(self._array, key))
        return i < len(self._array) and self._array[i] == key


def load_digests(spec: ListSpec) -> DigestSet:
    width = DIGEST_BYTES[spec.kind]
    out = bytearray()
    for number, line in _entries(spec):
        out += _hex_field(spec, number, line, width)
    return DigestSet(out, width)


# ---------------------------------------------------------------------------------- PDQ index


def _masks(bits: int, flips: int) -> np.ndarray:
    """Every `bits`-bit value of at most `flips` set bits (the XOR masks of the probes), 0 first."""
    values = np.arange(1 << bits, dtype=np.uint32)
    ones = np.bitwise_count(values)
    return np.concatenate([values[ones == k] for k in range(flips + 1)])


_MASKS = [_masks(CHUNK_BITS, f) for f in range(MAX_FLIPS + 1)]


class PdqIndex:
    """PDQ hashes searched within a Hamming distance by multi-index hashing (Norouzi et al.).

    The 256 bits are cut into 16 chunks of 16 bits, each with its own table (hash positions sorted by the chunk's
    value, and the offset of each of the 65,536 values). Two hashes within distance d differ by at most d // 16
    bits in one of their chunks (pigeonhole), so probing each chunk's values within d // 16 bits of the query's
    finds every hash within d; the candidates are then checked on their full 256 bits. Exact, not approximate:
    tests compare it with a linear scan.
    """

    def __init__(self, hashes: np.ndarray, threshold: int = PDQ_THRESHOLD):
        if threshold < 0:
            raise ValueError(f"PDQ threshold must be >= 0, got {threshold}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, PDQ_BYTES)
        self.threshold = threshold
        self.flips = threshold // CHUNK_BITS
        n = len(self.hashes)
        if self.flips <= MAX_FLIPS and n:
            chunks = self.hashes.view(">u2")  # (n, 16) chunk values
            self._order = np.empty((CHUNKS, n), dtype=np.uint32)
            self._offsets = np.zeros((CHUNKS, (1 << CHUNK_BITS) + 1), dtype=np.uint32)
            for c in range(CHUNKS):
                self._order[c] = np.argsort(chunks[:, c], kind="stable")
                np.cumsum(np.bincount(chunks[:, c], minlength=1 << CHUNK_BITS), out=self._offsets[c, 1:])
        else:
            self._order = self._offsets = None

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + (self._order.nbytes + self._offsets.nbytes if self._order is not None else 0)

    def _distances(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        words = self.hashes.view(np.uint64)  # (n, 4): popcounts of 64-bit words
        return np.bitwise_count(words[rows] ^ query.view(np.uint64)).sum(axis=1, dtype=np.int64)

    def nearest(self, query: bytes) -> tuple[int, int] | None:
        """(row, distance) of the closest hash within the threshold, or None."""
        q = np.frombuffer(query, dtype=np.uint8)
        if len(q) != PDQ_BYTES:
            raise ValueError(f"a PDQ hash is {PDQ_BYTES} bytes, got {len(q)}")
        if not len(self.hashes):
            return None
        if self._order is None:
            rows = np.arange(len(self.hashes))
        else:
            keys = q.view(">u2").astype(np.int64)[:, None] ^ _MASKS[self.flips][None, :]  # (16, probes)
            chunk = np.broadcast_to(np.arange(CHUNKS)[:, None], keys.shape)
            starts = self._offsets[chunk, keys].ravel().astype(np.int64)
            ends = self._offsets[chunk, keys + 1].ravel().astype(np.int64)
            lengths = ends - starts
            total = int(lengths.sum())
            if not total:
                return None
            # ragged gather: positions starts[i] .. ends[i] - 1 of table chunk[i], for every probe i
            first = np.cumsum(lengths) - lengths
            positions = np.arange(total) - np.repeat(first - starts, lengths)
            rows = self._order[np.repeat(chunk.ravel(), lengths), positions]  # a hash found twice is checked twice
        return self._best(q, rows)

    def brute_nearest(self, query: bytes) -> tuple[int, int] | None:
        """nearest() by a linear scan (the reference the tests hold the index to)."""
        if not len(self.hashes):
            return None
        return self._best(np.frombuffer(query, dtype=np.uint8), np.arange(len(self.hashes)))

    def _best(self, q: np.ndarray, rows: np.ndarray) -> tuple[int, int] | None:
        distances = self._distances(q, rows)
        i = int(np.argmin(distances))
        return (int(rows[i]), int(distances[i])) if distances[i] <= self.threshold else None


def pdq_hash(rgb: np.ndarray) -> tuple[bytes, int]:
    """PDQ (Meta's reference, via pdqhash) of an RGB uint8 array of shape (height, width, 3): 32 bytes, quality."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes(), int(quality)


def pdq_hashes(rgb: np.ndarray) -> tuple[list[bytes], int]:
    """The PDQ hashes of the image and of its 7 other rotations and mirror images (one pass: pdqhash computes the
    8 from one DCT), and their quality. The first is pdq_hash(rgb)."""
    import pdqhash

    hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(rgb, dtype=np.uint8))
    return [np.packbits(np.asarray(h, dtype=np.uint8)).tobytes() for h in hashes], int(quality)


def load_pdq(spec: ListSpec, threshold: int) -> PdqIndex:
    out = bytearray()
    for number, line in _entries(spec):
        out += _hex_field(spec, number, line, PDQ_BYTES)
    return PdqIndex(np.frombuffer(bytes(out), dtype=np.uint8), threshold)


# ------------------------------------------------------------------------------ URLs, domains


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4: `/a/./b/../c` -> `/a/c`. Empty segments stay (`//` is another path on most servers)."""
    if "." not in path:
        return path
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    last = path.rsplit("/", 1)[-1]
    return "/" + "/".join(out) + ("/" if last in (".", "..") and out else "")


def url_parts(url) -> tuple[str, str]:
    """(host, key) of a URL (a str, scheme optional, or a yarl URL): the key compares spellings of one URL alike.

    From the URL the downloader would request (fetch.request_url: host lower-case, IDN in punycode, default port
    and fragment dropped): the host without a trailing dot, the port unless 80 or 443 (the scheme is left out, so
    both defaults are: `bad.test:443/a` and `https://bad.test/a` are one key), the path and query with
    escapes of unreserved characters decoded and the others' hex upper-cased (optout.normalize_path, RFC 9309's
    comparison), and dot segments removed. The scheme (http and https alike) and userinfo are left out.
    ValueError: not a URL the downloader would request.
    """
    from clipcrawl.tasks.download.fetch import request_url  # fetch imports this module lazily, not at import

    text = str(url).strip()
    if not _SCHEME.match(text):
        text = "http://" + text.removeprefix("//")
    requested = urlsplit(str(request_url(text)))
    host = requested.netloc.rpartition("@")[2]
    port = ""
    if not host.endswith("]") and ":" in host:
        host, _, port = host.rpartition(":")
        port = "" if port in ("80", "443") else ":" + port
    host = host.rstrip(".")
    query = "?" + normalize_path(requested.query) if requested.query else ""
    return host.strip("[]"), f"{host}{port}{remove_dot_segments(normalize_path(requested.path))}{query}"


def url_key(url) -> str:
    return url_parts(url)[1]


def normal_domain(domain: str) -> str:
    from clipcrawl.tasks.download.fetch import request_host

    domain = domain.strip().removeprefix("*.").strip(".")
    if not domain or any(c in domain for c in "/:@ \t"):
        raise ValueError("not a host name")
    return request_host(domain)


def parent_domains(host: str) -> Iterator[str]:
    """host, then each parent: a.b.c -> a.b.c, b.c, c."""
    while host:
        yield host
        host = host.partition(".")[2]


def load_strings(spec: ListSpec) -> frozenset[str]:
    normal = url_key if spec.kind == "url" else normal_domain
    out = set()
    for number, line in _entries(spec):
        try:
            out.add(normal(line.decode("utf-8")))
        except ValueError as exc:  # UnicodeDecodeError included
            raise _bad(spec, number, line, f"not a {spec.kind} ({exc})") from None
    return frozenset(out)


# ---------------------------------------------------------------------------------- all lists


@dataclass
class Blocklists:
    """The configured lists, loaded; match_* return the first list that holds the sample, or None."""

    digests: dict[str, list[tuple[str, DigestSet]]] = field(default_factory=lambda: {"md5": [], "sha256": []})
    pdq: list[tuple[str, PdqIndex]] = field(default_factory=list)
    urls: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    domains: list[tuple[str, frozenset[str]]] = field(default_factory=list)

    @property
    def wants_pdq(self) -> bool:
        return bool(self.pdq)

    def match_url(self, url) -> Match | None:
        """`url`: as requested (a yarl URL from request_url) or a str; compared by its url_key."""
        if not (self.urls or self.domains):
            return None
        try:
            host, key = url_parts(url)
        except ValueError:
            return None
        for name, urls in self.urls:
            if key in urls:
                return Match(name, "url")
        for name, domains in self.domains:
            if any(d in domains for d in parent_domains(host)):
                return Match(name, "domain")
        return None

    def match_bytes(self, body: bytes, sha256: bytes) -> Match | None:
        """`sha256`: the body's digest (computed once by the caller); MD5 only when an MD5 list is configured."""
        for name, digests in self.digests["sha256"]:
            if sha256 in digests:
                return Match(name, "sha256")
        if self.digests["md5"]:
            md5 = hashlib.md5(body, usedforsecurity=False).digest()
            for name, digests in self.digests["md5"]:
                if md5 in digests:
                    return Match(name, "md5")
        return None

    def match_pdq(self, rgb: np.ndarray) -> Match | None:
        """The PDQ hashes of a decoded RGB image, as stored (EXIF orientation not applied, as PDQ's own tools
        hash files) and its 7 other rotations and mirror images, against the PDQ lists: a rotated or mirrored
        copy matches too. A featureless image (quality < 50) never matches."""
        if not self.pdq:
            return None
        digests, quality = pdq_hashes(rgb)
        if quality < PDQ_MIN_QUALITY:
            return None
        for name, index in self.pdq:
            hits = [hit[1] for d in digests if (hit := index.nearest(d)) is not None]
            if hits:
                return Match(name, "pdq", min(hits))
        return None

    def sizes(self) -> dict[str, int]:
        out = {name: len(s) for kind in self.digests.values() for name, s in kind}
        out.update({name: len(s) for name, s in self.pdq + self.urls + self.domains})
        return out


def load_blocklists_uncached(entries: Sequence[str], pdq_threshold: int = PDQ_THRESHOLD) -> Blocklists:
    lists = Blocklists()
    for spec in parse_specs(entries):
        if spec.kind in DIGEST_BYTES:
            lists.digests[spec.kind].append((spec.name, load_digests(spec)))
        elif spec.kind == "pdq":
            lists.pdq.append((spec.name, load_pdq(spec, pdq_threshold)))
        elif spec.kind == "url":
            lists.urls.append((spec.name, load_strings(spec)))
        else:
            lists.domains.append((spec.name, load_strings(spec)))
    return lists


_LOCK = threading.Lock()
_CACHE: dict[tuple, Blocklists] = {}
_CACHE_SIZE = 2


def load_blocklists(entries: Sequence[str], pdq_threshold: int = PDQ_THRESHOLD) -> Blocklists | None:
    """The lists of `entries`, None when none. Loaded once per process and version of the lists: the cache is
    keyed on the entries, the threshold and each list's list_version (size, mtime, ETag: asked of its
    filesystem at every call), so a list rewritten under the same URI is read again.

    A worker keeps them for the shards it downloads; concurrent tasks of one worker wait for one load."""
    if not entries:
        return None
    key = (tuple(entries), pdq_threshold, tuple(list_version(spec) for spec in parse_specs(entries)))
    with _LOCK:
        lists = _CACHE.get(key)
        if lists is None:
            lists = load_blocklists_uncached(entries, pdq_threshold)
            while len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = lists
    return lists


def for_settings(settings) -> Blocklists | None:
    """The lists a DownloadSettings names (cached per process and version of the lists: a shard task asks once)."""
    return load_blocklists(settings.blocklists, settings.pdq_threshold)
