"""WARC records and their WAT metadata records, byte for byte in Common Crawl's layout.

Each record is its own gzip member (mtime 0, so output is reproducible). The WAT JSON
follows ia-web-commons: every scalar is a string, links keep the page's raw values.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass

import orjson

CRLF = "\r\n"


def sha1_digest(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def gzip_member(data: bytes, level: int) -> bytes:
    """One gzip member, like gzip.compress(mtime=0) but without its per-call overhead."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + body + zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")


def java_int(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass
class Record:
    """One WARC record: its headers (in order), block, and where it landed in its file."""

    headers: dict[str, str]
    block: bytes
    raw: bytes = b""
    header_length: int = 0
    offset: int = 0
    member_length: int = 0

    @property
    def record_id(self) -> str:
        return self.headers["WARC-Record-ID"]


def build_record(headers: dict[str, str], block: bytes, length_last: bool = False) -> Record:
    """Serialise; Content-Length goes after WARC-Record-ID (WARC files) or last (WAT files), as in Common Crawl."""
    ordered: dict[str, str] = {}
    for key, value in headers.items():
        ordered[key] = value
        if key == "WARC-Record-ID" and not length_last:
            ordered["Content-Length"] = str(len(block))
    if length_last:
        ordered["Content-Length"] = str(len(block))
    head = ("WARC/1.0" + CRLF + "".join(f"{k}: {v}{CRLF}" for k, v in ordered.items()) + CRLF).encode()
    return Record(ordered, block, head + block + b"\r\n\r\n", len(head))


def http_message(first_line: str, headers: dict[str, str], body: bytes) -> tuple[bytes, int]:
    head = (first_line + CRLF + "".join(f"{k}: {v}{CRLF}" for k, v in headers.items()) + CRLF).encode()
    return head + body, len(head)


def container(rec: Record, filename: str) -> dict:
    crc = zlib.crc32(rec.raw)
    return {
        "IsParsed": "true",
        "Filename": filename,
        "Compressed": "true",
        "Offset": str(rec.offset),
        "Gzip-Metadata": {
            "Deflate-Length": str(max(rec.member_length - 18, 0)),
            "Header-Length": "10",
            "Footer-Length": "8",
            "Inflated-CRC": str(java_int(crc)),
            "Inflated-Length": str(len(rec.raw)),
        },
    }


def envelope(rec: Record, payload: dict) -> dict:
    return {
        "Format": "WARC",
        "WARC-Header-Length": str(rec.header_length),
        "Block-Digest": rec.headers.get("WARC-Block-Digest") or sha1_digest(rec.block),
        "Actual-Content-Length": str(len(rec.block)),
        "WARC-Header-Metadata": dict(rec.headers),
        "Payload-Metadata": payload,
    }


def http_payload(
    kind: str, first: dict, headers: dict[str, str], headers_length: int, body: bytes, html_metadata: dict | None = None
) -> dict:
    """Payload-Metadata of a request or response record."""
    meta = {
        f"{kind.capitalize()}-Message": first,
        "Headers": headers,
        "Headers-Length": str(headers_length),
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


def wat_record(source: Record, warc_filename: str, payload: dict, record_id: str, date: str) -> Record:
    """The WAT metadata record describing `source` (already placed in its WARC file)."""
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
    return build_record(headers, orjson.dumps(doc), length_last=True)


class MemberWriter:
    """Appends records as gzip members to a binary file, tracking offsets (or only estimating them)."""

    def __init__(self, fileobj, level: int, estimate_only: bool = False):
        self.f, self.level, self.estimate_only, self.offset = fileobj, level, estimate_only, 0

    def write(self, rec: Record) -> Record:
        rec.offset = self.offset
        if self.estimate_only:
            # No WARC is written: offsets stay plausible (Common Crawl WARCs compress ~5x).
            rec.member_length = len(rec.raw) // 5 + 18
        else:
            member = gzip_member(rec.raw, self.level)
            rec.member_length = len(member)
            if self.f is not None:
                self.f.write(member)
        self.offset += rec.member_length
        return rec
