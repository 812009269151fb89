"""The bytes of the odd bodies the image server sends (bombs, truncated files, SVG and HTML posing as JPEG...)."""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from clipcrawl.tasks.world.behaviours import BOMB_SIZE, TINY_MAX_BYTES, TINY_SIZE
from clipcrawl.tasks.world.scenes import COLOURS, image_spec, render_image, render_scene


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
}


def body(seed: int, image_id: int, behaviour: str, fmt: str) -> bytes:
    """What the server sends for image `image_id` requested as `fmt` (the ordinary image unless its behaviour has its own)."""
    make = BODIES.get(behaviour)
    return make(seed, image_id) if make else render_image(seed, image_id, fmt)
