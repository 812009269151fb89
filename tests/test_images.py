import hashlib
import io
import json
import pickle
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.download import blocklist
from clipcrawl.tasks.download.images import ImageResult, plan_resize, process_image
from clipcrawl.tasks.world.payloads import HOSTILE, joined
from clipcrawl.tasks.world.scenes import image_spec

S = DownloadSettings(image_size=64, resize_mode="no", encode_format="png", encode_quality=1)


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients + mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def decode(result: ImageResult) -> np.ndarray:
    assert result.status == DownloadStatus.SUCCESS, result.error_message
    img = Image.open(io.BytesIO(result.data))
    assert img.mode == "RGB"
    assert img.size == (result.width, result.height)
    return np.asarray(img).astype(int)


def png_header_only(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid PNG of the given size whose pixels are all zero: tiny when compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---- conversions to RGB


def test_cmyk_jpeg_becomes_rgb():
    body = save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)
    px = decode(process_image(body, S))[15, 20]
    assert px[0] > 240 and px[1] < 20 and px[2] < 20  # red


def test_rgba_png_is_composited_on_white():
    img = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 128))
    img.putpixel((2, 0), (0, 0, 255, 255))
    out = decode(process_image(save(img, "PNG"), S))[0]
    assert out[0].tolist() == [255, 255, 255]
    assert abs(out[1] - [255, 127, 127]).max() <= 2
    assert out[2].tolist() == [0, 0, 255]


def test_la_png_is_composited_on_white():
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (0, 255))
    out = decode(process_image(save(img, "PNG"), S))[0]
    assert out.tolist() == [[255, 255, 255], [0, 0, 0]]


def test_palette_png_with_transparency():
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = decode(process_image(save(img, "PNG", transparency=0), S))[0]
    assert out.tolist() == [[255, 255, 255], [0, 255, 0]]


def test_16_bit_png_is_scaled_not_clipped():
    a = np.array([[0, 25600, 32768, 65535]], dtype=np.uint16)
    body = save(Image.fromarray(a), "PNG")
    assert Image.open(io.BytesIO(body)).mode.startswith("I")
    out = decode(process_image(body, S))[0, :, 0]
    assert out.tolist() == [0, 100, 128, 255]


def test_greyscale_and_1_bit():
    grey = Image.new("L", (2, 1), 0)
    grey.putpixel((1, 0), 200)
    assert decode(process_image(save(grey, "PNG"), S))[0].tolist() == [[0, 0, 0], [200, 200, 200]]
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    assert decode(process_image(save(bits, "PNG"), S))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_animated_gif_and_webp_take_the_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP"):
        body = save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert getattr(Image.open(io.BytesIO(body)), "n_frames", 1) == 2
        px = decode(process_image(body, S))[8, 8]
        assert px[0] > 240 and px[2] < 20, fmt


def test_webp_rgb():
    body = save(photo(80, 60), "WEBP", quality=90)
    r = process_image(body, S.model_copy(update={"resize_mode": "border"}))
    assert (r.width, r.height, r.original_width, r.original_height) == (64, 64, 80, 60)


# a PDQ list (that lists nothing of these images) changes the order of decoding, hashing and orienting
NO_PDQ_MATCH = blocklist.Blocklists(pdq=[("none", blocklist.PdqIndex(np.zeros(32, np.uint8)))])


@pytest.mark.parametrize("lists", [None, NO_PDQ_MATCH], ids=["no lists", "a PDQ list"])
def test_exif_orientation_is_applied(lists):
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    r = process_image(save(img, "JPEG", exif=exif.tobytes(), quality=95), S, lists=lists)
    assert (r.original_width, r.original_height, r.width, r.height) == (40, 60, 40, 60)
    out = decode(r)
    assert out[5, 20, 0] > 200 and out[55, 20, 2] > 200  # red on top, blue at the bottom


def test_xmp_orientation_is_applied_when_there_is_no_exif():
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    r = process_image(save(img, "JPEG", xmp=xmp, quality=95), S)
    assert (r.original_width, r.original_height, r.width, r.height) == (40, 60, 40, 60)
    out = decode(r)
    assert out[5, 20, 0] > 200 and out[55, 20, 2] > 200  # red on top, blue at the bottom


def test_exif_orientation_with_draft_gives_exact_size():
    exif = Image.Exif()
    exif[0x0112] = 8
    body = save(photo(1200, 800), "JPEG", exif=exif.tobytes(), quality=90)
    r = process_image(body, DownloadSettings(image_size=100, resize_mode="keep_ratio"))
    assert (r.original_width, r.original_height, r.width, r.height) == (800, 1200, 100, 150)


# ---- failures


def test_truncated_jpeg_is_a_decode_error():
    body = save(photo(200, 150), "JPEG", quality=90)
    r = process_image(body[: len(body) // 2], S)
    assert r.status == DownloadStatus.DECODE_ERROR and r.data is None
    assert r.original_width == 200  # the header was readable
    assert process_image(body[:40], S).status == DownloadStatus.DECODE_ERROR


def test_truncated_png_is_a_decode_error():
    body = save(photo(100, 100), "PNG")
    assert process_image(body[: len(body) // 2], S).status == DownloadStatus.DECODE_ERROR


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<!DOCTYPE html><html><body>404 not found</body></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        b"just some text" * 100,
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS would start Ghostscript: never opened
    ],
)
def test_not_an_image(body):
    r = process_image(body, S)
    assert r.status == DownloadStatus.NOT_AN_IMAGE and r.data is None and r.error_message


def test_decompression_bomb_is_refused_from_the_header():
    body = png_header_only(30000, 30000)  # 900 Mpixels, ~100 KB
    assert len(body) < 200_000
    started = time.perf_counter()
    r = process_image(body, DownloadSettings())
    assert r.status == DownloadStatus.TOO_MANY_PIXELS
    assert time.perf_counter() - started < 0.5


def test_pixel_cap_from_settings():
    body = png_header_only(3000, 2000)
    r = process_image(body, DownloadSettings(max_image_pixels=5_000_000))
    assert r.status == DownloadStatus.TOO_MANY_PIXELS and (r.original_width, r.original_height) == (3000, 2000)
    assert process_image(body, DownloadSettings(max_image_pixels=6_000_000)).status == DownloadStatus.SUCCESS


def test_min_image_size_and_aspect_ratio_use_the_original_size():
    body = save(photo(30, 10), "PNG")
    assert process_image(body, S.model_copy(update={"min_image_size": 11})).status == DownloadStatus.TOO_SMALL_PIXELS
    assert process_image(body, S.model_copy(update={"min_image_size": 10})).status == DownloadStatus.SUCCESS
    assert process_image(body, S.model_copy(update={"max_aspect_ratio": 2.9})).status == DownloadStatus.BAD_ASPECT_RATIO
    assert process_image(body, S.model_copy(update={"max_aspect_ratio": 3.0})).status == DownloadStatus.SUCCESS


# ---- resize modes (img2dataset's)


@pytest.mark.parametrize(
    "mode,size",
    [
        ("no", (1000, 800)),
        ("border", (256, 256)),
        ("keep_ratio", (320, 256)),
        ("keep_ratio_largest", (256, 205)),
        ("center_crop", (256, 256)),
    ],
)
def test_resize_modes(mode, size):
    body = save(photo(1000, 800), "JPEG", quality=90)
    r = process_image(body, DownloadSettings(resize_mode=mode))
    assert (r.width, r.height) == size and (r.original_width, r.original_height) == (1000, 800)
    assert decode(r).shape[:2] == size[::-1]


def test_border_pads_with_white_centred():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    out = decode(
        process_image(save(img, "PNG"), DownloadSettings(image_size=100, resize_mode="border", encode_format="png"))
    )
    assert out.shape == (100, 100, 3)
    assert (out[:25] == 255).all() and (out[75:] == 255).all() and (out[25:75] == 0).all()


def test_upscaling_and_resize_only_if_bigger():
    body = save(photo(100, 80), "PNG")
    up = process_image(body, DownloadSettings(resize_mode="border"))
    assert (up.width, up.height) == (256, 256)
    for mode in ("border", "keep_ratio", "keep_ratio_largest", "center_crop"):
        kept = process_image(body, DownloadSettings(resize_mode=mode, resize_only_if_bigger=True))
        assert (kept.width, kept.height) == (100, 80), mode


def test_plan_resize_matches_img2dataset_rounding():
    s = DownloadSettings(image_size=256, resize_mode="center_crop")
    assert plan_resize(333, 500, s) == ((256, 384), (0, 64, 256, 320), None)
    s = DownloadSettings(image_size=256, resize_mode="border")
    assert plan_resize(500, 333, s) == ((256, 170), None, (256, 256))
    s = DownloadSettings(image_size=256, resize_mode="keep_ratio_largest")
    assert plan_resize(100000, 10, s) == ((256, 1), None, None)


def test_draft_gives_the_same_size_and_nearly_the_same_pixels():
    body = save(photo(2000, 1500), "JPEG", quality=90)
    for mode in ("border", "keep_ratio", "center_crop", "keep_ratio_largest"):
        s = DownloadSettings(resize_mode=mode, encode_format="png")
        fast, slow = process_image(body, s), process_image(body, s, draft=False)
        assert (fast.width, fast.height) == (slow.width, slow.height)
        assert np.abs(decode(fast) - decode(slow)).mean() < 3, mode


def test_draft_is_faster_on_big_jpegs():
    body = save(photo(2000, 1500), "JPEG", quality=90)
    s = DownloadSettings()

    def best(**kw):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            process_image(body, s, **kw)
            times.append(time.perf_counter() - started)
        return min(times)

    assert best() < best(draft=False)


@pytest.mark.parametrize("fmt,pil", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encode_formats_and_hash(fmt, pil):
    body = save(photo(300, 200), "JPEG", quality=90)
    r = process_image(body, DownloadSettings(encode_format=fmt, encode_quality=80 if fmt != "png" else 6))
    assert Image.open(io.BytesIO(r.data)).format == pil
    assert r.sha256 == hashlib.sha256(body).hexdigest()


def test_function_and_result_are_picklable():
    r = process_image(save(photo(50, 50), "PNG"), S)
    assert pickle.loads(pickle.dumps(r)) == r
    assert pickle.loads(pickle.dumps(process_image)) is process_image


# ---- hostile files: bounded memory and time, whatever their metadata or frames


PROCESS_IN_A_FRESH_INTERPRETER = """
import json, sys, time
from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.download.images import process_image

def peak():  # VmHWM: this process's peak resident memory so far, in bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

with open(sys.argv[1], "rb") as f:
    body = f.read()
before, started = peak(), time.perf_counter()
r = process_image(body, DownloadSettings())
seconds, growth = time.perf_counter() - started, peak() - before
print(json.dumps({"status": r.status, "size": [r.original_width, r.original_height], "seconds": seconds,
                  "growth": growth, "error": r.error_message}))
"""
PEAK_GROWTH = 32 << 20  # one small image decoded and re-encoded, and room for a copy of the body
HOSTILE_SECONDS = 5.0  # a metadata walk over the largest body (max_bytes), on a loaded machine


def processed_in_a_fresh_process(tmp_path, body: bytes) -> dict:
    """process_image with the default settings in a new interpreter, which has read the body before it starts:
    the status, the image's size, the seconds it took and how much its peak resident memory grew meanwhile."""
    path = tmp_path / "body"
    path.write_bytes(body)
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_IN_A_FRESH_INTERPRETER, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


def png_text_memory_bomb() -> bytes:
    """A PNG whose zTXt chunks, as Pillow writes them, inflate to more text than its MAX_TEXT_MEMORY (64 MB)."""
    info = PngInfo()
    for i in range(70):
        info.add_text(f"Comment {i}", "0" * 1_000_000, zip=True)
    return save(photo(64, 48), "PNG", pnginfo=info)


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_app_flood() -> bytes:
    """A JPEG just under max_bytes (20 MB) of empty APP3 segments, the smallest segment there is, then its image."""
    jpeg = save(photo(64, 48), "JPEG")
    return jpeg[:2] + jpeg_segment(0xE3, b"") * (19_900_000 // 4) + jpeg[2:]


def jpeg_restart_comment_flood() -> bytes:
    """A JPEG just under max_bytes (20 MB) of restart intervals (kept) alternating with empty comments (dropped)."""
    jpeg = save(photo(64, 48), "JPEG")
    return jpeg[:2] + (jpeg_segment(0xDD, b"\0\0") + jpeg_segment(0xFE, b"")) * (19_900_000 // 10) + jpeg[2:]


def gif_comment_flood() -> bytes:
    """A GIF whose image follows a comment of sub-blocks of 2 bytes, just under max_bytes (20 MB)."""
    gif = save(photo(64, 48).convert("P"), "GIF")
    start = 13 + (3 << ((gif[10] & 7) + 1))  # after the global colour table
    return gif[:start] + b"\x21\xfe" + b"\x02cc" * (19_900_000 // 3) + b"\x00" + gif[start:]


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda: joined(HOSTILE["jpeg_metadata_flood"](5, 27)), (image_spec(5, 27).width, image_spec(5, 27).height)),
        (lambda: joined(HOSTILE["png_metadata_bomb"](5, 27)), (image_spec(5, 27).width, image_spec(5, 27).height)),
        (lambda: joined(HOSTILE["gif_many_frames"](5, 27)), (image_spec(5, 27).width, image_spec(5, 27).height)),
        (jpeg_app_flood, (64, 48)),
        (jpeg_restart_comment_flood, (64, 48)),
        (png_text_memory_bomb, (64, 48)),
        (gif_comment_flood, (64, 48)),
    ],
    ids=[
        "world-jpeg-metadata-flood",
        "world-png-metadata-bomb",
        "world-gif-10000-frames",
        "jpeg-20MB-of-empty-segments",
        "jpeg-20MB-of-restarts-and-comments",
        "png-70MB-of-ztxt",
        "gif-20MB-comment",
    ],
)
def test_hostile_metadata_and_frames_cost_bounded_memory_and_time(tmp_path, make, size):
    # The metadata is dropped before Pillow parses it (the image itself is fine: success), and of a GIF only the
    # first frame is decoded.
    r = processed_in_a_fresh_process(tmp_path, make())
    assert (r["status"], tuple(r["size"])) == (DownloadStatus.SUCCESS, size), r
    assert r["growth"] < PEAK_GROWTH, r
    assert r["seconds"] < HOSTILE_SECONDS, r
