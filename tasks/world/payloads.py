"""The bytes of the odd bodies the image server sends (bombs, truncated files, SVG and HTML posing as JPEG...).

The hostile ones (HOSTILE) can be far larger than an image: they are (bytes, times) runs that the server writes in
turn, built once from a few small pieces, so that no one holds a 50 MB body or loops over it in Python."""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from clipcrawl.tasks.world.behaviours import (
    BOMB_SIZE,
    GIF_FRAMES,
    GZIP_BOMB_BYTES,
    HEADER_LINE_BYTES,
    JPEG_FLOOD_BYTES,
    JPEG_ICC_BYTES,
    MANY_HEADERS,
    PNG_BOMB_MIB,
    TINY_MAX_BYTES,
    TINY_SIZE,
)
from clipcrawl.tasks.world.scenes import COLOURS, encode_image, image_spec, render_image, render_scene

MIB = 1 << 20
TEXTURE_CELLS = 24  # textured_jpeg's random cells per side
Runs = list[tuple[bytes, int]]  # a body as (bytes, times) runs, written in turn


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def pixel_bomb(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """A valid 1-bit greyscale PNG of `size` pixels, all black: ~110 KB for 30000x30000 (900 Mpx)."""
    w, h = size
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(h // 1000)) + comp.compress(row * (h % 1000))
    idat += comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _save(img: Image.Image, kind: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, kind, **kw)
    return buf.getvalue()


def _rendered(seed: int, image_id: int, scale: int = 1) -> Image.Image:
    spec = image_spec(seed, image_id)
    return render_scene(spec.scene, (spec.width * scale, spec.height * scale))


def _alpha(img: Image.Image) -> Image.Image:
    """RGBA: opaque on the left fading to a quarter on the right."""
    w, h = img.size
    ramp = Image.linear_gradient("L").rotate(90).resize((w, h)).point(lambda v: 255 - v * 3 // 4)
    out = img.convert("RGBA")
    out.putalpha(ramp)
    return out


def truncated_jpeg(seed: int, image_id: int) -> bytes:
    """The first half of a JPEG rendered at twice the image's size (so the half is still over 5 KB)."""
    data = _save(_rendered(seed, image_id, 2), "JPEG", quality=90)
    return data[: len(data) // 2]


def cmyk_jpeg(seed: int, image_id: int) -> bytes:
    return _save(_rendered(seed, image_id).convert("CMYK"), "JPEG", quality=90)


def png_alpha(seed: int, image_id: int) -> bytes:
    return _save(_alpha(_rendered(seed, image_id)), "PNG")


def webp_alpha(seed: int, image_id: int) -> bytes:
    return _save(_alpha(_rendered(seed, image_id)), "WEBP", quality=90)


def gif_animated(seed: int, image_id: int) -> bytes:
    spec = image_spec(seed, image_id)
    frames = [
        render_scene(
            type(spec.scene)(**{**spec.scene.to_dict(), "layout_seed": spec.scene.layout_seed + k}),
            (spec.width, spec.height),
        )
        for k in range(3)
    ]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=300, loop=0)


def tiny_image(seed: int, image_id: int) -> bytes:
    spec = image_spec(seed, image_id)
    data = _save(Image.new("RGB", TINY_SIZE, COLOURS[spec.scene.colour]), "PNG")
    assert len(data) < TINY_MAX_BYTES
    return data


def small_pixels(seed: int, image_id: int) -> bytes:
    """A tiny PNG made big by an uncompressed text chunk, as camera and editor metadata do."""
    info = PngInfo()
    info.add_text("Comment", random.Random(f"meta:{seed}:{image_id}").randbytes(4000).hex())
    return _save(_rendered(seed, image_id), "PNG", pnginfo=info)


def textured_jpeg(seed: int, image_id: int) -> bytes:
    """The scene over a fine random texture: detail like a photo's, so that its PDQ hash is of full quality (a flat
    synthetic scene's is not: PDQ ignores featureless images) and stable under a resize and re-encode."""
    img = _rendered(seed, image_id)
    side = TEXTURE_CELLS
    noise = Image.frombytes("RGB", (side, side), random.Random(f"texture:{seed}:{image_id}").randbytes(side * side * 3))
    return _save(Image.blend(img, noise.resize(img.size, Image.Resampling.BICUBIC), 0.6), "JPEG", quality=90)


def svg_document(seed: int, image_id: int) -> bytes:
    spec = image_spec(seed, image_id)
    rng = random.Random(f"svg:{seed}:{image_id}")
    w, h = spec.width, spec.height
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">\n',
        f'<rect width="{w}" height="{h}" fill="{spec.scene.background}"/>\n',
    ]
    while sum(map(len, parts)) < 8000:
        parts.append(
            f'<circle cx="{rng.randrange(w)}" cy="{rng.randrange(h)}" r="{rng.randint(2, 20)}" '
            f'fill="{spec.scene.colour}" opacity="0.{rng.randint(1, 9)}"/>\n'
        )
    parts.append("</svg>\n")
    return "".join(parts).encode()


def html_page(seed: int, image_id: int) -> bytes:
    """A 'soft 404': the CMS's error page, sent with status 200 and the image's content type."""
    rows = "".join(
        f'<li><a href="/gallery/{i}.html">Gallery {i}: more pictures from our archive</a></li>\n' for i in range(120)
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Page not found</title></head>\n'
        f"<body>\n<h1>Sorry, image {image_id:06d} is no longer available</h1>\n<ul>\n{rows}</ul>\n"
        f"</body>\n</html>\n"
    ).encode()


def stream_chunk() -> bytes:
    """64 KiB of an endless body: a JPEG start of image, then filler."""
    return b"\xff\xd8\xff\xe0" + b"\x00" * 65532


BODIES = {
    "truncated_jpeg": truncated_jpeg,
    "cmyk_jpeg": cmyk_jpeg,
    "png_alpha": png_alpha,
    "webp_alpha": webp_alpha,
    "gif_animated": gif_animated,
    "tiny_image": tiny_image,
    "small_pixels": small_pixels,
    "svg_as_jpeg": svg_document,
    "html_as_jpeg": html_page,
    "empty_body": lambda seed, image_id: b"",
    "pixel_bomb": lambda seed, image_id: pixel_bomb(),
    "pdq_listed": textured_jpeg,
}


def joined(runs: Runs) -> bytes:
    """The whole body (for tests of the smaller ones)."""
    return b"".join(part * times for part, times in runs)


@functools.cache
def _zeros_deflated() -> tuple[bytes, bytes, bytes]:
    """Raw deflate of zeros: the first MiB, each later MiB (the same bytes every time, since a full flush resets the
    compressor), and the final block. Deflate's ratio on zeros is ~1000: each MiB is ~1 KB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MIB)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    later = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    return first, later, c.flush()


def _checksum(fn, start: int, mib: int) -> int:
    zeros, value = bytes(MIB), start
    for _ in range(mib):
        value = fn(zeros, value)
    return value


@functools.cache
def gzip_bomb() -> Runs:
    """One gzip member of GZIP_BOMB_BYTES zero bytes (~2 MB)."""
    mib = GZIP_BOMB_BYTES // MIB
    first, later, end = _zeros_deflated()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no time, best compression
    trailer = struct.pack("<II", _checksum(zlib.crc32, 0, mib), GZIP_BOMB_BYTES & 0xFFFFFFFF)
    return [(header + first, 1), (later, mib - 1), (end + trailer, 1)]


@functools.cache
def _zlib_zeros(mib: int) -> bytes:
    """A zlib stream of `mib` MiB of zeros, as PNG's compressed chunks hold."""
    first, later, end = _zeros_deflated()
    return b"\x78\xda" + first + later * (mib - 1) + end + struct.pack(">I", _checksum(zlib.adler32, 1, mib))


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_icc_bomb(seed: int, image_id: int) -> Runs:
    """The image's JPEG after JPEG_ICC_BYTES of full-size ICC_PROFILE APP2 segments (64 KB each, the most one holds)."""
    jpeg = render_image(seed, image_id, "jpg")
    icc = _jpeg_segment(0xE2, b"ICC_PROFILE\0\x01\x01".ljust(0xFFFF - 2, b"\0"))
    return [(jpeg[:2], 1), (icc, -(-JPEG_ICC_BYTES // len(icc))), (jpeg[2:], 1)]


def jpeg_metadata_flood(seed: int, image_id: int) -> Runs:
    """The image's JPEG after JPEG_FLOOD_BYTES of the smallest metadata segments: empty APP3s (Pillow keeps each in
    a list), then Exif APP1s of 10 bytes (Pillow joins each to the ones before it: quadratic)."""
    jpeg = render_image(seed, image_id, "jpg")
    empty, exif = _jpeg_segment(0xE3, b""), _jpeg_segment(0xE1, b"Exif\0\0" + bytes(10))
    half = JPEG_FLOOD_BYTES // 2
    return [(jpeg[:2], 1), (empty, half // len(empty)), (exif, half // len(exif)), (jpeg[2:], 1)]


def png_metadata_bomb(seed: int, image_id: int) -> Runs:
    """The image's PNG with an iCCP and a zTXt chunk, each inflating to PNG_BOMB_MIB MiB, between IHDR and the pixels."""
    png = render_image(seed, image_id, "png")
    ihdr_end = 8 + 8 + 13 + 4
    bombs = _png_chunk(b"iCCP", b"ICC profile\0\0" + _zlib_zeros(PNG_BOMB_MIB))
    bombs += _png_chunk(b"zTXt", b"Comment\0\0" + _zlib_zeros(PNG_BOMB_MIB))
    return [(png[:ihdr_end] + bombs + png[ihdr_end:], 1)]


def _gif_frame(gif: bytes) -> bytes:
    """The image block (descriptor, colour table, LZW data) of a one-frame GIF that Pillow wrote, carrying the
    file's global colour table as its own, so that it can follow any GIF's frames."""
    flags = gif[10]
    table = gif[13 : 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)]
    pos = 13 + len(table)
    while gif[pos] == 0x21:  # an extension before the image: skip its sub-blocks
        pos += 2
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    assert gif[pos] == 0x2C and gif.endswith(b";"), "not a one-frame GIF"
    if gif[pos + 9] & 0x80 or not table:  # a local colour table already
        return gif[pos:-1]
    return gif[pos : pos + 9] + bytes([gif[pos + 9] | 0x80 | (flags & 7)]) + table + gif[pos + 10 : -1]


def gif_many_frames(seed: int, image_id: int) -> Runs:
    """GIF_FRAMES frames of the image's size: the image, then the same flat frame (a decoder that decoded every
    frame would work for each)."""
    spec = image_spec(seed, image_id)
    gif = render_image(seed, image_id, "gif")
    flat = _gif_frame(encode_image(Image.new("RGB", (spec.width, spec.height), COLOURS[spec.scene.background]), "gif"))
    return [(gif[:-1], 1), (flat, GIF_FRAMES - 1), (b";", 1)]


HOSTILE = {
    "gzip_bomb": lambda seed, image_id: gzip_bomb(),
    "jpeg_icc_bomb": jpeg_icc_bomb,
    "jpeg_metadata_flood": jpeg_metadata_flood,
    "png_metadata_bomb": png_metadata_bomb,
    "gif_many_frames": gif_many_frames,
}


@functools.cache
def header_flood(behaviour: str) -> bytes:
    """The header lines a response of `behaviour` carries besides its usual ones (CRLF-ended)."""
    if behaviour == "huge_header_line":
        return b"X-Padding: " + b"a" * (HEADER_LINE_BYTES - len(b"X-Padding: ")) + b"\r\n"
    if behaviour == "many_headers":
        return b"".join(b"X-Header-%d: %d\r\n" % (i, i) for i in range(MANY_HEADERS))
    raise ValueError(f"no header flood for {behaviour!r}")


def body(seed: int, image_id: int, behaviour: str, fmt: str) -> bytes:
    """What the server sends for image `image_id` requested as `fmt`: the ordinary image unless its behaviour has a
    body in BODIES (a HOSTILE behaviour's body is its runs)."""
    make = BODIES.get(behaviour)
    return make(seed, image_id) if make else render_image(seed, image_id, fmt)
