"""The metadata of a downloaded image, dropped before Pillow parses it.

Pillow parses metadata in Python and keeps all of it: every JPEG APPn and COM segment in a list (and it joins
each Exif APP1 to the ones before it, which is quadratic), every PNG text chunk inflated up to MAX_TEXT_CHUNK
(refusing the whole file past it or past MAX_TEXT_MEMORY), every private PNG chunk, every sub-block of a GIF's
comments. A file of a few MB of tiny segments or sub-blocks thus costs seconds to minutes and many times its size
in memory (docs/download.md has the figures). The stage writes none of that metadata to its shards and needs only
what decoding and orientation read, so `strip_metadata` gives Pillow the file without the rest: one pass over the
segment headers, linear in the file, copying what it keeps to one buffer the size of the output.
"""

from __future__ import annotations

import io
import re

# JPEG: the APPn segments that decoding or orientation read, by marker: their signature and the shortest payload their
# reader takes (libjpeg's for JFIF and Adobe, Pillow's for Exif and XMP). Every other APPn and COM goes.
# libjpeg needs one JFIF (it says YCbCr) and Pillow reads the orientation from the first Exif: the first stays where
# it is.
_JPEG_FIRST = {0xE0: (b"JFIF\0", 14), 0xE1: (b"Exif\0\0", 6)}
# Pillow reads the last XMP (the orientation, when Exif has none) and libjpeg the last Adobe (the colour transform):
# each is dropped where it is and the last put back before the scan, where both still read it.
_JPEG_LAST = {0xE1: (b"http://ns.adobe.com/xap/1.0/\0", 29), 0xEE: (b"Adobe", 12)}
# A marker, after any fill bytes: 0xFF then a byte from 0xC0 (what Pillow reads as a marker; it skips the rest).
_JPEG_MARKER = re.compile(rb"\xff(?=[\xc0-\xfe])")
_JPEG_STANDALONE = frozenset([0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)])  # no length field, as Pillow reads them
_JPEG_SOS = 0xDA  # start of scan: the image data follows
# PNG: the chunks decoding and orientation read; the others (text, ICC profiles, private chunks, APNG frames
# after the default image) go.
_PNG_KEPT = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"eXIf"})
# GIF: what Pillow reads before the first image: an extension (0x21), the image (0x2C) or the end (0x3B); it skips
# any other byte.
_GIF_BLOCK = re.compile(rb"[\x21\x2c\x3b]")
_GIF_COMMENT = 0xFE


def _kept(body: bytes, view: memoryview, out: io.BytesIO, start: int, insert: bytes = b"", at: int = 0) -> bytes:
    """The body from what was kept before `start` (in `out`) and everything from `start` on, with `insert` put in at
    `at` (the body itself when nothing was dropped)."""
    if start == 0:
        return body
    at = max(at, start)
    for piece in (view[start:at], insert, view[at:]):
        out.write(piece)
    return out.getvalue()  # the buffer itself, not a copy


def strip_metadata(body: bytes) -> bytes:
    """`body` without the metadata Pillow would hoard (JPEG, PNG and GIF; other bodies as they are)."""
    if body.startswith(b"\xff\xd8"):
        return _jpeg(body)
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(body)
    if body.startswith((b"GIF87a", b"GIF89a")):
        return _gif(body)
    return body


def _jpeg(body: bytes) -> bytes:
    # Each walker copies the stretches between the ranges it drops to `out` as it goes (everything from `start` on is
    # still to come): never an object per stretch kept or dropped, since a flood has millions of each.
    view, out, start, end = memoryview(body), io.BytesIO(), 0, len(body)
    first, last = set(), {}
    pos = 2
    while pos + 4 <= end:
        marker = body[pos + 1]
        if body[pos] != 0xFF or marker < 0xC0 or marker == 0xFF:  # not at a marker: find the next one
            if (found := _JPEG_MARKER.search(body, pos)) is None:
                break
            pos = found.start()
            continue
        if marker == _JPEG_SOS:
            break
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        length = body[pos + 2] << 8 | body[pos + 3]
        if length < 2:  # no segment is that short: what follows is Pillow's to judge
            break
        stop = pos + 2 + length
        if marker >= 0xE0:  # APPn or COM
            if marker in _JPEG_FIRST and marker not in first and _of_kind(_JPEG_FIRST[marker], body, pos, length):
                first.add(marker)
            else:
                if pos > start:
                    out.write(view[start:pos])
                start = stop
                if marker in _JPEG_LAST and _of_kind(_JPEG_LAST[marker], body, pos, length):
                    last[marker] = (pos, stop)
        pos = stop
    return _kept(body, view, out, start, b"".join(body[begin:stop] for begin, stop in sorted(last.values())), pos)


def _of_kind(kind: tuple[bytes, int], body: bytes, pos: int, length: int) -> bool:
    """Whether the segment at `pos` is of that kind: its signature, and a payload its reader takes."""
    signature, shortest = kind
    return length - 2 >= shortest and body.startswith(signature, pos + 4)


def _png(body: bytes) -> bytes:
    view, out, start, end = memoryview(body), io.BytesIO(), 0, len(body)
    pos = 8
    while pos + 12 <= end:
        kind = body[pos + 4 : pos + 8]
        stop = pos + 12 + int.from_bytes(body[pos : pos + 4])
        if stop > end or kind == b"IEND":  # a cut-off chunk, or the end: what follows is Pillow's to judge
            break
        if kind not in _PNG_KEPT:
            if pos > start:
                out.write(view[start:pos])
            start = stop
        pos = stop
    return _kept(body, view, out, start)


def _gif(body: bytes) -> bytes:
    view, out, start, end = memoryview(body), io.BytesIO(), 0, len(body)
    flags = body[10] if end > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the header and the global colour table
    while (found := _GIF_BLOCK.search(body, pos)) is not None and body[found.start()] == 0x21:
        begin = found.start()
        pos = begin + 2
        while pos < end and (size := body[pos]):  # the extension's sub-blocks, up to the empty one
            pos += size + 1
        pos += 1
        if begin + 1 < end and body[begin + 1] == _GIF_COMMENT:
            if begin > start:
                out.write(view[start:begin])
            start = pos
    return _kept(body, view, out, start)
