"""Image-text pairs from one WAT or WARC file: streaming, memory-bounded, one reader for both kinds.

Each record is dispatched on its type: WAT `metadata` records (JSON) and WARC
`response` records (HTML). Both yield raw (src, alt) links that the same
normalisation turns into pairs, so a page gives the same pairs from either file.
Each pair also carries its page's Creative Commons license URL (null when none). A page that opts its
images out (robots meta tag, X-Robots-Tag) or reserves TDM rights (W3C TDMRep) gives no pairs: its links
that pass the alt-text and URL filters are dropped with the reason (page_optout.py).

Records come from container.py: a gzipped WAT file's regular members (one metadata record of JSON each, as
Common Crawl writes them) are read by the fast path in C (`_watgz.c`: libdeflate, and the record sorted as
`_page_of` sorts it, before any Python object is made); anything else, and plain files, by the container's
stream (gzip members inflated with isal, parsed by fastwarc, damage skipped), which hands back to the fast path
at the next regular member. Each record's payload is read up to `max_record_bytes`, so memory is
bounded whatever a record holds. Every record counts once: an HTML page, skipped for a
RecordStatus reason, or malformed (anything that stops reading it stops only it).

Speed: WAT records that cannot hold an img link (requests, WARC metadata, responses
without images: most of a WAT) are skipped by a bytes search before any JSON parsing;
license links are only looked for on pages that mention creativecommons.org. The WAT
JSON (wat.py), the per-link loop (`_PairBuilder.add`) and language id are C extensions
(`_watjson.c`, `_pairs.c`, `_lid.c`), as is the fast path (`_watgz.c`), each tested against the code it
stands for. The
figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from fastwarc.warc import WarcRecordType

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import FileStatus, PairStatus, RecordStatus
from clipcrawl.tasks.core.uri import open_uri
from clipcrawl.tasks.ingest import _pairs, _watgz
from clipcrawl.tasks.ingest.container import NotWarc, Parts, records
from clipcrawl.tasks.ingest.language import LanguageDetector
from clipcrawl.tasks.ingest.normalize import (
    _Base,
    is_license_url,
    normalize_text,
    resolve_base,
    resolve_url,
    unescape_attribute,
    xxh3_64,
)
from clipcrawl.tasks.ingest.page_optout import PageRules
from clipcrawl.tasks.ingest.warc import cap_tags, is_html, page_links_from_html
from clipcrawl.tasks.ingest.wat import (
    HTML_MARKER,
    IMG_MARKER,
    MAX_JSON_VALUES,
    MAX_PAGE_METAS,
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
        ("caption", pa.string()),
        ("page_url", pa.string()),
        ("language", pa.string()),
        ("license", pa.string()),
    ]
)


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
    skipped_records: dict[str, int] = field(default_factory=dict)  # {RecordStatus: n}: records with no page
    malformed_records: int = 0
    truncated_pages: int = 0  # HTML over max_record_bytes, read up to it
    malformed_first: str | None = None  # which record was the first malformed one, and why
    compressed_bytes: int = 0
    seconds: float = 0.0
    _kinds: set = field(default_factory=set, repr=False)

    def drop(self, status: PairStatus, n: int = 1) -> None:
        key = status.value  # an enum's .value is a property: read once
        self.dropped[key] = self.dropped.get(key, 0) + n

    def skip(self, status: RecordStatus, n: int = 1) -> None:
        key = status.value
        self.skipped_records[key] = self.skipped_records.get(key, 0) + n

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
            "skipped_records": dict(sorted(self.skipped_records.items())),
            "malformed_records": self.malformed_records,
            "malformed_first": self.malformed_first,
            "truncated_pages": self.truncated_pages,
            "compressed_bytes": self.compressed_bytes,
            "seconds": round(self.seconds, 3),
        }


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
        self.rules = PageRules.of(settings)
        self._config = (
            settings.min_alt_length,
            settings.max_alt_length,
            unescape_attribute,
            normalize_text,
            resolve_url,
            xxh3_64,
            PairStatus.NO_ALT.value,
            PairStatus.ALT_TOO_SHORT.value,
            PairStatus.ALT_TOO_LONG.value,
            PairStatus.DUPLICATE.value,
            PairStatus.UNSUPPORTED_SCHEME.value,
        )

    def add(self, page: PageLinks) -> None:
        """Normalise one page's links into pairs (the per-link loop is _pairs.c's)."""
        # the page's opt-out or TDM reservation, if any: drops the links that would become pairs
        withheld = self.rules.verdict(page) if page.metas or page.headers else None
        base = []  # the page's base, resolved on the first relative src only: most srcs are already absolute

        def page_base() -> _Base:
            if not base:
                base.append(_page_base(page))
            return base[0]

        with_alt, kept = _pairs.add(
            page.links,
            page.escaped,
            page_base,
            None if withheld is None else withheld.value,
            self.seen,
            self.uids,
            self.urls,
            self.texts,
            self.stats.dropped,
            self._config,
        )
        self.stats.img_links += len(page.links)
        self.stats.with_alt += with_alt
        if kept:
            self.pages.extend([page.page_url] * kept)
            license = None
            if page.license_links:
                license = page_license(page, page_base())
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


def _page_base(page: PageLinks) -> _Base:
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


def _http_status(record) -> int:
    status = record.http_headers.status_code if record.http_headers is not None else None
    if status is None:
        raise MalformedRecord("unreadable HTTP status line")
    return status


def _read_capped(record, cap: int) -> tuple[bytes, bool]:
    """At most `cap` bytes of the record's payload, and whether there was more (never held in memory)."""
    payload = record.reader.read(cap + 1)
    return (payload[:cap], True) if len(payload) > cap else (payload, False)


def _wat_page(payload: bytes, stats: FileStats, rules: PageRules) -> PageLinks | None:
    """The raw links of a WAT metadata record's payload that holds an img link (and is not too large)."""
    page = page_links_from_wat(payload, rules.meta_names, rules.header_names)
    if page is None:
        stats.responses += RESPONSE_MARKER in payload
        stats.skip(RecordStatus.NOT_A_PAGE)
        return None
    stats.responses += 1
    if page.status is not None and not 200 <= page.status < 300:
        stats.skip(RecordStatus.HTTP_ERROR)
        return None
    stats.html_pages += 1
    return page


def _page_of(record, stats: FileStats, cap: int, rules: PageRules) -> PageLinks | None:
    """The raw links of one record, or None when it holds no page's img links (with the meta tags and
    response headers `rules` look at).

    Counts the record once: as an HTML page (`html_pages`) or as skipped with a reason; a record that
    cannot be read raises MalformedRecord (or anything else), which the caller counts as malformed.
    """
    rtype = record.record_type
    if rtype == WarcRecordType.metadata:
        stats.saw("wat")
        payload, over = _read_capped(record, cap)
        # JSON cannot be parsed in part; a payload shorter than MAX_JSON_VALUES cannot hold more commas
        if over or (len(payload) > MAX_JSON_VALUES and payload.count(b",") > MAX_JSON_VALUES):
            stats.skip(RecordStatus.RECORD_TOO_LARGE)
            return None
        if IMG_MARKER not in payload:
            if RESPONSE_MARKER in payload:
                stats.responses += 1
                if HTML_MARKER in payload:
                    stats.html_pages += 1  # a page without img tags
                    return None
            stats.skip(RecordStatus.NOT_A_PAGE)
            return None
        return _wat_page(payload, stats, rules)
    if rtype == WarcRecordType.response:
        stats.saw("warc")
        if not record.is_http:
            stats.skip(RecordStatus.NOT_A_PAGE)
            return None
        stats.responses += 1
        status = _http_status(record)
        if not 200 <= status < 300:
            stats.skip(RecordStatus.HTTP_ERROR)
            return None
        payload, over = _read_capped(record, cap)  # over: HTML is parsed up to the cap
        if not is_html(record.http_content_type, payload):
            stats.skip(RecordStatus.NOT_A_PAGE)
            return None
        page_url = record.headers.get("WARC-Target-URI")
        if not page_url:
            raise MalformedRecord("response without WARC-Target-URI")
        payload, many_tags = cap_tags(payload)
        page = page_links_from_html(page_url, status, payload, record.http_charset, rules.meta_names)
        if names := rules.header_names:  # names are case-insensitive; every repeated header counts
            named = ((key, v) for k, v in record.http_headers.astuples() if (key := k.strip().lower()) in names)
            headers = tuple(itertools.islice(named, MAX_PAGE_METAS))  # capped as a WAT's are
            if headers:
                page = page._replace(headers=headers)
        stats.html_pages += 1
        stats.truncated_pages += over or many_tags
        return page
    stats.skip(RecordStatus.NOT_A_PAGE)  # warcinfo, request, revisit, resource, ...
    return None


def iter_pairs(uri: str, settings: ExtractSettings, stats: FileStats) -> Iterator[pa.RecordBatch]:
    """Stream the pairs of one WAT/WARC file as arrow batches of <= settings.batch_rows rows.

    Fills `stats` as it goes. A record that cannot be read is counted in `malformed_records` and
    skipped; damage to the file's container (a gzip member that does not inflate, bytes between
    members, a cut) makes it `partial`, with reading resumed at the next gzip member where there is
    one. A file that is not WARC raises ExtractError; errors of the source itself (network, missing
    file) propagate.
    """
    start = time.perf_counter()
    stats.status, stats.error = FileStatus.OK, None
    try:
        yield from _iter_pairs(uri, settings, stats)
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            stats.status = FileStatus.FAILED
            stats.error = f"{uri}: {type(exc).__name__}: {exc}"
        raise
    finally:
        stats.seconds = time.perf_counter() - start


def _iter_pairs(uri: str, settings: ExtractSettings, stats: FileStats) -> Iterator[pa.RecordBatch]:
    source = open_uri(uri)
    builder = _PairBuilder(settings, stats)
    batch_rows, cap, rules = settings.batch_rows, settings.max_record_bytes, builder.rules

    def malformed(why: str) -> None:
        stats.malformed_records += 1
        if stats.malformed_first is None:
            stats.malformed_first = f"record {stats.records}: {why}"

    def unparsable(exc: BaseException) -> None:
        stats.records += 1
        malformed(f"unparsable WARC record ({type(exc).__name__}: {exc}), skipped to the next record")

    def guarded(read, *args) -> PageLinks | None:
        try:
            return read(*args)
        except BaseException as exc:  # noqa: BLE001 - any record that cannot be read costs itself only
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)):
                raise
            malformed(str(exc) if isinstance(exc, MalformedRecord) else f"{type(exc).__name__}: {exc}")
            return None

    def add(page: PageLinks | None) -> Iterator[pa.RecordBatch]:
        if page is not None and page.links:
            builder.add(page)
            if len(builder) >= batch_rows:
                yield from _split(builder.flush(), batch_rows)

    parts = Parts(source, uri, _watgz.Reader(cap, MAX_JSON_VALUES, IMG_MARKER, RESPONSE_MARKER, HTML_MARKER))
    damage, damaged = None, 0  # the first damage the container's streams skipped, and how many stretches
    try:
        for part in parts:
            if isinstance(part, tuple):  # the fast path's regular members
                _, _, read, responses, html_pages, not_a_page, too_large, wat, pages = part
                first = stats.records
                if wat:
                    stats.saw("wat")
                for number, payload in pages:
                    stats.records = first + number
                    yield from add(guarded(_wat_page, payload, stats, rules))
                stats.records = first + read
                stats.responses += responses
                stats.html_pages += html_pages
                for status, n in ((RecordStatus.NOT_A_PAGE, not_a_page), (RecordStatus.RECORD_TOO_LARGE, too_large)):
                    if n:  # a reason no record had stays out of the stats, as with one record at a time
                        stats.skip(status, n)
                continue
            stream = part  # a stretch the fast path does not read, up to the record it reads on from
            for record in records(stream, unparsable):
                if record.stream_pos == stream.resume_pos:
                    stream.resume()
                    break
                stats.records += 1
                page = guarded(_page_of, record, stats, cap, rules)
                _skip_rest(record)
                if stream.failed is not None:
                    raise stream.failed
                yield from add(page)
            if stream.failed is not None:
                raise stream.failed
            if stream.damage:
                damage, damaged = damage or stream.damage, damaged + stream.damaged
        batch = builder.flush()
        if batch is not None:
            yield from _split(batch, batch_rows)
    except NotWarc as exc:
        raise ExtractError(str(exc)) from None
    finally:
        stats.compressed_bytes = parts.compressed_pos
        source.close()
    if damage:
        more = f"; {damaged - 1} more damaged stretches skipped" if damaged > 1 else ""
        stats.status = FileStatus.PARTIAL
        stats.error = f"{uri}: {damage}{more}; read on past the damage: {stats.records} records"


def _skip_rest(record) -> None:
    """Skip what is left of the record's payload as stored: a decoded (Content-Encoding) payload read only in
    part, or not at all, would leave the parser inside it. Nothing is decoded, so a bomb costs nothing."""
    try:
        record.reader.consume()
    except BaseException as exc:  # noqa: BLE001 - the parser meets the damage at the next record
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)):
            raise


def _split(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for offset in range(0, batch.num_rows, rows):
        yield batch.slice(offset, rows)
