"""The records of one WARC/WAT file, read so that damage costs only the records it touches.

Common Crawl, like the WARC standard's annex on compression, writes each record as its own gzip
member. The members are inflated here one at a time (ISA-L), in bounded chunks, so a gzip bomb
streams through, and one parser (fastwarc) reads the records across them:
- a member that does not inflate (a flipped bit, a cut, garbage between members) ends the parser's
  stream there; reading resumes with a new parser at the next gzip header. A member's bytes reach the
  parser once its checksum holds (one that inflates to more than READ_SIZE past the parser's read is handed
  on as it inflates);
- a record whose Content-Length runs past the end of its gzip member is cut there, and parsing resumes
  at the next member, so it cannot swallow the next records as payload (in a plain WARC, or a file
  compressed as one gzip stream, it does, as in any WARC reader);
- a stretch the parser rejects (a broken or oversized header block, a Content-Length that stops short)
  is skipped to the next line that starts a WARC record, in a compressed file or a plain one.

Nothing raises from inside the parser's reads: errors are kept and looked at between records.

The fast path (`Parts`, with `_watgz.c`) reads a gzipped WAT file's regular members first, each whole; the
stream above reads what it does not (any damage, any other kind or form of record, a plain file) from there,
with the file's bytes as they are, and hands back at the next regular member: a file reads as the stream alone
would read it (tests/test_watgz.py compares the two), but for damage whose outcome in the stream hangs on how
far its parser had read ahead (docs/ingest.md lists it).
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
CHUNK_SIZE = 1 << 14  # compressed bytes read at once
# Compressed bytes handed to the inflater at once: ISA-L inflates a file of ~1 KB members ~15% faster in 2 KB
# pieces than in 4-16 KB ones (docs/benchmarks.md), and a member's end copies at most a piece's rest.
INFLATE_PIECE = 2048
RESCAN_BYTES = 1 << 20  # a damaged member's bytes kept to look for a gzip header inside it (a splice)
SNIFF_MEMBERS = 16  # damaged gzip members tried at the start of a file before it is called unreadable
SNIFF_BYTES = 1 << 20  # of a first member that is not WARC, inflated to see whether it is damaged
RESCAN_CHEAP = 4096  # compressed bytes a false member may take and still be looked through again
MAX_BAD_MEMBERS = 1000  # damaged gzip members in a row before the rest of the file is given up
MAX_RESYNCS = 32  # stretches rejected in a row before the rest of the member (or plain file) is given up
FAST_CHUNK = 1 << 20  # compressed bytes the fast path (Parts) reads at once
FIND_WINDOW = 8 << 20  # compressed bytes past a member the fast path does not read, searched for a regular one
_GZIP_WBITS = 31  # zlib's wbits for one gzip member (header and trailer checked)
_new_inflater = isal_zlib.decompressobj


class NotWarc(Exception):
    """The file is neither gzip nor WARC (the message says what it starts with)."""


class _Stream:
    """The file's bytes as the parser reads them. `failed` keeps an error of the source itself (network,
    filesystem), which must propagate as is, so that the task can retry; `damage` says what was skipped first
    and `damaged` counts the stretches skipped."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.compressed_pos, self.pos = f, 0, 0
        self.failed: BaseException | None = None
        self.damage: str | None = None
        self.damaged = 0
        self.buf = b""  # read from the file, not yet handed on
        self._pending = b""  # handed on next, before anything new (after a rewind)
        self._held_over = b""  # handed on after it (a gzip member's rest, inflated past a read's size: _Members)
        self._history: deque[tuple[int, bytes]] = deque()  # (stream offset, bytes) handed out lately
        self._kept = 0  # bytes in _history
        self._resumed = 0  # where the last resync resumed: the next one starts past it
        self.resume_at: int | None = None  # compressed offset of a member whose record ends the stretch (Parts)
        self.resume_pos: int | None = None  # ... its stream offset, once that member is reached
        self.resumed = False  # the stretch's reader stopped there
        self._past: list[str] = []  # damage noted past that member

    def note_damage(self, why: str) -> None:
        if self.resume_pos is not None:  # past the member the fast path may read on from (then it sees it again)
            self._past.append(why)
        self.damage = self.damage or why
        self.damaged += 1

    def resume(self) -> None:
        """The stretch's reader stopped at the record of `resume_pos`: what lies past it is the fast path's."""
        self.resumed = True
        if self._past:
            self.damaged -= len(self._past)
            self.damage = self.damage if self.damaged else None

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
        """Hand out again from stream offset `offset`; False when it is no longer kept. An offset within what is
        handed out next (a cut `overrun` found there) is reached by reading up to it."""
        if self.pos < offset <= self.pos + len(self._pending) + len(self._held_over):
            while self.pos < offset:
                if not self.read(offset - self.pos):
                    return False
            return True
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
        if start < self.pos and not self.rewind(start) and self._history:
            self.rewind(self._history[0][0])  # no longer kept from there: from the oldest byte kept
        origin = self.pos
        tail = b""  # a record line starts after a newline
        while True:
            at = self.pos
            data = self.read(READ_SIZE)
            if not data:
                return self.restart()
            # a record may also begin a member, where no newline precedes it (one begun by this read too)
            member = self._member_start(origin)
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

    def peek(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes handed out from stream offset `offset`, as far as they are kept."""
        out = b""
        ahead = ((self.pos, self._pending), (self.pos + len(self._pending), self._held_over))  # handed out next
        for at, data in (*self._history, *ahead):
            if at + len(data) > offset and len(out) < n:
                out += data[max(0, offset - at) : max(0, offset - at) + n - len(out)]
        return out

    def abandon(self, why: str) -> bool:
        """Give up the rest of this stretch (the member, or a plain file); whether there is more to parse."""
        self.note_damage(why)
        return False

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
        self._fed_from = 0  # compressed offset where the member's latest chunk of the file began to be fed
        self._rescanned_to = 0  # compressed offset up to which damaged bytes were looked through already
        self._bad_in_row = 0  # damaged members since the last whole one
        self.one_member = False  # a read ends at the end of its member (sniffing the first ones)

    def _next(self, size: int) -> bytes:
        """Up to `size` inflated bytes, from as many whole members as fit (fewer calls from the parser).

        A member's output is held until its end, so a member that does not inflate hands out none of it: the
        member under way when `size` is reached is inflated on, up to READ_SIZE past it, and what is past `size`
        is handed out first by the next call (`_held_over`). One larger than that is handed out as it inflates, and
        one cut short by the file's end as far as it inflated. The inflater is fed `buf` through a memoryview,
        INFLATE_PIECE bytes at a time: a member's end then copies at most that much (its unused_data), and
        `buf` is cut once per call, not once per member."""
        parts, n = [], 0
        if self._held_over:  # first, then on with the next members as far as `size`, as a parser reads ahead
            first, self._held_over = self._held_over[:size], self._held_over[size:]
            if self._held_over or self.one_member:
                return first
            parts, n = [first], len(first)
        member, held = [], 0  # the current member's output, not yet in parts
        limit = size + READ_SIZE
        buf, at = self.buf, 0  # buf[at:] is not fed yet
        view = memoryview(buf)
        try:
            while n < size and not self._broken:
                if self._inflater is None:
                    if buf.startswith(GZIP_MAGIC, at):  # the next member right there: the usual case, inline
                        self._inflater, self._start = _new_inflater(_GZIP_WBITS), self.compressed_pos - len(buf) + at
                        self._fed, self._fed_bytes, self._fed_from = [], 0, self._start
                    else:
                        self.buf = buf[at:]
                        began = self._begin_member()
                        buf, at = self.buf, 0
                        view = memoryview(buf)
                        if not began:
                            break
                    self._starts.append(self.pos + n)
                    if self._start == self.resume_at:
                        self.resume_pos = self.pos + n
                inflater = self._inflater
                at_end = False
                if at == len(buf):
                    self.buf = b""
                    at_end = not self.fill()
                    buf, at = self.buf, 0
                    view = memoryview(buf)
                    self._fed_from = self.offset
                piece = view[at : at + INFLATE_PIECE]
                try:
                    # one byte past `limit` at most: a member that reaches it is larger, not one whose trailer is next
                    out = inflater.decompress(piece, limit + 1 - n - held)  # at the end: b"", flushes what it holds
                except isal_zlib.error as exc:
                    member, held = [], 0
                    self._break(f"corrupt gzip data ({exc})")
                    break
                if out:
                    member.append(out)
                    held += len(out)
                if inflater.eof:
                    at += len(piece) - len(inflater.unused_data)
                    self._inflater, self._bad_in_row = None, 0
                    parts += member
                    n += held
                    member, held = [], 0
                    if self.one_member:
                        break
                    continue
                used = len(piece) - len(inflater.unconsumed_tail)
                if self._fed is not None:
                    self._fed.append(bytes(piece[:used]))
                    self._fed_bytes += used
                    if self._fed_bytes > RESCAN_BYTES:
                        self._fed = None
                at += used
                if at_end and not out:
                    self._break("truncated: the file ends inside this gzip member" if self.failed is None else "")
                    break
                if n + held > limit:
                    break
        finally:
            view.release()
            self.buf = buf[at:] if at else buf
        parts += member  # a member larger than `limit`, or cut short by the file's end: what did inflate
        n += held
        if n > size:  # the member under way at `size` was finished: its rest goes out next
            kept = n - size
            while kept >= len(parts[-1]):
                kept -= len(parts[-1])
                self._held_over = parts.pop() + self._held_over
            if kept:
                last = parts.pop()
                parts.append(last[: len(last) - kept])
                self._held_over = last[len(last) - kept :] + self._held_over
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _member_start(self, start: int) -> int | None:
        return next((at for at in self._starts if at >= start), None)

    def overrun(self, start: int, length: int) -> int | None:
        starts = self._starts
        while starts and starts[0] <= start:
            starts.popleft()

        def cut() -> tuple[int | None, bool]:  # (where, whether that is known from the members begun so far)
            # a record may span members (legal gzip, e.g. fixed-size blocks): cut only where another record begins
            for at in starts:
                if at >= start + length:
                    return None, True
                if self.peek(at, len(WARC_LINE) - 1) == WARC_LINE[1:]:
                    return at, True
            return None, False

        at, known = cut()
        # not known yet: inflate on (handed out next), so that the cut does not hang on how far the parser had read
        # ahead, until it is known, the claim is covered, or HISTORY_BYTES wait to be handed out
        while not known and start + length > self.pos + len(self._pending) + len(self._held_over):
            if len(self._pending) >= HISTORY_BYTES:
                break
            handed = self.pos
            self.pos += len(self._pending)  # _next notes the members it begins at pos and on
            try:
                more = self._next(READ_SIZE)
            finally:
                self.pos = handed
            if not more:
                break
            self._pending += more
            at, known = cut()
        return at

    def _begin_member(self) -> bool:
        """Start inflating the member at `buf`; stray bytes before it are damage. False at the end."""
        while len(self.buf) < len(GZIP_MAGIC) and self.fill():
            pass
        if not self.buf or self.failed is not None:
            return False
        if not self.buf.startswith(GZIP_MAGIC):
            start = self.offset
            found = self._skip_to_magic()
            self.note_damage(f"{self.offset - start} bytes that are no gzip member (compressed offset {start})")
            if not found:
                return False
        self._inflater, self._start = isal_zlib.decompressobj(_GZIP_WBITS), self.offset
        self._fed, self._fed_bytes, self._fed_from = [], 0, self._start
        return True

    def _break(self, why: str) -> None:
        if why:
            self.note_damage(f"{why} (member at compressed offset {self._start})")
        self._broken = True

    def restart(self) -> bool:
        if not self._broken or self.failed is not None:
            return False
        self._bad_in_row += 1
        if self._bad_in_row > MAX_BAD_MEMBERS:
            self.note_damage(f"gave up after {MAX_BAD_MEMBERS} damaged gzip members in a row")
            return False
        self._broken, self._pending, self._held_over = False, b"", b""
        self._history.clear()
        self._kept = 0
        self._inflater = None
        # where it failed, to the chunk of the file: within its first chunk counts as the member's start
        failed_at = max(self._start, self._fed_from)
        cheap = failed_at - self._start <= RESCAN_CHEAP  # it failed within a few KB
        if self._fed is not None and (self._start >= self._rescanned_to or cheap):
            # look again from just past the damaged member's header; inside bytes looked through already only
            # after a cheap failure: a flood of false headers each inflating far would cost time quadratic in it
            self._rescanned_to = max(self._rescanned_to, failed_at)
            if self._fed:
                self.buf = b"".join(self._fed) + self.buf
            return self._skip_to_magic(1)
        return self._skip_to_magic(1 if self.offset == self._start else 0)  # nothing inflated: past its header

    def abandon(self, why: str) -> bool:
        if self._inflater is None:  # between members: what was handed out again, or held over, is this member's rest
            self.note_damage(why)
            self._pending, self._held_over, self._kept = b"", b"", 0
            self._history.clear()
            return True
        self._break(why)
        return self.restart()

    def _skip_to_magic(self, skip: int = 0) -> bool:
        """Drop compressed bytes (at least `skip`) up to the next gzip header; False when the file ends first."""
        while True:
            found = self.buf.find(GZIP_MAGIC, skip)
            if found >= 0:
                self.buf = self.buf[found:]
                return True
            self.buf = self.buf[max(skip, len(self.buf) - len(GZIP_MAGIC) + 1) :]
            skip = 0
            if not self.fill():
                self.buf = b""
                return False


def open_stream(f: IO[bytes], name: str, offset: int = 0) -> _Stream:
    """The file as the parser reads it (gzip members inflated, or plain WARC); NotWarc when it is neither.
    A gzip file whose first members are damaged (or preceded by stray bytes) is read from its first whole one.

    `f` at compressed offset `offset`: past the file's start (where Parts hands over: the file is gzip, its first
    member a record) the stream goes on from there, as it would have reached that member."""
    if offset:
        stream = _Members(f)
        stream.compressed_pos = offset
        return stream
    probe = _Stream(f)
    while len(probe.buf) < 16 and probe.fill():
        pass
    if probe.failed is not None:
        raise probe.failed
    head = probe.buf
    gzipped = head.startswith(GZIP_MAGIC) or (not head.startswith(b"WARC/") and GZIP_MAGIC in head)
    stream = _Members(f) if gzipped else _Stream(f)
    stream.buf, stream.compressed_pos = probe.buf, probe.compressed_pos
    first = None
    for _ in range(SNIFF_MEMBERS):
        start = stream.pos
        head = stream.read(len(WARC_LINE))
        first = first or head  # the first member's head that inflated: what the error shows
        if head.startswith(b"WARC/") or not isinstance(stream, _Members):
            break
        if head:  # a damaged member may inflate to garbage before its checksum says so; a whole one is no WARC
            _read_member_on(stream)
            if stream._inflater is not None and not stream._broken:
                break  # over SNIFF_BYTES of something else
            if not stream._broken:
                stream.note_damage(f"a gzip member that holds no WARC record (compressed offset {stream._start})")
                continue
        if stream.failed is not None or not stream.restart():
            break
    if stream.failed is not None:
        raise stream.failed
    if not head.startswith(b"WARC/"):
        head = first
        if gzipped:
            what = f"gzip of something else: starts with {head[:8]!r}" if head else "gzip unreadable"
        else:
            what = f"no gzip or WARC magic: starts with {head[:8]!r}"
        raise NotWarc(f"{name}: not a WARC/WAT file ({what})")
    stream.rewind(start)
    return stream


def _read_member_on(stream: _Members) -> None:
    """Inflate the rest of the current member, up to SNIFF_BYTES, to learn whether it is damaged (what it held
    over is the rest of it too)."""
    seen, stream.one_member = 0, True
    while (stream._inflater is not None and seen < SNIFF_BYTES or stream._held_over) and not stream._broken:
        data = stream.read(READ_SIZE)
        if not data:
            break
        seen += len(data)
    stream.one_member = False


class Parts:
    """A file's parts in order, for extraction: the fast path first (_watgz.c's `reader.scan` over its regular
    gzip members, FAST_CHUNK bytes of the file read at once), and each stretch it does not read (a member that
    is not regular: damage, another kind of record, another form) as a stream for `records` over the rest of the
    file: its reader stops at the record of the next regular member (`reader.find`, within FIND_WINDOW), which
    begins at `stream.resume_pos`, and sets `stream.resumed`; the fast path reads on from there. The stream sees
    the file's bytes as they are, so it reads that stretch as the container reads a whole file. Without a regular
    member within reach, or when the stream goes past it, it reads the rest of the file. Iterating yields each
    scan's result (a tuple) and each such stream."""

    def __init__(self, f: IO[bytes], name: str, reader) -> None:
        self._f, self._name, self._reader = f, name, reader
        self._buf, self._final = bytearray(), False
        self.offset = 0  # compressed offset of _buf's first byte
        self.last: _Stream | None = None  # the stream reading now, or the one that read the rest of the file
        self._wat = False  # a WAT record was read
        self._rescanned_to = 0  # what the last stream had looked through (_Members._rescanned_to)

    @property
    def compressed_pos(self) -> int:
        return self.last.compressed_pos if self.last is not None else self.offset

    def _more(self) -> None:
        chunk = self._f.read(FAST_CHUNK)
        self._final = not chunk
        self._buf += chunk

    def _drop(self, n: int) -> None:
        self.offset += n
        del self._buf[:n]

    def __iter__(self) -> Iterator[tuple | _Stream]:
        buf, reader = self._buf, self._reader
        while True:
            if not self._final:
                self._more()
            result = reader.scan(buf, self._final)
            self._wat = self._wat or result[7]
            yield result
            self._drop(result[0])
            # a member the scan could not inflate whole before the end of what was read: waited for only while it
            # is whole as far as it goes (damage is handed over at once: the buffer stays a chunk or so)
            stop = result[1] or (buf and not self._final and not _cut_short(buf, reader.max_out))
            if not stop and not (self._final and (buf or not self.offset)):  # an empty file is handed over
                if self._final:
                    return
                continue
            # the member at buf[0] is not regular: the container's stream reads on from it, up to the next regular
            # member within reach (looked for at the file's start, or once it showed a WAT record: past its
            # warcinfo, a WARC file's records are the stream's)
            at = end = -1
            if self._wat or not self.offset:
                search = 1
                while True:
                    at, end, search = reader.find(buf, search, self._final)
                    if at >= 0 or self._final or len(buf) > FIND_WINDOW:
                        break
                    self._more()
            rest = _Rest(self, end + FIND_WINDOW if at >= 0 else -1)
            stream = rest.stream = open_stream(rest, self._name, self.offset)
            if isinstance(stream, _Members):  # damaged stretches it looked through already, as one stream would
                stream._rescanned_to = self._rescanned_to
            if at >= 0:
                stream.resume_at = self.offset + at
            self.last = stream  # where the file stands while it reads
            yield stream
            if not stream.resumed:  # it read the rest of the file
                return
            self.last = None
            self._rescanned_to = stream._rescanned_to
            self._drop(at)


def _cut_short(data: bytearray, limit: int) -> bool:
    """Whether `data` begins a gzip member that ISA-L inflates without error to its end, no more than `limit` bytes
    and not finished: cut by the end of what was read (damage, a member that ends, or a larger one: False)."""
    inflater, made = _new_inflater(_GZIP_WBITS), 0
    rest = memoryview(data)
    try:
        while True:
            made += len(inflater.decompress(rest, READ_SIZE))
            if inflater.eof or made > limit:
                return False
            rest = inflater.unconsumed_tail
            if not rest:
                return True
    except isal_zlib.error:
        return False
    finally:
        del rest


class _Rest:
    """The file from Parts' buffer on, as a stream of the container reads it: what it reads stays in the buffer
    (the fast path reads on from the member where the stream stops), up to `limit` bytes past the buffer's start;
    past that (or once the buffer is read, with `limit` -1) the stream reads on to the file's end, from the file."""

    def __init__(self, parts: Parts, limit: int) -> None:
        self._parts, self._limit, self._at = parts, limit, 0
        self.stream: _Stream | None = None  # the stream that reads it

    def read(self, size: int = -1) -> bytes:
        parts, size = self._parts, size if size > 0 else CHUNK_SIZE
        if self._at >= len(parts._buf):
            if self._at > self._limit:  # the stream reads on to the file's end: the fast path does not take over
                if self.stream is not None:
                    self.stream.resume_at = self.stream.resume_pos = None
                parts._buf.clear()
                self._at, self._limit = 0, -1
                return parts._f.read(size)
            if not parts._final:
                parts._more()
        data = bytes(parts._buf[self._at : self._at + size])
        self._at += len(data)
        return data

    def close(self) -> None:
        pass


def records(stream: _Stream, on_unparsable: Callable[[BaseException], None]) -> Iterator:
    """The stream's records as fastwarc parses them.

    A stretch the parser rejects is reported to `on_unparsable(exc)` once and skipped to the next line (or gzip
    member) that starts a record. Where the rejected stretch began is unknown, so the first place parsing
    resumes may be that very record: rejected again there, it is not reported again. After MAX_RESYNCS
    rejections in a row the rest of the member is given up. After damage to the container, parsing resumes at
    the next gzip member."""
    last = -1  # stream offset where the last record yielded began
    landed = False  # this parser began where a resync landed, and has yielded nothing yet
    retry = False  # ... and that landing may be the stretch rejected just before
    in_row = 0  # stretches rejected since the last record yielded
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
                landed = retry = False
                break
            except BaseException as exc:  # noqa: BLE001 - OSError, or a fastwarc panic (pyo3's PanicException)
                if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)):
                    raise
                if not (landed and retry):
                    on_unparsable(exc)
                retry, in_row = not landed, in_row + 1
                if in_row > MAX_RESYNCS:
                    more = stream.abandon(f"gave up after {MAX_RESYNCS} unparsable stretches in a row")
                    landed = retry = False
                    in_row = 0
                    if not more:
                        return
                    break
                if not stream.resync(last):
                    return
                landed = True
                break
            cut = stream.overrun(record.stream_pos, record.content_length)
            if cut is not None:  # its Content-Length claims the next record's member: parse on from there
                on_unparsable(ValueError(f"Content-Length {record.content_length} runs past the record's gzip member"))
                last = record.stream_pos
                if not stream.rewind(cut) and not stream.resync(last):
                    return
                landed = retry = False
                break
            last, landed, retry, in_row = record.stream_pos, False, False, 0
            yield record
            # a record larger than what was read ahead: its overrun shows once its payload was read
            cut = stream.overrun(record.stream_pos, record.content_length)
            if cut is not None and stream.rewind(cut):
                break
