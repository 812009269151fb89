"""The world's test blocklists, under <world>/lists/: one image on each (MD5, SHA-256, PDQ, URL) and one domain.

They are the only lists the project ships, and they hold only synthetic images: real known-bad lists come from
the organisations that keep them (docs/download.md, "Known-bad hash lists"). The PDQ list holds the hash of a
resized, re-encoded copy of its image: other bytes, so only the perceptual match catches what the server sends.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
from PIL import Image

from clipcrawl.tasks.core.uri import atomic_write
from clipcrawl.tasks.download.blocklist import pdq_hash
from clipcrawl.tasks.world.behaviours import LIST_DIR, LIST_FILES, LISTED, LISTED_DOMAIN, reserved_images
from clipcrawl.tasks.world.payloads import body
from clipcrawl.tasks.world.scenes import image_spec

# The PDQ list's copy: the first of these (scale, JPEG quality) alterations whose hash is within PDQ_MARGIN of the
# served image's (at full size, as the downloader hashes it): a match by a margin, whatever the seed.
ALTERATIONS = ((0.8, 75), (0.9, 85), (1.0, 85))
PDQ_MARGIN = 24
HEADER = "# clipcrawl synthetic world: a test list of synthetic images only (no real hashes)\n"


def world_blocklists(root: str) -> list[str]:
    """DownloadSettings.blocklists entries of the world at `root`: each kind's test list, named by its file."""
    return [f"{kind}:{os.path.join(root, LIST_DIR, name)}" for kind, name in LIST_FILES.items()]


def served_body(seed: int, image_id: int) -> bytes:
    """The bytes the image server sends for image `image_id` (what its behaviour sends, in its own format)."""
    spec = image_spec(seed, image_id)
    return body(seed, image_id, spec.behaviour, spec.format)


def altered_copy(data: bytes, scale: float, quality: int) -> bytes:
    """A copy a re-upload would make: resized, re-encoded as JPEG (other bytes, the same picture)."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    out = io.BytesIO()
    rgb.resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=quality)
    return out.getvalue()


def pdq_distance(a: bytes, b: bytes) -> int:
    return int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def listed_pdq(data: bytes) -> tuple[bytes, int, str]:
    """(PDQ hash, quality, description) of the altered copy that goes on the list."""
    served, _ = decoded_pdq(data)
    for scale, quality in ALTERATIONS:
        copy = altered_copy(data, scale, quality)
        digest, q = decoded_pdq(copy)
        if copy != data and pdq_distance(digest, served) <= PDQ_MARGIN:
            return digest, q, f"scaled {scale:g} JPEG quality {quality}"
    raise ValueError(f"no alteration of the PDQ-listed image stays within {PDQ_MARGIN} bits of it")


def decoded_pdq(data: bytes) -> tuple[bytes, int]:
    with Image.open(io.BytesIO(data)) as img:
        return pdq_hash(np.asarray(img.convert("RGB")))


def listed_images(seed: int) -> dict[str, int]:
    """kind -> the image id on that kind's list."""
    return {LISTED[b]: image_id for image_id, b in reserved_images(seed) if b in LISTED}


def list_lines(seed: int, urls_by_image: dict[int, set[str]]) -> dict[str, list[str]]:
    """kind -> the lines of its test list."""
    ids = listed_images(seed)
    md5 = hashlib.md5(served_body(seed, ids["md5"]), usedforsecurity=False).hexdigest()
    sha256 = hashlib.sha256(served_body(seed, ids["sha256"])).hexdigest()
    pdq, quality, how = listed_pdq(served_body(seed, ids["pdq"]))
    urls = sorted(urls_by_image.get(ids["url"], ()))
    # one written as people write URLs (upper-case scheme and host, a fragment): it matches once normalised
    shouty = [u.replace("http://img.", "HTTP://IMG.", 1) + "#listed" for u in urls[:1]]
    return {
        "md5": [f"{md5}  {ids['md5']:06d}"],  # md5sum's shape: digest, two spaces, file name
        "sha256": [sha256.upper()],
        "pdq": ["hash,quality,name", f"{pdq.hex()},{quality},{ids['pdq']:06d} {how}"],
        "url": shouty + urls[1:],
        "domain": [LISTED_DOMAIN],
    }


def write_test_lists(root: str, seed: int, urls_by_image: dict[int, set[str]]) -> list[str]:
    """Write <root>/lists/*; returns the blocklists entries (world_blocklists)."""
    os.makedirs(os.path.join(root, LIST_DIR), exist_ok=True)
    for kind, lines in list_lines(seed, urls_by_image).items():
        with atomic_write(os.path.join(root, LIST_DIR, LIST_FILES[kind])) as f:
            f.write((HEADER + "".join(line + "\n" for line in lines)).encode())
    return world_blocklists(root)
