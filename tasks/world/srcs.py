"""Image `src` values as pages write them, each with its case label and the URL a browser resolves.

The generator first decides the canonical absolute URL, then derives the written form
from it, so the expected URL never depends on a URL-joining library.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from clipcrawl.tasks.core.status import PairStatus

# case -> weight; every case also appears once on each file's showcase page.
SRC_CASES = {
    "abs_http": 40,
    "abs_https": 15,
    "relative_parent": 6,
    "relative_same": 6,
    "root_relative": 6,
    "protocol_relative": 5,
    "entity_query": 5,
    "data_uri": 2,
    "javascript": 1,
    "ftp": 0.7,
    "file": 0.5,
    "empty_src": 0.7,
    "no_host": 0.4,
}
# Cases whose src a browser cannot fetch: the pair is dropped with this status whatever the alt.
BAD_SRC_STATUS = {
    "data_uri": PairStatus.UNSUPPORTED_SCHEME,
    "javascript": PairStatus.UNSUPPORTED_SCHEME,
    "ftp": PairStatus.UNSUPPORTED_SCHEME,
    "file": PairStatus.UNSUPPORTED_SCHEME,
    "empty_src": PairStatus.INVALID_URL,
    "no_host": PairStatus.INVALID_URL,
}
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@dataclass(frozen=True)
class Resolver:
    """Where relative URLs on a page resolve: the page itself, or its `<base href>`."""

    scheme: str
    host: str
    directory: str  # absolute path ending with "/", at least two levels deep

    @property
    def parent(self) -> str:
        return self.directory.rstrip("/").rsplit("/", 1)[0] + "/"


@dataclass(frozen=True)
class Src:
    case: str
    written: str  # as in the page source (entities not decoded)
    url: str | None  # expected absolute URL; None when not http(s)
    host: str | None


def image_file(image_id: int, fmt: str) -> str:
    return f"{image_id:06d}.{fmt}"


def make_src(case: str, image_id: int, fmt: str, site: int, res: Resolver, rng: random.Random) -> Src:
    """The src of one `<img>` of image `image_id` on a page of `site` resolving against `res`."""
    name = image_file(image_id, fmt)
    img_host = f"img.site-{site}.world.test"
    if case in ("abs_http", "abs_https"):
        scheme = "https" if case == "abs_https" else "http"
        url = f"{scheme}://{img_host}/images/{name}"
        return Src(case, url, url, img_host)
    if case == "relative_parent":
        url = f"{res.scheme}://{res.host}{res.parent}img/{name}"
        return Src(case, f"../img/{name}", url, res.host)
    if case == "relative_same":
        written = rng.choice([name, f"images/{name}", f"./{name}"])
        url = f"{res.scheme}://{res.host}{res.directory}{written.removeprefix('./')}"
        return Src(case, written, url, res.host)
    if case == "root_relative":
        url = f"{res.scheme}://{res.host}/media/{name}"
        return Src(case, f"/media/{name}", url, res.host)
    if case == "protocol_relative":
        written = f"//cdn.world.test/s{site}/{name}"
        return Src(case, written, f"{res.scheme}:{written}", "cdn.world.test")
    if case == "entity_query":
        w, h = rng.choice([(300, 200), (640, 480), (120, 120)])
        base = f"http://{img_host}/images/{name}?w={w}"
        return Src(case, f"{base}&amp;h={h}&amp;fit=crop", f"{base}&h={h}&fit=crop", img_host)
    if case == "data_uri":
        return Src(case, f"data:image/png;base64,{TINY_PNG}", None, None)
    if case == "javascript":
        return Src(case, rng.choice(["javascript:void(0)", "javascript:show('img')"]), None, None)
    if case == "ftp":
        return Src(case, f"ftp://ftp.site-{site}.world.test/pub/{name}", None, None)
    if case == "file":
        return Src(case, f"file:///C:/Users/me/Pictures/{name}", None, None)
    if case == "empty_src":
        return Src(case, "", None, None)
    if case == "no_host":
        return Src(case, "http://", None, None)
    raise ValueError(f"unknown src case {case!r}")


def pick_src_case(rng: random.Random) -> str:
    return rng.choices(list(SRC_CASES), weights=list(SRC_CASES.values()))[0]
