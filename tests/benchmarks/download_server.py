"""Helpers of bench_download.py: a deterministic pool of photo-like JPEGs and the image server.

    python tests/benchmarks/download_server.py --pool DIR --urls 40000 [--port 0]

serves, from memory, on 127.0.0.1 only (keep-alive, aiohttp, one process), whatever the Host header
names (so one server is every host of the benchmark's worlds):
    GET  /img/{i}.jpg    -> pool[i % len(pool)]   for 0 <= i < urls, else 404
    GET  /robots.txt     -> a small real robots.txt (disallows /private/, so no image URL)
    GET  /_bench/stats   -> JSON: image and robots.txt requests since the last reset, and the
                            time.time() of the first and last image request (null before one)
    POST /_bench/reset   -> zeroes those, returns the stats as they were
and prints one line `PORT <port>` once it listens. /_bench/* requests count as nothing. Run it as
its own process, so that it does not share a GIL (or a CPU account) with the tool being measured.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time

import numpy as np

POOL_VERSION = "v1"
ROBOTS_TXT = b"User-agent: *\nDisallow: /private/\n"


def _photo(rng: np.random.Generator, width: int, height: int, noise: float) -> np.ndarray:
    """Smooth colour gradients + a few shapes + sensor-like noise, blurred a little: JPEG sizes like photos."""
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, f1, f2, p = (
            rng.uniform(-1, 1),
            rng.uniform(-1, 1),
            rng.uniform(1, 4),
            rng.uniform(1, 4),
            rng.uniform(0, 6.3),
        )
        img[..., c] = (
            128
            + 60 * (a * x / width + b * y / height)
            + 40 * np.sin(f1 * x / width * 6.28 + p) * np.cos(f2 * y / height * 6.28)
        )
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(8, 30))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, width // 3)), int(rng.integers(20, height // 3))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = [x0, y0, x0 + w, y0 + h]
        if rng.random() < 0.5:
            draw.ellipse(shape, fill=colour)
        else:
            draw.rectangle(shape, fill=colour)
    pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    arr = np.asarray(pil).astype(np.float32)
    arr += rng.normal(0, noise, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_pool(directory: str, count: int = 80, seed: int = 0) -> list[bytes]:
    """`count` distinct JPEGs of about 1000x800 (some portrait) whose sizes spread log-uniformly
    over 50-500 KB; made once (deterministic in `seed`) and cached in `directory`."""
    folder = os.path.join(directory, f"pool-{POOL_VERSION}-{count}-{seed}")
    names = [os.path.join(folder, f"{i:03d}.jpg") for i in range(count)]
    if not all(os.path.exists(n) for n in names):
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(seed)
        targets = np.exp(np.linspace(np.log(50_000), np.log(500_000), count))
        rng.shuffle(targets)
        for name, target in zip(names, targets, strict=True):
            width, height = int(rng.integers(940, 1081)), int(rng.integers(740, 861))
            if rng.random() < 0.15:
                width, height = height, width
            noise = float(rng.uniform(2, 14))
            arr = _photo(rng, width, height, noise)
            # the quality whose size is nearest the target (binary search over 20..98)
            lo, hi, best = 20, 98, None
            while lo <= hi:
                q = (lo + hi) // 2
                data = _encode(arr, q)
                if best is None or abs(len(data) - target) < abs(len(best) - target):
                    best = data
                if len(data) < target:
                    lo = q + 1
                else:
                    hi = q - 1
            while len(best) > 500_000 or len(best) < 50_000:  # noise made the range miss: adjust it
                arr = _photo(rng, width, height, noise := noise * (0.7 if len(best) > 500_000 else 1.4))
                best = _encode(arr, 85)
            tmp = name + ".tmp"
            with open(tmp, "wb") as f:
                f.write(best)
            os.replace(tmp, name)
    pool = []
    for n in names:
        with open(n, "rb") as f:
            pool.append(f.read())
    return pool


class RequestLog:
    """Image and robots.txt requests since the last reset, and when the first and last image one came."""

    def __init__(self) -> None:
        self.images, self.robots = 0, 0
        self.first: float | None = None
        self.last: float | None = None

    def reset(self) -> dict:
        before = self.stats()
        self.images, self.robots, self.first, self.last = 0, 0, None, None
        return before

    def image(self) -> None:
        now = time.time()
        self.images += 1
        if self.first is None:
            self.first = now
        self.last = now

    def stats(self) -> dict:
        return {"images": self.images, "robots": self.robots, "first_image": self.first, "last_image": self.last}


def serve(pool: list[bytes], urls: int, port: int = 0) -> None:
    import asyncio

    from aiohttp import web

    n, log = len(pool), RequestLog()

    async def image(request: web.Request) -> web.Response:
        log.image()
        try:
            i = int(request.match_info["i"])
        except ValueError:
            raise web.HTTPNotFound() from None
        if not 0 <= i < urls:
            raise web.HTTPNotFound()
        return web.Response(body=pool[i % n], content_type="image/jpeg")

    async def robots(request: web.Request) -> web.Response:
        log.robots += 1
        return web.Response(body=ROBOTS_TXT, content_type="text/plain")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(log.stats())

    async def reset(request: web.Request) -> web.Response:
        return web.json_response(log.reset())

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{i}.jpg", image)
        app.router.add_get("/robots.txt", robots)
        app.router.add_get("/_bench/stats", stats)
        app.router.add_post("/_bench/reset", reset)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=75)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]
        print(f"PORT {bound}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop  # noqa: F401

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def raise_open_files_limit() -> None:
    """Keep-alive connections from a thousand hosts' connection pools, plus one per img2dataset request."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", required=True, help="cache directory of the JPEG pool")
    ap.add_argument("--pool-size", type=int, default=80)
    ap.add_argument("--urls", type=int, default=40_000)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    raise_open_files_limit()
    images = make_pool(args.pool, args.pool_size)
    sys.stderr.write(f"serving {len(images)} images as {args.urls} URLs\n")
    serve(images, args.urls, args.port)
