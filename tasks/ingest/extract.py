"""Image-text pairs from one WAT or WARC file: streaming, memory-bounded, one reader for both kinds.

Each record is dispatched on its type: WAT `metadata` records (JSON) and WARC
`response` records (HTML). Both yield raw (src, alt) links that the same
normalisation turns into pairs, so a page gives the same pairs from either file.
Each pair also carries its page's Creative Commons license URL (null when none).

Speed: gzip is inflated with isal (faster than zlib) and the WARC stream is parsed by
fastwarc; WAT records that cannot hold an img link (requests, WARC metadata,
responses without images: most of a WAT) are skipped by a bytes search before
any JSON parsing; license links are only looked for on pages that mention
creativecommons.org. The figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType
from isal import igzip, isal_zlib

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import FileStatus, PairStatus
from clipcrawl.tasks.core.uri import open_uri
from clipcrawl.tasks.ingest.language import LanguageDetector
from clipcrawl.tasks.ingest.normalize import (
    is_license_url,
    pair_uid,
    plain_http_url,
    resolve_base,
    resolve_url,
    unescape_attribute,
)
from clipcrawl.tasks.ingest.warc import is_html, page_links_from_html
from clipcrawl.tasks.ingest.wat import (
    HTML_MARKER,
    IMG_MARKER,
    RESPONSE_MARKER,
    MalformedRecord,
    PageLinks,
    is_license_rel,
    page_links_from_wat,
)

SCHEMA = pa.schema(
    [
        ("uid", pa.uint64()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("page_url", pa.string()),
        ("language", pa.string()),
        ("license", pa.string()),
    ]
)

_READ_SIZE = 1 << 20
_GZIP_ERRORS = (EOFError, igzip.BadGzipFile, isal_zlib.error, zlib.error)


class ExtractError(Exception):
    """The file cannot be read as WARC at all (the message names it and says why)."""


@dataclass
class FileStats:
    """Counters of one file's extraction; `to_dict` is what lands in pairs/<name>.stats.json."""

    uri: str
    kind: str | None = None
    status: FileStatus = FileStatus.OK
    error: str | None = None
    records: int = 0
    responses: int = 0
    html_pages: int = 0
    img_links: int = 0
    with_alt: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    malformed_records: int = 0
    compressed_bytes: int = 0
    seconds: float = 0.0
    _kinds: set = field(default_factory=set, repr=False)

    def drop(self, status: PairStatus, n: int = 1) -> None:
        self.dropped[status.value] = self.dropped.get(status.value, 0) + n

    def saw(self, kind: str) -> None:
        if kind not in self._kinds:
            self._kinds.add(kind)
            self.kind = kind if len(self._kinds) == 1 else "mixed"

    def to_dict(self) -> dict:
        return {
            "uri": self.uri,
            "kind": self.kind,
            "status": FileStatus(self.status).value,
            "error": self.error,
            "records": self.records,
            "responses": self.responses,
            "html_pages": self.html_pages,
            "img_links": self.img_links,
            "with_alt": self.with_alt,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "malformed_records": self.malformed_records,
            "compressed_bytes": self.compressed_bytes,
            "seconds": round(self.seconds, 3),
        }


class _RawReader:
    """The compressed byte stream: counts bytes and marks errors of the source itself.

    An exception raised here (network, filesystem) must propagate as is, so the
    task can retry; `failed` tells it apart from a decompression or parse error.
    """

    def __init__(self, f: IO[bytes], prefix: bytes) -> None:
        self._f, self._prefix, self.pos, self.failed = f, prefix, 0, None

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            if size is not None and 0 <= size < len(data):
                data, self._prefix = data[:size], data[size:]
        else:
            try:
                data = self._f.read(size)
            except BaseException as exc:
                self.failed = exc
                raise
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()


class _PlainReader:
    """The decompressed WARC stream handed to fastwarc; knows whether it reached its end."""

    def __init__(self, inner, first: bytes) -> None:
        self._inner, self._first, self.pos, self.eof = inner, first, 0, False

    def read(self, size: int = -1) -> bytes:
        if self._first:
            data, self._first = self._first, b""
        else:
            data = self._inner.read(size if size and size > 0 else _READ_SIZE)
        if not data:
            self.eof = True
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._inner.close()


def _open_warc(uri: str) -> tuple[_RawReader, _PlainReader]:
    """Open `uri` and check it is a WARC (gzip members or plain); ExtractError when not."""
    f = open_uri(uri)
    magic = f.read(8)
    raw = _RawReader(f, magic)
    if magic[:2] == b"\x1f\x8b":
        inner = igzip.IGzipFile(fileobj=raw, mode="rb")
        try:
            first = inner.read(8)
        except _GZIP_ERRORS as exc:
            raise ExtractError(f"{uri}: not a WARC/WAT file (gzip header unreadable: {exc})") from exc
    else:
        inner, first = raw, raw.read(8)
    if not first.startswith(b"WARC/"):
        raw.close()
        what = "gzip of something else" if magic[:2] == b"\x1f\x8b" else "no gzip or WARC magic"
        raise ExtractError(f"{uri}: not a WARC/WAT file ({what}: starts with {first[:8]!r})")
    return raw, _PlainReader(inner, first)


class _PairBuilder:
    """Normalises raw links into pairs, counts drops, dedups, fills arrow batches."""

    def __init__(self, settings: ExtractSettings, stats: FileStats) -> None:
        self.settings, self.stats = settings, stats
        self.seen: set[int] = set()
        self.uids: list[int] = []
        self.urls: list[str] = []
        self.texts: list[str] = []
        self.pages: list[str] = []
        self.licenses: list[str | None] = []
        self.detector = LanguageDetector() if settings.detect_language else None

    def add(self, page: PageLinks) -> None:
        """Normalise one page's links; the loop is the per-link hot path."""
        drop = self.stats.drop
        min_len, max_len = self.settings.min_alt_length, self.settings.max_alt_length
        escaped = page.escaped
        base = None  # resolved on the first relative src only: most srcs are already absolute
        seen, uids, urls, texts = self.seen, self.uids, self.urls, self.texts
        with_alt = kept = 0
        for src, alt in page.links:
            if alt is None:
                drop(PairStatus.NO_ALT)
                continue
            with_alt += 1
            if escaped and "&" in alt:  # the test first: a call costs more than the search
                alt = unescape_attribute(alt)
            text = " ".join(alt.split())
            n = len(text)
            if n < min_len:
                drop(PairStatus.ALT_TOO_SHORT)
                continue
            if n > max_len:
                drop(PairStatus.ALT_TOO_LONG)
                continue
            if escaped and "&" in src:
                src = unescape_attribute(src)
            if plain_http_url(src):
                url = src
            else:
                if base is None:
                    base = _page_base(page)
                url, why = resolve_url(src, base)
                if url is None:
                    drop(why)
                    continue
            uid = pair_uid(url, text)
            if uid in seen:
                drop(PairStatus.DUPLICATE)
                continue
            seen.add(uid)
            uids.append(uid)
            urls.append(url)
            texts.append(text)
            kept += 1
        self.stats.img_links += len(page.links)
        self.stats.with_alt += with_alt
        if kept:
            self.pages.extend([page.page_url] * kept)
            license = None
            if page.license_links:
                license = page_license(page, base if base is not None else _page_base(page))
            self.licenses.extend([license] * kept)
            self.stats.kept += kept

    def __len__(self) -> int:
        return len(self.uids)

    def flush(self) -> pa.RecordBatch | None:
        if not self.uids:
            return None
        if self.detector is not None:
            language = pa.array(self.detector.detect_many(self.texts), pa.string())
        else:
            language = pa.nulls(len(self.uids), pa.string())
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(self.uids, pa.uint64()),
                pa.array(self.urls, pa.string()),
                pa.array(self.texts, pa.string()),
                pa.array(self.pages, pa.string()),
                language,
                pa.array(self.licenses, pa.string()),
            ],
            schema=SCHEMA,
        )
        self.uids, self.urls, self.texts, self.pages, self.licenses = [], [], [], [], []
        return batch


def _page_base(page: PageLinks):
    base_href = page.base_href
    if page.escaped and base_href:
        base_href = unescape_attribute(base_href)
    return resolve_base(page.page_url, base_href)


def page_license(page: PageLinks, base) -> str | None:
    """The page's Creative Commons license URL: its first rel=license link to one, else its first <a> to one."""
    found = None
    for href, rel in page.license_links:
        rel_license = is_license_rel(rel)
        if found is not None and not rel_license:
            continue
        if page.escaped and "&" in href:
            href = unescape_attribute(href)
        url, _ = resolve_url(href, base)
        if url is not None and is_license_url(url):
            if rel_license:
                return url
            found = url
    return found


def _http_status(record) -> int | None:
    try:
        return record.http_headers.status_code
    except Exception:  # noqa: BLE001 - unparsable status line: treated as not a page
        return None


def _page_of(record, stats: FileStats) -> PageLinks | None:
    """The raw links of one record, or None when it cannot hold a page's img links."""
    rtype = record.record_type
    if rtype == WarcRecordType.metadata:
        stats.saw("wat")
        payload = record.reader.read()
        if IMG_MARKER not in payload:
            if RESPONSE_MARKER in payload:
                stats.responses += 1
                if HTML_MARKER in payload:
                    stats.html_pages += 1
            return None
        page = page_links_from_wat(payload)
        if page is None:
            stats.responses += RESPONSE_MARKER in payload
            return None
        stats.responses += 1
        if page.status is not None and not 200 <= page.status < 300:
            return None
        stats.html_pages += 1
        return page
    if rtype == WarcRecordType.response:
        stats.saw("warc")
        if not record.is_http:
            return None
        stats.responses += 1
        status = _http_status(record)
        if status is None or not 200 <= status < 300:
            return None
        payload = record.reader.read()
        if not is_html(record.http_content_type, payload):
            return None
        stats.html_pages += 1
        page_url = record.headers.get("WARC-Target-URI")
        if not page_url:
            raise MalformedRecord("response without WARC-Target-URI")
        return page_links_from_html(page_url, status, payload, record.http_charset)
    return None


def iter_pairs(uri: str, settings: ExtractSettings, stats: FileStats) -> Iterator[pa.RecordBatch]:
    """Stream the pairs of one WAT/WARC file as arrow batches of <= settings.batch_rows rows.

    Fills `stats` as it goes. A corrupt or truncated file ends the stream with
    stats.status = partial (what was read is kept); a file that is not WARC raises
    ExtractError; errors of the source itself (network, missing file) propagate.
    """
    start = time.perf_counter()
    stats.status, stats.error = FileStatus.OK, None
    try:
        yield from _iter_pairs(uri, settings, stats)
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            stats.status = FileStatus.FAILED
            stats.error = stats.error or f"{uri}: {type(exc).__name__}: {exc}"
        raise
    finally:
        stats.seconds = time.perf_counter() - start


def _iter_pairs(uri: str, settings: ExtractSettings, stats: FileStats) -> Iterator[pa.RecordBatch]:
    raw, plain = _open_warc(uri)
    builder = _PairBuilder(settings, stats)
    batch_rows = settings.batch_rows
    records = ArchiveIterator(
        plain,
        record_types=WarcRecordType.any_type,
        parse_http=True,
        auto_decode="all",
        stream_detect=False,
    )
    try:
        while True:
            try:
                record = next(records)
            except StopIteration:
                if not plain.eof:
                    _partial(stats, uri, raw, plain, "WARC parsing stopped before the end (invalid record)")
                break
            except _GZIP_ERRORS as exc:
                _partial(stats, uri, raw, plain, f"truncated or corrupt gzip ({type(exc).__name__}: {exc})")
                break
            except OSError as exc:
                if raw.failed is not None:
                    raise
                _partial(stats, uri, raw, plain, f"unreadable WARC record ({exc})")
                break
            stats.records += 1
            try:
                page = _page_of(record, stats)
            except MalformedRecord:
                stats.malformed_records += 1
                continue
            except _GZIP_ERRORS as exc:  # raised while reading a record's payload
                _partial(stats, uri, raw, plain, f"truncated or corrupt gzip ({type(exc).__name__}: {exc})")
                break
            if page is not None and page.links:
                builder.add(page)
                if len(builder) >= batch_rows:
                    yield from _split(builder.flush(), batch_rows)
        batch = builder.flush()
        if batch is not None:
            yield from _split(batch, batch_rows)
    finally:
        stats.compressed_bytes = raw.pos
        raw.close()


def _split(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for offset in range(0, batch.num_rows, rows):
        yield batch.slice(offset, rows)


def _partial(stats: FileStats, uri: str, raw: _RawReader, plain: _PlainReader, reason: str) -> None:
    stats.status = FileStatus.PARTIAL
    stats.error = (
        f"{uri}: {reason}; kept what was read: {stats.records} records, "
        f"compressed offset ~{raw.pos}, uncompressed offset ~{plain.pos}"
    )
