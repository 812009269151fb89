"""Downloaded bytes -> a checked, RGB, resized, re-encoded image (img2dataset's resizer, on Pillow).

`process_image` is CPU-bound and runs in the shard task's pool of threads: a plain top-level function
that mutates no module state but the pixel budget of PDQ decodes in flight (the known-bad lists it checks
are loaded once per process, clipcrawl.tasks.download.blocklist). A listed image is returned as
blocklisted without anything of it: no digest, size or pixels. The order of the checks: SHA-256/MD5 of
the bytes first, before any decode (an exact match always wins); then the pixel cap from the header (a
refused decode cannot be PDQ-hashed); with a PDQ list, the full decode and its PDQ before the minimum
size and aspect-ratio filters (PDQ wins over them), and a sample that fails before its PDQ was checked
keeps no digest, size or byte count either (withheld: it may be a listed image).
Safety first: only web image formats are opened (never EPS/PDF, which would start Ghostscript), metadata that Pillow would hoard is
dropped before it parses the file (clipcrawl.tasks.download.metadata), the pixel cap is checked
from the header before anything is decoded, and truncated files fail instead of being padded with grey.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import threading
import warnings
from dataclasses import dataclass
from types import EllipsisType

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.download import blocklist
from clipcrawl.tasks.download.metadata import strip_metadata

Image.init()
# The formats a web image can have. Everything else (EPS, PDF, PSD, ...) is not_an_image.
WEB_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "AVIF") if f in Image.OPEN)
# Signatures of those formats: bytes that start like an image but do not open are decode_error.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WHITE = (255, 255, 255)
# Downscaling averages areas (Pillow's BOX = OpenCV's INTER_AREA, img2dataset's default); upscaling
# uses Lanczos (img2dataset: INTER_LANCZOS4). reducing_gap lets Pillow reduce() by an integer
# factor first while the rest of the scale stays above the gap (cheaper, same result for BOX).
_DOWNSCALE = Image.Resampling.BOX
_UPSCALE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0
# Megapixels of full-size decodes being PDQ-hashed at once in a process: about 27 bytes a pixel each (the RGB
# decode, and pdqhash's float64 luma temporaries), so ~1.3 GiB. An image over the budget runs alone.
PDQ_PIXEL_BUDGET = 50_000_000


@dataclass
class ImageResult:
    """What became of one downloaded body. Sizes are (width, height) after / before resizing."""

    status: DownloadStatus
    error_message: str | None = None
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None
    blocklist: str | None = None  # the list a blocklisted image is on (its only trace)
    withheld: bool = False  # nothing of the image may be kept (listed, or not PDQ-checked): no byte count either


class PixelBudget:
    """A counting semaphore on pixels, first come first served; an image over the whole budget runs alone."""

    def __init__(self, pixels: int):
        self.pixels = pixels
        self.used = 0
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        turn = object()
        with self._cond:
            self._queue.append(turn)
            self._cond.wait_for(lambda: self._queue[0] is turn and (not self.used or self.used + pixels <= self.pixels))
            self._queue.popleft()
            self.used += pixels
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


PDQ_DECODES = PixelBudget(PDQ_PIXEL_BUDGET)


def process_image(
    body: bytes,
    settings: DownloadSettings,
    *,
    draft: bool = True,
    lists: blocklist.Blocklists | None | EllipsisType = ...,
) -> ImageResult:
    """Decode `body`, check it against the settings' filters, resize and re-encode it.

    `draft=False` turns JPEG reduce-on-decode off (benchmarks and tests compare both). `lists`: the known-bad
    lists to check, as a shard task loaded them once (blocklist.for_settings); by default the settings' lists,
    looked up (and their files' versions asked) at each call.
    """
    if lists is ...:
        lists = blocklist.for_settings(settings)
    with warnings.catch_warnings():
        # Pillow warns above its own pixel cap (ours, settings.max_image_pixels, decides) and about
        # corrupt EXIF or odd palettes: per-image noise about untrusted data, not actionable.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        return _process(body, settings, draft, lists)


def _process(body: bytes, settings: DownloadSettings, draft: bool, lists: blocklist.Blocklists | None) -> ImageResult:
    digest = hashlib.sha256(body).digest()
    sha256 = digest.hex()
    pdq = lists is not None and lists.wants_pdq

    def failed(
        status: DownloadStatus, message: str, size: tuple[int, int] | None = None, checked: bool = False
    ) -> ImageResult:
        if pdq and not checked:  # not PDQ-checked: it may be a listed image, so nothing of it is kept
            return ImageResult(status, message, withheld=True)
        w, h = size or (None, None)
        return ImageResult(status, message, original_width=w, original_height=h, sha256=sha256)

    if not body:
        return failed(DownloadStatus.NOT_AN_IMAGE, "empty body")
    if lists is not None and (match := lists.match_bytes(body, digest)):
        return blocklisted(match)
    try:
        img = Image.open(io.BytesIO(strip_metadata(body)), formats=WEB_FORMATS)
    except Image.DecompressionBombError as exc:
        return failed(DownloadStatus.TOO_MANY_PIXELS, str(exc))
    except UnidentifiedImageError:
        if _looks_like_image(body):
            return failed(DownloadStatus.DECODE_ERROR, "corrupt image header")
        return failed(DownloadStatus.NOT_AN_IMAGE, f"no image format recognised (starts with {body[:16]!r})")
    except Exception as exc:  # noqa: BLE001 - a plugin accepted the signature, then failed on the header
        return failed(DownloadStatus.DECODE_ERROR, f"corrupt image header: {type(exc).__name__}: {exc}")

    fmt = img.format
    width, height = img.size
    orientation = _orientation(img)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    size = (width, height)
    if width * height > settings.max_image_pixels:
        return failed(
            DownloadStatus.TOO_MANY_PIXELS, f"{width}x{height} is over {settings.max_image_pixels} pixels", size
        )
    if not pdq and (refused := size_filter(width, height, settings)):  # with a PDQ list: after the PDQ check
        return failed(*refused, size)

    target, crop, canvas = plan_resize(width, height, settings)
    # PDQ is defined on the image at full size: its lists turn reduce-on-decode off (docs/download.md)
    if draft and target is not None and target[0] * target[1] < width * height and not pdq:
        # JPEG reduce-on-decode (DCT scaling by 1/2, 1/4, 1/8): never below the target size.
        img.draft("RGB", target if orientation not in (5, 6, 7, 8) else (target[1], target[0]))
    try:
        with PDQ_DECODES.hold(width * height) if pdq else contextlib.nullcontext():
            img.load()
            img = to_rgb(img)
            # PDQ of the pixels as stored (before EXIF orientation, as PDQ's own tools hash a file) and of their
            # 7 other rotations and mirror images, at full size, before any resize
            if pdq and (match := lists.match_pdq(np.asarray(img))):
                return blocklisted(match)
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
    except Image.DecompressionBombError as exc:
        return failed(DownloadStatus.TOO_MANY_PIXELS, str(exc), size)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data, whatever the decoder says
        return failed(DownloadStatus.DECODE_ERROR, f"{fmt}: {type(exc).__name__}: {exc}", size)
    if pdq and (refused := size_filter(width, height, settings)):
        return failed(*refused, size, checked=True)

    if target is not None:
        if target != img.size:
            downscale = target[0] * target[1] < img.width * img.height
            img = img.resize(
                target, _DOWNSCALE if downscale else _UPSCALE, reducing_gap=_REDUCING_GAP if downscale else None
            )
        if crop is not None:
            img = img.crop(crop)
        if canvas is not None:
            padded = Image.new("RGB", canvas, _WHITE)
            padded.paste(img, ((canvas[0] - img.width) // 2, (canvas[1] - img.height) // 2))
            img = padded
    return ImageResult(
        DownloadStatus.SUCCESS, None, encode(img, settings), img.width, img.height, width, height, sha256
    )


def blocklisted(match: blocklist.Match) -> ImageResult:
    """A listed image's result: its list, no digest, no size, no pixels."""
    return ImageResult(DownloadStatus.BLOCKLISTED, match.message, blocklist=match.list, withheld=True)


def size_filter(width: int, height: int, settings: DownloadSettings) -> tuple[DownloadStatus, str] | None:
    """(status, message) when the (oriented) size fails min_image_size or max_aspect_ratio, else None."""
    if min(width, height) < max(settings.min_image_size, 1):
        return DownloadStatus.TOO_SMALL_PIXELS, f"{width}x{height}: smaller side under {settings.min_image_size}"
    ratio = max(width, height) / min(width, height)
    if settings.max_aspect_ratio is not None and ratio > settings.max_aspect_ratio:
        return (
            DownloadStatus.BAD_ASPECT_RATIO,
            f"{width}x{height}: aspect ratio {ratio:.2f} over {settings.max_aspect_ratio}",
        )
    return None


def plan_resize(width: int, height: int, settings: DownloadSettings):
    """img2dataset's resize modes: (resized size or None, crop box or None, padded canvas or None).

    keep_ratio: smaller side = image_size; center_crop: then a centred square crop;
    keep_ratio_largest: larger side = image_size; border: then padded (white, centred) to a square;
    resize_only_if_bigger leaves images that would be upscaled alone (no crop, no padding either).
    """
    s = settings.image_size
    mode = settings.resize_mode
    if mode == "no":
        return None, None, None
    side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    if settings.resize_only_if_bigger and side <= s:
        return None, None, None
    scale = s / side
    # Python's round, like albumentations' SmallestMaxSize / LongestMaxSize
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mode == "center_crop":
        left, top = (target[0] - s) // 2, (target[1] - s) // 2
        return target, (left, top, left + s, top + s), None
    if mode == "border":
        return target, None, (s, s)
    return target, None, None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit and float scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or img.has_transparency_data:
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema() == (255, 255):
            return rgba.convert("RGB")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=alpha)
        return out
    return img.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted handled by the JPEG plugin), YCbCr, LAB, HSV


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16"):
        return (a >> 8).astype(np.uint8)
    a = a.astype(np.float64)
    if mode == "I":  # 32-bit ints, in practice 16-bit samples widened: scale only when they exceed 8 bits
        if a.max(initial=0) > 255:
            a = a / 256.0
    elif a.max(initial=0) <= 1.0:  # F: normalised floats
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def encode(img: Image.Image, settings: DownloadSettings) -> bytes:
    """jpg/webp at encode_quality; png: encode_quality is the zlib level when 0-9 (img2dataset), else 6."""
    out = io.BytesIO()
    fmt = settings.encode_format
    q = settings.encode_quality
    if fmt == "jpg":
        img.save(out, "JPEG", quality=q, optimize=False)
    elif fmt == "webp":
        img.save(out, "WEBP", quality=q)
    else:
        img.save(out, "PNG", compress_level=q if q <= 9 else 6)
    return out.getvalue()


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8) from the header; a malformed EXIF block counts as none."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow would decode the whole PNG looking for an eXIf chunk after the pixels
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF never drops an otherwise good image
        return 1
    return value if isinstance(value, int) else 1


def _looks_like_image(body: bytes) -> bool:
    return (
        body.startswith(_MAGIC)
        or (body[:4] == b"RIFF" and body[8:12] == b"WEBP")
        or body[4:12] in (b"ftypavif", b"ftypavis")
    )
