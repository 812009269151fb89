"""WARC records and their WAT metadata records in Common Crawl's layout, written with warcio.

warcio's writer makes each record its own gzip member; zlib writes the member header with
mtime 0, so output is reproducible. Every header is passed in (ids and dates from the world's
seed), in Common Crawl's order. The WAT JSON follows ia-web-commons: every scalar is a string,
links keep the page's raw values.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from dataclasses import dataclass
from typing import IO

import orjson
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CRLF = "\r\n"
RECORD_END = b"\r\n\r\n"  # what warcio writes after each block
GZIP_HEADER_LENGTH, GZIP_FOOTER_LENGTH = 10, 8  # zlib's member header carries no file name


def sha1_digest(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def java_int(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def http_message(first_line: str, headers: dict[str, str]) -> StatusAndHeaders:
    """An HTTP request or status line and its headers, serialised as warcio writes them (`headers_buff`)."""
    http = StatusAndHeaders(first_line, list(headers.items()))
    http.compute_headers_buffer()
    return http


class _CommonCrawlWriter(WARCWriter):
    """warcio's WARCWriter, less the digests it adds: Common Crawl's warcinfo, request and metadata
    records carry fewer than warcio would, so each record's digests are passed in with its headers."""

    def ensure_digest(self, record, block=True, payload=True):
        return None


@dataclass
class Record:
    """One WARC record as written: its headers (in order), block, and where its gzip member landed."""

    warc: ArcWarcRecord
    block: bytes  # the HTTP headers (if any) and the payload
    head: bytes  # the WARC headers as written
    offset: int = 0
    member_length: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.warc.rec_headers.headers)

    @property
    def record_id(self) -> str:
        return self.warc.rec_headers.get_header("WARC-Record-ID")

    @property
    def inflated_length(self) -> int:
        return len(self.head) + len(self.block) + len(RECORD_END)

    @property
    def inflated_crc(self) -> int:
        return zlib.crc32(RECORD_END, zlib.crc32(self.block, zlib.crc32(self.head)))


class RecordWriter:
    """Writes records into one WARC-format file, each its own gzip member, noting where each landed.

    With no file nothing is written and offsets are estimated (a WAT-only world has no WARC to point into).
    """

    def __init__(self, fileobj: IO[bytes] | None):
        self.f, self.offset = fileobj, 0
        self.writer = _CommonCrawlWriter(fileobj, gzip=True, warc_version="1.0")

    def write(
        self, headers: dict[str, str], payload: bytes, http: StatusAndHeaders | None = None, length_last: bool = False
    ) -> Record:
        """Content-Length goes after WARC-Record-ID (WARC files) or last (WAT metadata records), as in Common Crawl."""
        block = (http.headers_buff if http else b"") + payload
        ordered: dict[str, str] = {}
        for key, value in headers.items():
            ordered[key] = value
            if key == "WARC-Record-ID" and not length_last:
                ordered["Content-Length"] = str(len(block))
        if length_last:
            ordered["Content-Length"] = str(len(block))
        warc = self.writer.create_warc_record(
            headers.get("WARC-Target-URI", ""),
            headers["WARC-Type"],
            payload=io.BytesIO(payload),
            length=len(payload),
            warc_headers_dict=ordered,
            http_headers=http,
        )
        if self.f is not None:
            self.writer.write_record(warc)
        # The WARC headers as warcio serialises them (it rewrites Content-Length in place, to the same value).
        rec = Record(warc, block, warc.rec_headers.to_bytes(encoding="utf-8"), self.offset)
        if self.f is None:
            # Plausible offsets without compressing: Common Crawl WARCs compress ~5x.
            rec.member_length = rec.inflated_length // 5 + GZIP_HEADER_LENGTH + GZIP_FOOTER_LENGTH
            self.offset += rec.member_length
        else:
            self.offset = self.f.tell()
            rec.member_length = self.offset - rec.offset
        return rec


def container(rec: Record, filename: str) -> dict:
    return {
        "IsParsed": "true",
        "Filename": filename,
        "Compressed": "true",
        "Offset": str(rec.offset),
        "Gzip-Metadata": {
            "Deflate-Length": str(max(rec.member_length - GZIP_HEADER_LENGTH - GZIP_FOOTER_LENGTH, 0)),
            "Header-Length": str(GZIP_HEADER_LENGTH),
            "Footer-Length": str(GZIP_FOOTER_LENGTH),
            "Inflated-CRC": str(java_int(rec.inflated_crc)),
            "Inflated-Length": str(rec.inflated_length),
        },
    }


def envelope(rec: Record, payload: dict) -> dict:
    headers = rec.headers
    return {
        "Format": "WARC",
        "WARC-Header-Length": str(len(rec.head)),
        "Block-Digest": headers.get("WARC-Block-Digest") or sha1_digest(rec.block),
        "Actual-Content-Length": str(len(rec.block)),
        "WARC-Header-Metadata": headers,
        "Payload-Metadata": payload,
    }


def http_payload(
    kind: str, first: dict, http: StatusAndHeaders, body: bytes, html_metadata: dict | None = None
) -> dict:
    """Payload-Metadata of a request or response record."""
    meta = {
        f"{kind.capitalize()}-Message": first,
        "Headers": dict(http.headers),
        "Headers-Length": str(len(http.headers_buff)),
        "Entity-Length": str(len(body)),
        "Entity-Digest": sha1_digest(body),
        "Entity-Trailing-Slop-Length": "0",
    }
    if html_metadata is not None:
        meta["HTML-Metadata"] = html_metadata
    return {"Actual-Content-Type": f"application/http; msgtype={kind}", f"HTTP-{kind.capitalize()}-Metadata": meta}


def fields_payload(block: bytes, key: str) -> dict:
    """Payload-Metadata of a warcinfo or WARC metadata record (`name: value` lines)."""
    pairs = [line.split(": ", 1) for line in block.decode().split(CRLF) if ": " in line]
    if key == "WARC-Info-Metadata":
        return {"Actual-Content-Type": "application/warc-fields", key: {k: v for k, v in pairs}}
    return {
        "Actual-Content-Type": "application/warc-fields",
        key: {"Metadata-Records": [{"Name": k, "Value": v} for k, v in pairs]},
    }


def wat_record(source: Record, warc_filename: str, payload: dict, record_id: str, date: str) -> tuple[dict, bytes]:
    """Headers and JSON of the WAT metadata record describing `source` (already placed in its WARC file)."""
    doc = {"Container": container(source, warc_filename), "Envelope": envelope(source, payload)}
    target = source.headers.get("WARC-Target-URI") or source.headers.get("WARC-Filename", warc_filename)
    headers = {
        "WARC-Type": "metadata",
        "WARC-Target-URI": target,
        "WARC-Date": date,
        "WARC-Record-ID": record_id,
        "WARC-Refers-To": source.record_id,
        "Content-Type": "application/json",
    }
    return headers, orjson.dumps(doc)
