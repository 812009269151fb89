"""The records of one WARC/WAT file, read so that damage costs only the records it touches.

Common Crawl, like the WARC standard's annex on compression, writes each record as its own gzip
member. The members are inflated here one at a time (ISA-L), in bounded chunks, so a gzip bomb
streams through, and one parser (fastwarc) reads the records across them:
- a member that does not inflate (a flipped bit, a cut, garbage between members) ends the parser's
  stream there; reading resumes with a new parser at the next gzip header;
- a record whose Content-Length runs past the end of its gzip member is cut there, and parsing resumes
  at the next member, so it cannot swallow the next records as payload (in a plain WARC, or a file
  compressed as one gzip stream, it does, as in any WARC reader);
- a stretch the parser rejects (a broken or oversized header block, a Content-Length that stops short)
  is skipped to the next line that starts a WARC record, in a compressed file or a plain one.

Nothing raises from inside the parser's reads: errors are kept and looked at between records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import IO

from fastwarc.warc import ArchiveIterator, WarcRecordType
from isal import isal_zlib

GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2 and CM=deflate: every gzip member starts with it
WARC_LINE = b"\nWARC/1."  # a record's first line (WARC/1.0 or WARC/1.1), after the previous line's end
READ_SIZE = 1 << 16  # inflated bytes handed to the parser at most at once
HISTORY_BYTES = 1 << 20  # what was handed out lately, kept to hand out again (resync, a record cut short)
MEMBER_STARTS = 4096  # member starts kept (those before the last record parsed are dropped as it is)
# Compressed bytes read at once: small, because each member's end copies what is left of the chunk
# (zlib's unused_data), and most members are a few KB.
CHUNK_SIZE = 1 << 14
RESCAN_BYTES = 1 << 20  # a damaged member's bytes kept to look for a gzip header inside it (a splice)
_GZIP_WBITS = 31  # zlib's wbits for one gzip member (header and trailer checked)


class NotWarc(Exception):
    """The file is neither gzip nor WARC (the message says what it starts with)."""


class _Stream:
    """The file's bytes as the parser reads them. `failed` keeps an error of the source itself (network,
    filesystem), which must propagate as is, so that the task can retry; `damage` lists what was skipped."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.compressed_pos, self.pos = f, 0, 0
        self.failed: BaseException | None = None
        self.damage: list[str] = []
        self.buf = b""  # read from the file, not yet handed on
        self._pending = b""  # handed on next, before anything new (after a rewind)
        self._history: deque[tuple[int, bytes]] = deque()  # (stream offset, bytes) handed out lately
        self._kept = 0  # bytes in _history
        self._resumed = 0  # where the last resync resumed: the next one starts past it

    def fill(self) -> bool:
        """Append the next chunk of the file to `buf`; False at its end (or when the source failed)."""
        if self.failed is not None:
            return False
        try:
            data = self._f.read(CHUNK_SIZE)
        except Exception as exc:  # noqa: BLE001 - kept, re-raised between records
            self.failed = exc
            return False
        self.compressed_pos += len(data)
        self.buf += data
        return bool(data)

    @property
    def offset(self) -> int:
        """Offset in the file of `buf`'s first byte."""
        return self.compressed_pos - len(self.buf)

    def _next(self, size: int) -> bytes:
        if not self.buf and not self.fill():
            return b""
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else READ_SIZE
        if self._pending:
            data, self._pending = self._pending[:size], self._pending[size:]
        else:
            data = self._next(size)
        if data:
            self._history.append((self.pos, data))
            self._kept += len(data)
            while self._kept - len(self._history[0][1]) >= HISTORY_BYTES:
                self._kept -= len(self._history.popleft()[1])
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def rewind(self, offset: int) -> bool:
        """Hand out again from stream offset `offset`; False when it is no longer kept."""
        if not self._history or not self._history[0][0] <= offset <= self.pos:
            return False
        first = self._history[0][0]
        self._pending = b"".join(data for _, data in self._history)[offset - first :] + self._pending
        self.pos = offset
        self._history.clear()
        self._kept = 0
        return True

    def resync(self, after: int) -> bool:
        """Skip to the first line that starts a WARC record past stream offset `after` (where the last good
        record began) and past the last resync; False when the stream ends first. What the parser had
        read ahead is handed out again, as far as it is kept."""
        start = max(after + 1, self._resumed)
        if start < self.pos:
            self.rewind(start)  # when not kept: the scan starts where the parser stopped reading
        member = self._member_start(self.pos)  # a record may also begin a member, where no newline precedes it
        tail = b""  # a record line starts after a newline
        while True:
            at = self.pos
            data = self.read(READ_SIZE)
            if not data:
                return self.restart()
            window = tail + data
            found = window.find(WARC_LINE)
            begin = at - len(tail) + found + 1 if found >= 0 else None
            if member is not None and member < self.pos and (begin is None or member < begin):
                begin = member
            if begin is not None:
                self.rewind(begin)
                self._resumed = begin + 1
                return True
            tail = window[-len(WARC_LINE) :]

    def _member_start(self, start: int) -> int | None:
        """The first gzip member that begins at or after stream offset `start`, as far as known."""
        return None

    def restart(self) -> bool:
        """After the parser saw the end of the stream: whether there is more to parse (past damage)."""
        return False

    def overrun(self, start: int, length: int) -> int | None:
        """Where the record at `start` runs into the next gzip member, if its content of `length` bytes does."""
        return None

    def close(self) -> None:
        self._f.close()


class _Members(_Stream):
    """A gzip file inflated member by member. A member that does not inflate ends the stream for the
    parser after the whole members before it, and `restart` moves on to the next gzip header."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__(f)
        self._inflater = None  # the member being inflated; None between members
        self._start = 0  # compressed offset of that member
        self._broken = False  # a member did not inflate: the parser gets the end of the stream
        self._starts: deque[int] = deque(maxlen=MEMBER_STARTS)  # stream offsets where the latest members begin
        # the current member's input so far, while under RESCAN_BYTES: a member cut short and followed by
        # another is found again inside the damaged one
        self._fed: list[bytes] | None = []
        self._fed_bytes = 0

    def _next(self, size: int) -> bytes:
        """Up to `size` inflated bytes, from as many whole members as fit (fewer calls from the parser)."""
        parts, n = [], 0
        while n < size and not self._broken:
            if self._inflater is None:
                if not self._begin_member():
                    break
                self._starts.append(self.pos + n)
            inflater = self._inflater
            at_end = not self.buf and not self.fill()
            fed = self.buf
            try:
                out = inflater.decompress(fed, size - n)  # at the end: b"", flushes what the inflater holds
            except isal_zlib.error as exc:
                self._break(f"corrupt gzip data ({exc})")
                break
            if inflater.eof:
                self.buf, self._inflater = inflater.unused_data, None
            else:
                self.buf = inflater.unconsumed_tail
                if self._fed is not None:
                    self._fed.append(fed[: len(fed) - len(self.buf)])
                    self._fed_bytes += len(self._fed[-1])
                    if self._fed_bytes > RESCAN_BYTES:
                        self._fed = None
                if at_end and not out:
                    self._break("truncated: the file ends inside this gzip member" if self.failed is None else "")
                    break
            if out:
                parts.append(out)
                n += len(out)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _member_start(self, start: int) -> int | None:
        return next((at for at in self._starts if at >= start), None)

    def overrun(self, start: int, length: int) -> int | None:
        starts = self._starts
        while starts and starts[0] <= start:
            starts.popleft()
        return starts[0] if starts and starts[0] < start + length else None

    def _begin_member(self) -> bool:
        """Start inflating the member at `buf`; stray bytes before it are damage. False at the end."""
        while len(self.buf) < len(GZIP_MAGIC) and self.fill():
            pass
        if not self.buf or self.failed is not None:
            return False
        if not self.buf.startswith(GZIP_MAGIC):
            start = self.offset
            found = self._skip_to_magic()
            self.damage.append(f"{self.offset - start} bytes that are no gzip member (compressed offset {start})")
            if not found:
                return False
        self._inflater, self._start = isal_zlib.decompressobj(_GZIP_WBITS), self.offset
        self._fed, self._fed_bytes = [], 0
        return True

    def _break(self, why: str) -> None:
        if why:
            self.damage.append(f"{why} (member at compressed offset {self._start})")
        self._broken = True

    def restart(self) -> bool:
        if not self._broken or self.failed is not None:
            return False
        self._broken, self._pending = False, b""
        self._history.clear()
        self._kept = 0
        if self._fed is not None:  # look again from just past the damaged member's header
            self.buf = (b"".join(self._fed) + self.buf)[1:]
        elif self.offset == self._start:  # nothing of the member inflated: step past its header
            self.buf = self.buf[1:]
        self._inflater = None
        return self._skip_to_magic()

    def _skip_to_magic(self) -> bool:
        """Drop compressed bytes up to the next gzip header; False when the file ends first."""
        while True:
            found = self.buf.find(GZIP_MAGIC)
            if found >= 0:
                self.buf = self.buf[found:]
                return True
            self.buf = self.buf[-(len(GZIP_MAGIC) - 1) :]
            if not self.fill():
                self.buf = b""
                return False


def open_stream(f: IO[bytes], name: str) -> _Stream:
    """The file as the parser reads it (gzip members inflated, or plain WARC); NotWarc when it is neither."""
    probe = _Stream(f)
    while len(probe.buf) < 16 and probe.fill():
        pass
    if probe.failed is not None:
        raise probe.failed
    gzipped = probe.buf.startswith(GZIP_MAGIC)
    stream = _Members(f) if gzipped else _Stream(f)
    stream.buf, stream.compressed_pos = probe.buf, probe.compressed_pos
    head = stream.read(len(WARC_LINE))
    if stream.failed is not None:
        raise stream.failed
    if not head.startswith(b"WARC/"):
        if gzipped:
            what = f"gzip of something else: starts with {head[:8]!r}" if head else "gzip unreadable"
        else:
            what = f"no gzip or WARC magic: starts with {head[:8]!r}"
        raise NotWarc(f"{name}: not a WARC/WAT file ({what})")
    stream.rewind(0)
    return stream


def records(stream: _Stream, on_unparsable: Callable[[BaseException], None]) -> Iterator:
    """The stream's records as fastwarc parses them; a stretch it rejects is reported once to
    `on_unparsable(exc)` and skipped to the next line (or gzip member) that starts a record; after damage
    to the container, parsing resumes at the next gzip member."""
    last = -1  # stream offset where the last record yielded began
    resumed = False  # parsing resumed after a rejected stretch, and has yielded nothing since
    while True:
        parser = ArchiveIterator(
            stream,
            record_types=WarcRecordType.any_type,
            parse_http=True,
            auto_decode="all",
            stream_detect=False,
        )
        while True:
            try:
                record = next(parser)
            except StopIteration:
                if not stream.restart():
                    return
                break
            except BaseException as exc:  # noqa: BLE001 - OSError, or a fastwarc panic (pyo3's PanicException)
                if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)):
                    raise
                if not resumed:  # else the same stretch goes on: it was reported
                    on_unparsable(exc)
                if not stream.resync(last):
                    return
                resumed = True
                break
            cut = stream.overrun(record.stream_pos, record.content_length)
            if cut is not None:  # its Content-Length claims the next member's bytes: parse on from there
                on_unparsable(ValueError(f"Content-Length {record.content_length} runs past the record's gzip member"))
                if not stream.rewind(cut) and not stream.resync(record.stream_pos):
                    return
                resumed = False
                break
            last, resumed = record.stream_pos, False
            yield record
