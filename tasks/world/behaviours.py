"""How the world's image server misbehaves for each image, and the download status that follows.

Every behaviour a real image host shows a downloader is here once: slow and hanging
servers, 5xx and 429 that clear up or do not, 4xx, redirects and loops, dropped
connections, lying Content-Type and Content-Length, endless and dripping bodies,
truncated and bomb images, odd but valid formats, HTML and SVG where an image should
be, X-Robots-Tag opt-outs, TDMRep reservations (header and tdmrep.json, a broken one too), a robots.txt that
disallows all, a host on a private address, a host that does not resolve, a host with a bad TLS certificate,
and hostile responses built to exhaust a client's memory or time (giant headers, a gzip bomb,
metadata floods and bombs in JPEG and PNG, a GIF of 10,000 frames).

Image ids 0..len(RESERVED)-1 carry one behaviour each (order shuffled by seed) and are
shown on every file's showcase page, so even a one-file world has all of them; a few
percent of the other images get a random one of the image-level behaviours.

`expected_status` is the ground truth, written from this table alone (never from the
downloader's code): the status a correct downloader reports under given settings.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from clipcrawl.tasks.core.status import DownloadStatus as S

SLOW_DELAY = 0.5  # seconds before a "slow" response: under the test read timeout
HANG_DELAY = 12.0  # seconds before a "timeout" response: over every timeout of the test (and default) settings
DRIP_INTERVAL = 0.2  # seconds between the bytes of a dripping body
STREAM_CAP = 1 << 30  # an endless body stops after this many bytes (a guard for broken clients)
DRIP_CAP_S = 60.0  # a dripping body stops after this long
UNAVAILABLE_TIMES = 2  # 503s per URL before the image
RATE_LIMITED_TIMES = 1  # 429s per URL before the image
RETRY_AFTER = 1  # the 429's Retry-After, seconds
HUGE_LENGTH = 100 * 10**9  # the Content-Length a lying server declares
BOMB_SIZE = (30000, 30000)
TINY_SIZE = (8, 8)  # a PNG of ~100 bytes: under the 5 KB floor
TINY_MAX_BYTES = 200
SMALL_PIXELS_SIZE = (32, 32)  # a valid image over 5 KB (metadata) with a tiny side
PANORAMA_SIZE = (2000, 100)  # aspect ratio 20
OUR_TOKEN = "clipcrawl"  # the user-agent token the ourbot opt-out names (DownloadSettings default)
HEADER_LINE_BYTES = 1 << 20  # one header line of 1 MiB
MANY_HEADERS = 100_000  # header lines in one response
GZIP_BOMB_BYTES = 2 << 30  # what the gzip bomb inflates to (~2 MB on the wire): over STREAM_CAP
JPEG_ICC_BYTES = 50 * 10**6  # ICC_PROFILE APP2 segments in a JPEG: over the default max_bytes
JPEG_FLOOD_BYTES = 8 * 10**6  # tiny metadata segments in a JPEG: under max_bytes, so it is read and decoded
PNG_BOMB_MIB = 256  # what each of the PNG's iCCP and zTXt chunks inflates to
GIF_FRAMES = 10_000  # frames of the many-frames GIF, each the image's full size (~1 KB each)

CLOSED_HOST = "closed.world.test"  # robots.txt: User-agent: * / Disallow: /
PRIVATE_HOST = "intranet.world.test"  # resolves to a private address; the server never sees it
PRIVATE_ADDRESS = "10.0.0.7"
NXDOMAIN_HOST = "nxdomain.world.invalid"  # .invalid never resolves (RFC 6761): no DNS query leaves the machine
BADCERT_HOST = "badcert.world.test"  # https only: its certificate names another host
NO_ROBOTS_HOST = "cdn.world.test"  # robots.txt is 404: everything allowed


def page_host(site: int) -> str:
    """The host of site `site`'s pages. The server answers it too: a downloader asks a page's origin for its
    tdmrep.json before the images found on the page (404 here; TDM_PAGE_HOST's reserves its pages)."""
    return f"www.site-{site}.world.test"


# W3C TDMRep: TDM_HOST's /.well-known/tdmrep.json leaves its PNGs unreserved (first rule) and reserves the rest of
# /images/ (second rule); BROKEN_TDM_HOST's is truncated JSON, which reserves nothing.
TDM_HOST = "rights.world.test"
BROKEN_TDM_HOST = "brokenrights.world.test"
TDM_POLICY_URL = f"https://{TDM_HOST}/tdm-policy.json"
TDMREP_RULES = [
    {"location": "/images/*.png", "tdm-reservation": 0},
    {"location": "/images/", "tdm-reservation": 1, "tdm-policy": TDM_POLICY_URL},
]
# A page host whose tdmrep.json reserves its pages (and so the pairs of the images found on them, wherever those are)
TDM_PAGE_HOST = "reserved-pages.world.test"
TDMREP_PAGE_RULES = [{"location": "/", "tdm-reservation": 1, "tdm-policy": TDM_POLICY_URL}]
LISTED_DOMAIN = "listed.world.test"  # on the world's test domain list: its subdomains are blocked too
LISTED_HOST = f"img.{LISTED_DOMAIN}"
# The world's test blocklists (tasks/world/lists.py writes them under <world>/lists/): kind -> file name, and the
# behaviour whose image each one lists.
LIST_DIR = "lists"
LIST_FILES = {
    "md5": "test-md5.txt",
    "sha256": "test-sha256.txt",
    "pdq": "test-pdq.csv",
    "url": "test-urls.txt",
    "domain": "test-domains.txt",
}
LISTED = {
    "md5_listed": "md5",
    "sha256_listed": "sha256",
    "pdq_listed": "pdq",
    "url_listed": "url",
    "domain_listed": "domain",
}

# What ImageServer.download_settings() changes from the defaults (besides resolve and the CA):
# short timeouts so a download of a small world takes seconds, loopback exempt from the SSRF guard.
# They keep a margin over the slow behaviours (6x SLOW_DELAY, one spare retry) because a loaded
# 2-core machine (cold imports of the image workers, the test runner) delays ordinary answers too.
TEST_SETTINGS = {
    "connect_timeout": 3.0,
    "read_timeout": 3.0,
    "total_timeout": 5.0,
    "retries": 3,
    "retry_backoff": 0.1,
    "allow_addresses": ["127.0.0.1/32"],
}


@dataclass(frozen=True)
class Behaviour:
    name: str
    what: str  # what the server does
    format: str | None = None  # the file extension its URL must have (None: the image's own)
    host: str | None = None  # host-level: the image is only ever linked on this host
    schemes: tuple[str, ...] = ("http", "https")  # how the showcase page links it
    # Drawn for the few percent of images that misbehave at random: the hostile bodies are not, so that they show
    # once per world (on its showcase) instead of taking over the bytes and time of a benchmark world's download.
    at_random: bool = True
    # page-level: the image is linked on a page of this host only (one per crawl file), not on the showcase
    page_host: str | None = None


BEHAVIOURS = {
    b.name: b
    for b in (
        Behaviour("ok", "the image"),
        Behaviour("slow", f"the image after {SLOW_DELAY} s"),
        Behaviour("timeout", f"nothing for {HANG_DELAY} s, then the image"),
        Behaviour("unavailable_twice", f"503 to the first {UNAVAILABLE_TIMES} requests of each URL, then the image"),
        Behaviour("error_500", "500 to every request"),
        Behaviour(
            "rate_limited", f"429 with Retry-After: {RETRY_AFTER} to the first request of each URL, then the image"
        ),
        Behaviour("not_found", "404"),
        Behaviour("gone", "410"),
        Behaviour("forbidden", "403"),
        Behaviour("redirect", "302 to /moved/<file> on the same host, which serves the image"),
        Behaviour("redirect_loop", "302 to /loop/a/<file>, which redirects to /loop/b/<file> and back, forever"),
        Behaviour("disconnect", "closes the connection without a response"),
        Behaviour("text_plain", "the image bytes as Content-Type: text/plain"),
        Behaviour("octet_stream", "the image bytes as Content-Type: application/octet-stream"),
        Behaviour("truncated_jpeg", "the first half of a JPEG, Content-Length matching the half", "jpg"),
        Behaviour(
            "endless_body", f"JPEG bytes without Content-Length, as fast as possible (stops at {STREAM_CAP} B)", "jpg"
        ),
        Behaviour(
            "endless_drip",
            f"one byte every {DRIP_INTERVAL} s without Content-Length (stops after {DRIP_CAP_S} s)",
            "jpg",
        ),
        Behaviour("huge_content_length", f"Content-Length: {HUGE_LENGTH}, then bytes as fast as possible", "jpg"),
        Behaviour("pixel_bomb", f"a {BOMB_SIZE[0]}x{BOMB_SIZE[1]} 1-bit PNG of ~110 KB (decompression bomb)", "png"),
        Behaviour("tiny_image", f"a {TINY_SIZE[0]}x{TINY_SIZE[1]} PNG under {TINY_MAX_BYTES} bytes", "png"),
        Behaviour("empty_body", "200 with a 0-byte body, Content-Type: image/jpeg", "jpg"),
        Behaviour("cmyk_jpeg", "a CMYK JPEG", "jpg"),
        Behaviour("png_alpha", "an RGBA PNG with a transparent gradient", "png"),
        Behaviour("gif_animated", "an animated GIF of 3 frames", "gif"),
        Behaviour("webp_alpha", "an RGBA lossy WebP", "webp"),
        Behaviour(
            "small_pixels",
            f"a valid {SMALL_PIXELS_SIZE[0]}x{SMALL_PIXELS_SIZE[1]} PNG padded over 5 KB by a text chunk",
            "png",
        ),
        Behaviour("panorama", f"a valid {PANORAMA_SIZE[0]}x{PANORAMA_SIZE[1]} JPEG (aspect ratio 20)", "jpg"),
        Behaviour("svg_as_jpeg", "an SVG document (> 5 KB) as Content-Type: image/jpeg", "jpg"),
        Behaviour("html_as_jpeg", "an HTML error page (> 5 KB) with status 200 as Content-Type: image/jpeg", "jpg"),
        Behaviour("noai_header", "the image with X-Robots-Tag: noai"),
        Behaviour("otherbot_noai_header", "the image with X-Robots-Tag: otherbot: noai, noimageai (not for us)"),
        Behaviour("ourbot_noai_header", f"the image with X-Robots-Tag: {OUR_TOKEN}: noimageai"),
        Behaviour("robots_disallowed", "linked on a host whose robots.txt disallows everything", host=CLOSED_HOST),
        Behaviour("tdm_reserved_header", "the image with tdm-reservation: 1 and a tdm-policy header"),
        Behaviour("tdm_unreserved_header", "the image with tdm-reservation: 0"),
        Behaviour(
            "tdm_reserved_file", f"a JPEG linked on {TDM_HOST}, whose tdmrep.json reserves it", "jpg", host=TDM_HOST
        ),
        Behaviour(
            "tdm_unreserved_file",
            f"a PNG linked on {TDM_HOST}, whose tdmrep.json leaves PNGs unreserved (its first rule)",
            "png",
            host=TDM_HOST,
        ),
        Behaviour(
            "tdm_reserved_page_file",
            f"the image, linked only on a page of {TDM_PAGE_HOST}, whose tdmrep.json reserves its pages",
            at_random=False,
            page_host=TDM_PAGE_HOST,
        ),
        Behaviour(
            "tdm_broken_file",
            f"linked on {BROKEN_TDM_HOST}, whose tdmrep.json is truncated JSON (reserves nothing)",
            host=BROKEN_TDM_HOST,
        ),
        Behaviour("blocked_address", f"linked on a host that resolves to {PRIVATE_ADDRESS}", host=PRIVATE_HOST),
        Behaviour("dns_error", "linked on a host that does not resolve", host=NXDOMAIN_HOST),
        Behaviour(
            "bad_certificate",
            "linked over https on a host whose certificate names another host",
            host=BADCERT_HOST,
            schemes=("https",),
        ),
        Behaviour("md5_listed", "the image; its MD5 is on the world's test MD5 list", at_random=False),
        Behaviour("sha256_listed", "the image; its SHA-256 is on the world's test SHA-256 list", at_random=False),
        Behaviour(
            "pdq_listed",
            "a textured JPEG; the PDQ of a resized, re-encoded copy (other bytes) is on the world's test PDQ list",
            "jpg",
            at_random=False,
        ),
        Behaviour("url_listed", "the image; its URLs are on the world's test URL list", at_random=False),
        Behaviour(
            "domain_listed",
            f"linked on {LISTED_HOST}, a subdomain of {LISTED_DOMAIN} on the world's test domain list",
            host=LISTED_HOST,
        ),
        Behaviour("huge_header_line", f"the image after a header line of {HEADER_LINE_BYTES} bytes", at_random=False),
        Behaviour("many_headers", f"the image after {MANY_HEADERS} header lines", at_random=False),
        Behaviour(
            "gzip_bomb",
            f"Content-Encoding: gzip, a body that inflates ~1000-fold to {GZIP_BOMB_BYTES} zero bytes",
            "jpg",
            at_random=False,
        ),
        Behaviour(
            "jpeg_icc_bomb",
            f"the JPEG after {JPEG_ICC_BYTES} bytes of ICC_PROFILE APP2 segments, Content-Length declared",
            "jpg",
            at_random=False,
        ),
        Behaviour(
            "jpeg_metadata_flood",
            f"the JPEG after {JPEG_FLOOD_BYTES} bytes of tiny metadata segments: empty APPn, then a chain of "
            "Exif APP1s (Pillow keeps every segment and joins the Exif ones)",
            "jpg",
            at_random=False,
        ),
        Behaviour(
            "png_metadata_bomb",
            f"the PNG with an iCCP and a zTXt chunk each inflating to {PNG_BOMB_MIB} MiB, before its pixels",
            "png",
            at_random=False,
        ),
        Behaviour(
            "gif_many_frames",
            f"a GIF of {GIF_FRAMES} frames: the image, then flat frames of its full size",
            "gif",
            at_random=False,
        ),
    )
}
RESERVED = tuple(name for name in BEHAVIOURS if name != "ok")  # one image id each, in every world
RANDOM_SHARE = 0.06  # of the other images
RANDOM_CHOICES = tuple(name for name in RESERVED if BEHAVIOURS[name].host is None and BEHAVIOURS[name].at_random)
SPECIAL_HOSTS = {b.host: b.name for b in BEHAVIOURS.values() if b.host}
PAGE_LEVEL = tuple(b.name for b in BEHAVIOURS.values() if b.page_host)  # linked on their page host's page only
# Behaviours whose response is a decodable image (then image checks apply).
_IMAGE_LIKE = {
    "ok",
    "slow",
    "timeout",
    "unavailable_twice",
    "rate_limited",
    "redirect",
    "text_plain",
    "octet_stream",
    "cmyk_jpeg",
    "png_alpha",
    "gif_animated",
    "webp_alpha",
    "small_pixels",
    "panorama",
    "noai_header",
    "otherbot_noai_header",
    "ourbot_noai_header",
    "robots_disallowed",
    "tdm_reserved_header",
    "tdm_unreserved_header",
    "tdm_reserved_file",
    "tdm_unreserved_file",
    "tdm_reserved_page_file",
    "tdm_broken_file",
    "pixel_bomb",
    "tiny_image",
    "jpeg_icc_bomb",
    "jpeg_metadata_flood",
    "png_metadata_bomb",
    "gif_many_frames",
    *LISTED,
}
FIXED_SIZES = {"tiny_image": TINY_SIZE, "small_pixels": SMALL_PIXELS_SIZE, "panorama": PANORAMA_SIZE}


def reserved_images(seed: int) -> list[tuple[int, str]]:
    """(image id, behaviour) of the ids every world reserves, one per behaviour but "ok"."""
    order = list(RESERVED)
    random.Random(f"behaviours:{seed}").shuffle(order)
    return list(enumerate(order))


def behaviour_of(seed: int, image_id: int) -> str:
    """The behaviour of image `image_id`, from the seed alone (server, pages and manifest agree)."""
    if image_id < len(RESERVED):
        return reserved_images(seed)[image_id][1]
    rng = random.Random(f"behaviour:{seed}:{image_id}")
    return rng.choice(RANDOM_CHOICES) if rng.random() < RANDOM_SHARE else "ok"


def unreserved(image_id: int, images: int, sites: int) -> int:
    """Map a random pick off the reserved ids (keeping its site), so they are only linked from showcases."""
    if image_id >= len(RESERVED):
        return image_id
    step = -(-len(RESERVED) // sites) * sites
    return (image_id + step) % images if images > step + len(RESERVED) else image_id


def served_size(behaviour: str, width: int, height: int) -> tuple[int, int]:
    """Pixel size of what the server sends for an image whose scene renders at width x height."""
    if behaviour == "pixel_bomb":
        return BOMB_SIZE
    return FIXED_SIZES.get(behaviour, (width, height))


def _image_checks(size: tuple[int, int], s) -> S:
    w, h = size
    if w * h > s.max_image_pixels:
        return S.TOO_MANY_PIXELS
    if min(w, h) < s.min_image_size:
        return S.TOO_SMALL_PIXELS
    if s.max_aspect_ratio is not None and max(w, h) / min(w, h) > s.max_aspect_ratio:
        return S.BAD_ASPECT_RATIO
    return S.SUCCESS


def listed(kind: str, s) -> bool:
    """Whether settings `s` use the world's test list of `kind` (a blocklists entry naming its file)."""
    tail = f"{LIST_DIR}/{LIST_FILES[kind]}"
    return any(e.startswith(f"{kind}:") and e.replace("\\", "/").endswith(tail) for e in s.blocklists)


def _allowed(address: str, s) -> bool:
    return any(ipaddress.ip_address(address) in ipaddress.ip_network(net, strict=False) for net in s.allow_addresses)


def expected_status(behaviour: str, size: tuple[int, int], s) -> S:
    """The status a correct downloader gives an image of `behaviour` served at `size`, under settings `s`.

    Assumes what the test settings (ImageServer.download_settings) and the defaults share: timeouts
    under HANG_DELAY and DRIP_CAP_S, min_bytes <= 5000 (every served image is over 9 KB but
    tiny_image), max_bytes between 10 MB (the JPEG flood and the GIF of many frames are read whole)
    and STREAM_CAP.
    """
    b = behaviour
    if LISTED.get(b) in ("url", "domain") and listed(LISTED[b], s):
        return S.BLOCKLISTED  # decided before any request
    if b == "dns_error":
        return S.DNS_ERROR
    if b == "blocked_address":
        return S.CONNECTION_ERROR if _allowed(PRIVATE_ADDRESS, s) else S.BLOCKED_ADDRESS
    if b == "bad_certificate":
        return S.CONNECTION_ERROR
    if b == "robots_disallowed" and s.consent.respect_robots:
        return S.ROBOTS_DISALLOWED
    if b == "tdm_reserved_file" and s.consent.respect_tdm_reservation:
        return S.TDM_RESERVED_FILE  # decided before the image is requested
    if b == "tdm_reserved_page_file" and s.consent.respect_tdm_reservation:
        return S.TDM_RESERVED_PAGE_FILE  # decided before the image is requested
    fixed = {
        "error_500": S.HTTP_5XX,
        "not_found": S.HTTP_4XX,
        "gone": S.HTTP_4XX,
        "forbidden": S.HTTP_4XX,
        "redirect_loop": S.TOO_MANY_REDIRECTS,
        "disconnect": S.CONNECTION_ERROR,
        "truncated_jpeg": S.DECODE_ERROR,
        "endless_body": S.TOO_LARGE,
        "huge_content_length": S.TOO_LARGE,
        "endless_drip": S.TIMEOUT,
        "svg_as_jpeg": S.NOT_AN_IMAGE,
        "html_as_jpeg": S.NOT_AN_IMAGE,
        "huge_header_line": S.CONNECTION_ERROR,  # no client need read a response head that size
        "many_headers": S.CONNECTION_ERROR,
        "gzip_bomb": S.TOO_LARGE,  # its inflated size counts
    }
    if b in fixed:
        return fixed[b]
    if b == "empty_body":
        return S.TOO_SMALL_BYTES if s.min_bytes > 0 else S.NOT_AN_IMAGE
    if b == "jpeg_icc_bomb" and s.max_bytes < JPEG_ICC_BYTES:
        return S.TOO_LARGE
    if b not in _IMAGE_LIKE:
        raise ValueError(f"unknown behaviour {b!r}")
    wait = min(s.read_timeout, s.total_timeout)
    if (b == "timeout" and wait < HANG_DELAY) or (b == "slow" and wait <= SLOW_DELAY):
        return S.TIMEOUT
    if b == "unavailable_twice" and s.retries < UNAVAILABLE_TIMES:
        return S.HTTP_5XX
    if b == "rate_limited" and (s.retries < RATE_LIMITED_TIMES or s.max_retry_after < RETRY_AFTER):
        return S.HTTP_4XX
    if b == "redirect" and s.max_redirects < 1:
        return S.TOO_MANY_REDIRECTS
    if s.consent.respect_optouts and (
        b == "noai_header" or (b == "ourbot_noai_header" and s.consent.user_agent_token.lower() == OUR_TOKEN)
    ):
        return S.OPT_OUT_HEADER
    if b == "tdm_reserved_header" and s.consent.respect_tdm_reservation:
        return S.TDM_RESERVED_HEADER
    if b == "tiny_image" and s.min_bytes > TINY_MAX_BYTES:
        return S.TOO_SMALL_BYTES
    if LISTED.get(b) in ("md5", "sha256", "pdq") and listed(LISTED[b], s):
        return S.BLOCKLISTED  # decided on the body (MD5, SHA-256) or its decoded pixels (PDQ), before the resize
    return _image_checks(size, s)
