"""One crawl file: its WARC (request, response, metadata records per fetch) and the matching WAT.

Fetches are mostly HTML pages; some are images, PDFs, JSON, redirects, or requests that
never got a response, as in real crawls. Page 0 of every file shows every `<img>` case,
page 1 has a `<base href>`, pages 2-6 are one of each non-HTML kind. After them come one
page of each page-level opt-out and TDM reservation (page_optouts.py).
"""

from __future__ import annotations

import contextlib
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from warcio.statusandheaders import StatusAndHeaders

from clipcrawl.tasks.core.uri import atomic_write
from clipcrawl.tasks.world.behaviours import PAGE_LEVEL
from clipcrawl.tasks.world.page_optouts import PAGE_OPT_OUTS
from clipcrawl.tasks.world.pages import Occurrence, Page, PageBuilder, SharedPair
from clipcrawl.tasks.world.records import (
    Record,
    RecordWriter,
    fields_payload,
    http_message,
    http_payload,
    sha1_digest,
    wat_record,
)
from clipcrawl.tasks.world.scenes import encode_image, image_spec, render_scene

FETCH_KINDS = {"html": 85, "image": 4, "pdf": 3, "json": 3, "redirect": 2, "request_only": 3}
FORCED_KINDS = {2: "image", 3: "pdf", 4: "json", 5: "request_only", 6: "redirect"}
USER_AGENT = "CCBot/2.0 (https://commoncrawl.org/faq/)"
CLD2 = {"en": "ENGLISH", "de": "GERMAN", "fr": "FRENCH", "ru": "RUSSIAN", "ja": "Japanese", "zh": "Chinese"}


@dataclass(frozen=True)
class FileSpec:
    seed: int
    crawl_id: str
    segment: str
    index: int  # file number within the crawl (the -00000 in the name)
    name: str  # CC-MAIN-<ts>-<ts>-<index>
    start: datetime
    pages: int
    sites: int
    images: int
    links_per_page: tuple[int, int]
    images_per_page: tuple[int, int]


def _date(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_date(t: datetime) -> str:
    return t.strftime("%a, %d %b %Y %H:%M:%S GMT")


class _FileWriter:
    """Writes the records of one file into its WARC (None: offsets only) and WAT streams in step."""

    def __init__(self, fs: FileSpec, warc_out, wat_out):
        self.fs = fs
        self.ids = random.Random(f"ids:{fs.seed}:{fs.index}")
        self.warc = RecordWriter(warc_out)
        self.wat = RecordWriter(wat_out)
        self.warc_name = f"{fs.name}.warc.gz"
        self.warcinfo_id = ""

    def new_id(self) -> str:
        return f"<urn:uuid:{uuid.UUID(int=self.ids.getrandbits(128), version=4)}>"

    def emit(
        self, headers: dict[str, str], payload: bytes, meta: dict, when: datetime, http: StatusAndHeaders | None = None
    ) -> Record:
        """Write one WARC record and the WAT record describing it (`meta`: its Payload-Metadata)."""
        rec = self.warc.write(headers, payload, http)
        self.wat.write(*wat_record(rec, self.warc_name, meta, self.new_id(), _date(when)), length_last=True)
        return rec

    def warcinfo(self) -> None:
        fs, when = self.fs, self.fs.start
        wat_info = (
            f"Software-Info: ia-web-commons.1.1.10-SNAPSHOT-20240101000000\r\n"
            f"Extracted-Date: {_http_date(when)}\r\nrobots: checked via crawler-commons 1.5\r\n"
            f"isPartOf: {fs.crawl_id}\r\noperator: clipcrawl synthetic world\r\n"
            f"description: Synthetic crawl of the .world.test web\r\npublisher: clipcrawl\r\n"
        ).encode()
        self.wat.write(
            {
                "WARC-Type": "warcinfo",
                "WARC-Date": _date(when),
                "WARC-Filename": f"{fs.name}.warc.wat.gz",
                "WARC-Record-ID": self.new_id(),
                "Content-Type": "application/warc-fields",
            },
            wat_info,
        )
        block = (
            f"isPartOf: {fs.crawl_id}\r\npublisher: clipcrawl\r\n"
            f"description: Synthetic crawl of the .world.test web\r\noperator: clipcrawl synthetic world\r\n"
            f"hostname: world-{fs.index}\r\nsoftware: Apache Nutch 1.19 (modified)\r\n"
            f"robots: checked via crawler-commons 1.5\r\nformat: WARC File Format 1.1\r\n"
        ).encode()
        self.warcinfo_id = self.new_id()
        self.emit(
            {
                "WARC-Type": "warcinfo",
                "WARC-Date": _date(when),
                "WARC-Filename": self.warc_name,
                "WARC-Record-ID": self.warcinfo_id,
                "Content-Type": "application/warc-fields",
            },
            block,
            fields_payload(block, "WARC-Info-Metadata"),
            when,
        )

    def fetch(
        self,
        url: str,
        when: datetime,
        response: tuple[str, dict, bytes] | None,
        html_metadata: dict | None,
        meta_fields: str,
    ) -> None:
        """request [+ response + metadata] records for one fetch of `url`."""
        host_path = url.split("://", 1)[1]
        host, path = (host_path.split("/", 1) + [""])[:2]
        req_headers = {
            "User-Agent": USER_AGENT,
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            "Accept-Language": "en-US,en;q=0.5",
            "Accept-Encoding": "br,gzip",
            "Host": host,
            "Connection": "Keep-Alive",
        }
        req_http = http_message(f"GET /{path} HTTP/1.1", req_headers)
        ip = f"10.{self.fs.index % 250}.{len(host) % 250}.{sum(map(ord, host)) % 250}"
        common = {"WARC-Warcinfo-ID": self.warcinfo_id, "WARC-IP-Address": ip, "WARC-Target-URI": url}
        req = self.emit(
            {
                "WARC-Type": "request",
                "WARC-Date": _date(when),
                "WARC-Record-ID": self.new_id(),
                "Content-Type": "application/http; msgtype=request",
                **common,
                "WARC-Block-Digest": sha1_digest(req_http.headers_buff),
            },
            b"",
            http_payload("request", {"Method": "GET", "Path": f"/{path}", "Version": "HTTP/1.1"}, req_http, b""),
            when,
            req_http,
        )
        if response is None:
            return
        status_line, headers, body = response
        http = http_message(status_line, headers)
        ctype = headers.get("Content-Type", "").split(";")[0]
        version, code, reason = status_line.split(" ", 2)
        resp = self.emit(
            {
                "WARC-Type": "response",
                "WARC-Date": _date(when),
                "WARC-Record-ID": self.new_id(),
                "Content-Type": "application/http; msgtype=response",
                **common,
                "WARC-Concurrent-To": req.record_id,
                "WARC-Protocol": "http/1.1",
                "WARC-Payload-Digest": sha1_digest(body),
                "WARC-Block-Digest": sha1_digest(http.headers_buff + body),
                "WARC-Identified-Payload-Type": ctype,
            },
            body,
            http_payload("response", {"Version": version, "Status": code, "Reason": reason}, http, body, html_metadata),
            when,
            http,
        )
        meta_block = meta_fields.encode()
        self.emit(
            {
                "WARC-Type": "metadata",
                "WARC-Date": _date(when),
                "WARC-Record-ID": self.new_id(),
                "Content-Type": "application/warc-fields",
                "WARC-Warcinfo-ID": self.warcinfo_id,
                "WARC-Concurrent-To": resp.record_id,
                "WARC-Target-URI": url,
            },
            meta_block,
            fields_payload(meta_block, "WARC-Metadata-Metadata"),
            when,
        )


def _response(
    ctype: str, body: bytes, when: datetime, status: str = "HTTP/1.1 200 OK", extra: dict | None = None
) -> tuple[str, dict, bytes]:
    headers = {
        "Date": _http_date(when),
        "Server": "nginx/1.25.3",
        "Content-Type": ctype,
        **(extra or {}),
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    return status, headers, body


def write_crawl_file(fs: FileSpec, warc_path: str | None, wat_path: str, shared: list[SharedPair]) -> list[Occurrence]:
    """Write the WAT (and, when `warc_path` is given, the WARC) of one file; return its `<img>` occurrences."""
    rng = random.Random(f"file:{fs.seed}:{fs.index}")
    builder = PageBuilder(fs.seed, fs.sites, fs.images, shared, rng, fs.links_per_page, fs.images_per_page)
    occurrences: list[Occurrence] = []
    with contextlib.ExitStack() as stack:
        warc_out = stack.enter_context(atomic_write(warc_path)) if warc_path else None
        wat_out = stack.enter_context(atomic_write(wat_path))
        out = _FileWriter(fs, warc_out, wat_out)
        out.warcinfo()

        def html_fetch(page: Page, when: datetime, fetch_ms: str, headers: dict | None = None) -> None:
            body = page.html.encode(page.charset)
            meta = (
                f"{fetch_ms}charset-detected: {page.charset.upper()}\r\n"
                f'languages-cld2: {{"reliable":true,"languages":[{{"code":"{page.language}",'
                f'"name":"{CLD2[page.language]}","text-covered":0.97}}]}}\r\n'
            )
            html_meta = {"Head": page.head, "Links": page.links}
            out.fetch(page.url, when, _response(page.content_type, body, when, extra=headers), html_meta, meta)
            occurrences.extend(page.images)

        for i in range(fs.pages):
            when = fs.start + timedelta(seconds=2 * i)
            kind = FORCED_KINDS.get(i) or rng.choices(list(FETCH_KINDS), list(FETCH_KINDS.values()))[0]
            fetch_ms = f"fetchTimeMs: {rng.randint(20, 3000)}\r\n"
            if kind == "html" or i < 2:
                page = builder.page(f"{fs.index:05d}-{i:05d}", showcase=i == 0, with_base=True if i == 1 else None)
                html_fetch(page, when, fetch_ms)
                continue
            site = rng.randrange(fs.sites)
            base = f"http://www.site-{site}.world.test"
            if kind == "image":
                image_id = rng.randrange(fs.images)
                spec = image_spec(fs.seed, image_id)
                data = encode_image(render_scene(spec.scene, (64, 64)), "jpg")
                out.fetch(
                    f"http://img.site-{site}.world.test/images/{image_id:06d}.jpg",
                    when,
                    _response("image/jpeg", data, when),
                    None,
                    fetch_ms,
                )
            elif kind == "pdf":
                data = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
                out.fetch(f"{base}/docs/report-{i}.pdf", when, _response("application/pdf", data, when), None, fetch_ms)
            elif kind == "json":
                data = b'{"items": [1, 2, 3], "next": "/api/items?page=2"}'
                out.fetch(f"{base}/api/items-{i}.json", when, _response("application/json", data, when), None, fetch_ms)
            elif kind == "redirect":
                out.fetch(
                    f"{base}/old/{i}.html",
                    when,
                    _response(
                        "text/html", b"", when, "HTTP/1.1 301 Moved Permanently", {"Location": f"{base}/new/{i}.html"}
                    ),
                    None,
                    fetch_ms,
                )
            else:
                out.fetch(f"{base}/timeout/{i}.html", when, None, None, "")
        # their own draws: the file's other pages stay as they were; a few img tags each, so each kind has pairs
        optout_rng = random.Random(f"page-optouts:{fs.seed}:{fs.index}")
        optout_builder = PageBuilder(fs.seed, fs.sites, fs.images, shared, optout_rng, fs.links_per_page, (4, 8))
        for j, optout in enumerate(PAGE_OPT_OUTS):
            page = optout_builder.page(f"{fs.index:05d}-{optout.name}", optout=optout)
            when = fs.start + timedelta(seconds=2 * (fs.pages + j))
            html_fetch(page, when, f"fetchTimeMs: {optout_rng.randint(20, 3000)}\r\n", dict(optout.headers))
        # a page of each page-level behaviour, on its page host: its image and no other (their status is the page's)
        page_rng = random.Random(f"page-level:{fs.seed}:{fs.index}")
        page_builder = PageBuilder(fs.seed, fs.sites, fs.images, shared, page_rng, fs.links_per_page, (0, 0))
        for j, behaviour in enumerate(PAGE_LEVEL):
            page = page_builder.page(f"{fs.index:05d}-{behaviour}", behaviour=behaviour)
            when = fs.start + timedelta(seconds=2 * (fs.pages + len(PAGE_OPT_OUTS) + j))
            html_fetch(page, when, f"fetchTimeMs: {page_rng.randint(20, 3000)}\r\n")
    return occurrences
