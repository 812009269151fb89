"""strip_metadata: what Pillow decodes is unchanged, the metadata it would hoard is gone, any bytes are safe."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from clipcrawl.tasks.download.metadata import strip_metadata
from clipcrawl.tasks.world.payloads import HOSTILE, joined
from clipcrawl.tasks.world.scenes import render_image


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def scene(mode: str = "RGB", size: tuple[int, int] = (48, 32)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def opened(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


def orientation_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def text(n: int) -> PngInfo:
    info = PngInfo()
    info.add_text("Comment", "a comment")
    info.add_text("Description", "z" * n, zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x/>", zip=True)
    return info


# Images as editors and cameras write them (here Pillow): metadata we never use beside what decoding reads.
WITH_METADATA = {
    "jpeg exif icc comment": lambda: save(
        scene(), "JPEG", exif=orientation_exif(), icc_profile=SRGB, comment=b"a comment", quality=90
    ),
    "cmyk jpeg (adobe)": lambda: save(scene("CMYK"), "JPEG", icc_profile=SRGB, quality=90),
    "progressive jpeg": lambda: save(scene(), "JPEG", progressive=True, icc_profile=SRGB, quality=90),
    "png text icc": lambda: save(scene(), "PNG", pnginfo=text(1000), icc_profile=SRGB),
    "png palette transparency": lambda: save(scene("P"), "PNG", transparency=3, pnginfo=text(10)),
    "png exif": lambda: save(scene(), "PNG", exif=orientation_exif(), pnginfo=text(10)),
    "apng": lambda: save(scene(), "PNG", save_all=True, append_images=[scene("L").convert("RGB")], pnginfo=text(10)),
    "gif comment": lambda: save(scene("P"), "GIF", comment=b"c" * 2000, transparency=1),
    "animated gif comment": lambda: save(
        scene("P"), "GIF", save_all=True, append_images=[scene("L").convert("P")], comment=b"c" * 300, loop=0
    ),
}


@pytest.mark.parametrize("name", WITH_METADATA)
def test_what_decoding_reads_is_kept(name):
    body = WITH_METADATA[name]()
    stripped = strip_metadata(body)
    assert len(stripped) < len(body), "something was dropped"
    before, after = opened(body), opened(stripped)
    assert (after.format, after.mode, after.size) == (before.format, before.mode, before.size)
    assert np.array_equal(np.asarray(after), np.asarray(before))
    assert after.getexif().get(0x0112) == before.getexif().get(0x0112)
    assert after.info.get("transparency") == before.info.get("transparency")
    assert not {"icc_profile", "comment", "Comment", "Description", "XML:com.adobe.xmp"} & set(after.info)


@pytest.mark.parametrize(
    "body",
    [
        save(scene(), "JPEG"),
        save(scene(), "PNG"),
        save(scene("P"), "GIF"),
        save(scene(), "WEBP"),
        b"<html>not an image</html>",
        b"",
    ],
    ids=["jpeg", "png", "gif", "webp", "html", "empty"],
)
def test_a_body_without_such_metadata_is_returned_as_it_is(body):
    assert strip_metadata(body) is body


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_floods_are_dropped_whole():
    jpeg = save(scene(), "JPEG")  # SOI, JFIF APP0, ...
    flood = jpeg_segment(0xE3, b"") * 1000 + jpeg_segment(0xFE, b"x") * 1000 + jpeg_segment(0xE0, b"JFIF\0") * 10
    assert strip_metadata(jpeg[:2] + jpeg[2:20] + flood + jpeg[20:]) == jpeg  # the first JFIF stays, the rest go
    png = save(scene(), "PNG")
    flood = png_chunk(b"prIv", b"") * 1000 + png_chunk(b"tEXt", b"k\0v") * 1000
    assert strip_metadata(png[:33] + flood + png[33:]) == png
    gif = save(scene("P"), "GIF")
    start = 13 + (3 << ((gif[10] & 7) + 1))  # after the global colour table
    flood = b"\x21\xfe" + b"\x01c" * 1000 + b"\x00"
    assert strip_metadata(gif[:start] + flood * 3 + gif[start:]) == gif


def xmp(orientation: int) -> bytes:
    """XMP as cameras and editors write it, holding only an orientation."""
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>'
        % orientation
    )


def app_segments(img: Image.Image, name: str) -> list[bytes]:
    return [s for app, s in img.applist if app == name]


def test_the_last_xmp_gives_the_orientation_when_exif_has_none():
    # Pillow reads the orientation from the last XMP APP1 when there is no Exif orientation.
    jpeg = save(scene(), "JPEG", xmp=xmp(6))
    body = jpeg[:2] + jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp(8)) * 1000 + jpeg[2:]
    before, after = opened(body), opened(strip_metadata(body))
    assert before.getexif().get(0x0112) == after.getexif().get(0x0112) == 6
    assert len(app_segments(after, "APP1")) == 1
    assert np.array_equal(np.asarray(after), np.asarray(before))


def adobe(transform: int) -> bytes:
    """An Adobe APP14 segment as libjpeg writes it: version 100, no flags, the colour transform."""
    return jpeg_segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, transform))


def test_the_last_adobe_segment_gives_the_colour_transform():
    # An RGB JPEG without JFIF: its Adobe segment (transform 0, no YCbCr) is what tells libjpeg the colours are RGB,
    # and libjpeg reads the last Adobe segment of the file. Pillow would keep every one of the flood.
    jpeg = save(scene(), "JPEG", keep_rgb=True, quality=95)
    body = jpeg[:2] + adobe(1) * 1000 + jpeg[2:]
    before, after = opened(body), opened(strip_metadata(body))
    assert np.array_equal(np.asarray(after), np.asarray(before))
    assert np.abs(np.asarray(after, int) - np.asarray(scene(), int)).mean() < 8  # RGB read as RGB, not as YCbCr
    assert len(app_segments(after, "APP14")) == 1


def jfif(thumbnail: bool = True) -> bytes:
    """A JFIF APP0 segment: version 1.01, no density; libjpeg reads it only with the thumbnail's size (14 bytes)."""
    return jpeg_segment(0xE0, b"JFIF\0" + struct.pack(">HBHH", 0x101, 0, 1, 1) + b"\0\0" * thumbnail)


@pytest.mark.parametrize(
    "segments",
    [
        [adobe(1), adobe(0), jpeg_segment(0xEE, b"Adobe" + struct.pack(">H", 100))],
        [jfif(thumbnail=False), adobe(0), jfif()],
    ],
    ids=["a-short-adobe-after-the-last-whole-one", "a-short-jfif-before-a-whole-one"],
)
def test_segments_too_short_for_libjpeg_do_not_count(segments):
    # On a YCbCr JPEG without JFIF, what libjpeg reads of these segments decides between YCbCr and RGB.
    jpeg = save(scene(), "JPEG", quality=95)
    without_jfif = jpeg[:2] + jpeg[4 + struct.unpack(">H", jpeg[4:6])[0] :]
    body = without_jfif[:2] + b"".join(segments) + without_jfif[2:]
    before, after = opened(body), opened(strip_metadata(body))
    assert np.array_equal(np.asarray(after), np.asarray(before))


def test_the_worlds_hostile_metadata_is_dropped():
    jpeg, png = render_image(5, 27, "jpg"), render_image(5, 27, "png")
    first_exif = jpeg_segment(0xE1, b"Exif\0\0" + bytes(10))  # the first of its kind stays, as a camera's would
    assert strip_metadata(joined(HOSTILE["jpeg_metadata_flood"](5, 27))) == jpeg[:2] + first_exif + jpeg[2:]
    assert strip_metadata(joined(HOSTILE["png_metadata_bomb"](5, 27))) == png


def test_any_bytes_give_bytes_no_longer_than_they_were():
    rng = random.Random(23)
    seeds = [body() for body in WITH_METADATA.values()]
    for _ in range(600):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(body))
            body[at] = rng.choice([0x00, 0xFF, 0xD8, 0xDA, 0xE1, 0xFE, 0x21, 0x2C, rng.randrange(256)])
        body = bytes(body[: rng.randint(0, len(body))])
        assert len(strip_metadata(body)) <= len(body)
