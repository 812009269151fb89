"""clip-retrieval's back-end API (clip_retrieval/clip_back.py) beside serve.py's own routes, so that its ClipClient
and its web front end search a clipcrawl index unchanged:

    GET  /indices-list    ["NAME"]: the one index served (--index-name; default: the index folder's name)
    POST /knn-service     {"text" | "image": base64 | "image_url" | "embedding_input", "modality", "num_images",
                          "num_result_ids", "indice_name", "deduplicate", ...} -> [{"url", "caption", "key",
                          "image", "id", "similarity"}, ...] best first
    POST /metadata        {"ids": [...], "indice_name"} -> [{"id", "metadata": {"url", "caption", "key", "image"}}]

As clip back reads them: the body is JSON whatever its Content-Type (the front end posts text/plain); the query is
the first of a non-empty text, image, image_url, embedding_input; num_result_ids (default num_images) ids are
searched and the first num_images of them carry their metadata, the rest only id and similarity (the front end
asks /metadata for those as it scrolls). `image` is the sample's image from its shard, base64 JPEG, as clip back
puts a local image_path's file there. CORS as flask_cors's defaults: Access-Control-Allow-Origin * on these routes,
and OPTIONS preflights answered.

Bounds on one answer (the front end's download button asks for num_images=10000): num_result_ids at most
MAX_RESULT_IDS; num_images over MAX_K is taken as MAX_K (the results past it carry id and similarity only);
/metadata takes at most MAX_METADATA_IDS ids; `image` is attached to the first MAX_IMAGES results only, the others
carry url, caption and key (the front end shows `url`).

What clip back does and this server does not:
- deduplicate keeps the best result of each near-duplicate group of the index (its duplicate_group), where clip
  back groups the results whose embeddings are over 0.94 cosine apart; the effect is the same.
- use_safety_model, use_violence_detector, aesthetic_score and aesthetic_weight are read (a bad value is a 400) and
  ignored, as clip back ignores them when it was started without those models; the response header
  X-Clipcrawl-Ignored names the ones a request set, and its unknown fields (at most MAX_NAMED names of letters,
  digits and _, then how many more).
- use_mclip: true is refused (400): no multilingual text encoder is served; the index's CLIP model encodes text.
- image_url is fetched by the download stage's fetcher, with its SSRF guard: a host that resolves to a private,
  loopback or otherwise internal address is refused (400) unless make_app was given that network to allow; the
  error names the status only ("image_url: blocked_address"), not the address or the server's answer.
Bad requests get 400 and {"error": reason}, where clip back answers 500; a body over MAX_UPLOAD gets 413.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import itertools
import json
import logging
import math
import re

from aiohttp import web

from clipcrawl.tasks.search.search import NotFound, Searcher
from clipcrawl.tasks.search.serve import (
    MAX_K,
    MAX_UPLOAD,
    SEARCH_POOL,
    THUMBNAIL_POOL,
    BadRequest,
    TooLarge,
    base64_image,
    count,
    current,
    flag,
    modality,
)

INDEX_NAME = web.AppKey("clip_index_name", str)
ALLOW_ADDRESSES = web.AppKey("clip_allow_addresses", list)  # networks image_url may reach though internal
ROUTES = {"/indices-list": "GET", "/knn-service": "POST", "/metadata": "POST"}
MAX_RESULT_IDS = 10_000  # ids searched by one query (clip-retrieval's front end asks for thousands)
MAX_METADATA_IDS = 1_000  # ids of one /metadata request (the front end asks for a page of them as it scrolls)
MAX_IMAGES = 100  # results of one answer that carry their `image` (each a shard read and a base64 JPEG)
MAX_NAMED = 20  # unknown fields named in X-Clipcrawl-Ignored
FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
NUM_IMAGES = 40  # ClipClient's default
METADATA = ("url", "caption", "key")  # of a sample, with its image
IGNORED = ("use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight")
KNOWN = {"text", "image", "image_url", "embedding_input", "modality", "num_images", "num_result_ids", "indice_name"}
KNOWN |= {"deduplicate", "use_mclip", *IGNORED}
log = logging.getLogger(__name__)


async def _body(request: web.Request) -> dict:
    """The JSON object of the body, whatever the Content-Type (as flask's get_json(force=True))."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"the body is over {MAX_UPLOAD} bytes") from None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


def _number(body: dict, name: str, kind: type) -> float | None:
    """aesthetic_score (int) / aesthetic_weight (float) as clip back parses them: "" or absent is none."""
    value = body.get(name, "")
    if value in ("", None):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be finite, got {value!r}")
    return number


def _indice(body: dict, name: str) -> None:
    given = body.get("indice_name")
    if given not in (None, "", name):
        raise BadRequest(f"unknown indice_name {given!r}: this server has [{name!r}] (GET /indices-list)")


def knn_query(body: dict, name: str) -> tuple[dict, list[str]]:
    """The search arguments of a /knn-service body, with num_images and the fields to fetch; and the names of the
    options it set that this server ignores (unknown fields included)."""
    _indice(body, name)
    for option in ("deduplicate", "use_mclip", "use_safety_model", "use_violence_detector"):
        body[option] = flag(body.get(option), option)
    if body["use_mclip"]:
        raise BadRequest("use_mclip is not available: this server encodes text with the index's CLIP model only")
    aesthetic = {n: _number(body, n, k) for n, k in (("aesthetic_score", int), ("aesthetic_weight", float))}
    num_images = count(body.get("num_images"), "num_images", NUM_IMAGES, MAX_K, clamp=True)
    query = {
        "k": count(body.get("num_result_ids"), "num_result_ids", num_images, MAX_RESULT_IDS),
        "num_images": num_images,
        "modality": modality(body.get("modality")),
        "deduplicate": body["deduplicate"],
        "text": None,
        "image": None,
        "image_url": None,
        "embedding": None,
    }
    text, image, url, embedding = (body.get(n) for n in ("text", "image", "image_url", "embedding_input"))
    if text not in (None, ""):
        if not isinstance(text, str):
            raise BadRequest("text must be a string")
        query["text"] = text
    elif image not in (None, ""):
        query["image"] = base64_image(image)
    elif url not in (None, ""):
        if not isinstance(url, str):
            raise BadRequest("image_url must be a string")
        query["image_url"] = url
    elif embedding is not None:
        if not isinstance(embedding, list):
            raise BadRequest("embedding_input must be a list of numbers")
        query["embedding"] = embedding
    else:
        raise BadRequest("must fill one of text, image, image_url and embedding_input")
    ignored = [n for n in IGNORED if n.startswith("use_") and body[n]]
    ignored += [n for n, v in aesthetic.items() if v is not None]
    return query, ignored + unknown_fields(body)


def unknown_fields(body: dict) -> list[str]:
    """The body's unknown field names as a response header may carry them: at most MAX_NAMED of letters, digits
    and _ (a name may hold CR/LF, or a body thousands of them), then how many more."""
    unknown = sorted(set(body) - KNOWN)
    named = [n for n in unknown if FIELD_NAME.fullmatch(n)][:MAX_NAMED]
    if len(unknown) > len(named):
        named.append(f"{len(unknown) - len(named)} more unknown fields")
    return named


async def fetch_image(url: str, allow: list[str]) -> bytes:
    """The query image at `url`, fetched as the download stage fetches (SSRF guard, size cap, redirects checked
    hop by hop, robots.txt); BadRequest naming the reason."""
    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.core.status import DownloadStatus
    from clipcrawl.tasks.download.fetch import Fetcher

    if not url.lower().startswith(("http://", "https://")):
        raise BadRequest("image_url must be an http:// or https:// URL")
    settings = DownloadSettings(retries=0, min_bytes=0, max_bytes=MAX_UPLOAD, allow_addresses=allow)
    async with Fetcher(settings) as fetcher:
        result = await fetcher.fetch(url)
    if result.status != DownloadStatus.SUCCESS:  # the status only: any web page may ask (CORS *), and the
        raise BadRequest(f"image_url: {result.status.value}")  # details would map the hosts of allowed networks
    return result.body


def jpeg_base64(searcher: Searcher, id: int) -> str | None:
    """The sample's image from its shard as base64 JPEG (clip back's `image`); None when it cannot be read or
    decoded (its result goes without `image`)."""
    try:
        data, mime = searcher.thumbnail(id)
        if mime != "image/jpeg":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                out = io.BytesIO()
                image.convert("RGB").save(out, format="JPEG", quality=90)
                data = out.getvalue()
    except NotFound:
        return None
    except Exception as exc:  # PIL raises several kinds (DecompressionBombError, OSError, SyntaxError, ...)
        log.warning("id %s: its image is not sent: %s: %s", id, type(exc).__name__, exc)
        return None
    return base64.b64encode(data).decode("ascii")


async def _metadata(request: web.Request, searcher: Searcher, samples: list[dict]) -> list[dict]:
    """clip back's metadata of each sample: url, caption, key, and the image when its shard has it (the first
    MAX_IMAGES samples only)."""
    loop = asyncio.get_running_loop()
    pool = request.app[THUMBNAIL_POOL]
    with_image = samples[:MAX_IMAGES]
    images = await asyncio.gather(*(loop.run_in_executor(pool, jpeg_base64, searcher, s["id"]) for s in with_image))
    out = []
    for sample, image in itertools.zip_longest(samples, images):
        meta = {name: sample[name] for name in METADATA}
        if image is not None:
            meta["image"] = image
        out.append(meta)
    return out


async def indices_list(request: web.Request) -> web.Response:
    return web.json_response([request.app[INDEX_NAME]])


async def knn_service(request: web.Request) -> web.Response:
    query, ignored = knn_query(await _body(request), request.app[INDEX_NAME])
    if query["image_url"] is not None:
        query["image"] = await fetch_image(query["image_url"], request.app[ALLOW_ADDRESSES])
    searcher = await current(request.app)
    args = {name: query[name] for name in ("text", "image", "embedding", "k", "modality", "deduplicate")}
    loop = asyncio.get_running_loop()
    try:
        found = await loop.run_in_executor(request.app[SEARCH_POOL], lambda: searcher.search(**args))
    except ValueError as exc:  # the Searcher's checks: a bad image, an embedding of the wrong size, ...
        raise BadRequest(str(exc)) from None
    metas = await _metadata(request, searcher, found[: query["num_images"]])
    results = [
        {**(metas[i] if i < len(metas) else {}), "id": r["id"], "similarity": r["similarity"]}
        for i, r in enumerate(found)
    ]
    headers = {"X-Clipcrawl-Ignored": ", ".join(ignored)} if ignored else None
    return web.json_response(results, headers=headers)


async def metadata(request: web.Request) -> web.Response:
    body = await _body(request)
    _indice(body, request.app[INDEX_NAME])
    ids = body.get("ids")
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise BadRequest("ids must be a list of integers")
    if len(ids) > MAX_METADATA_IDS:
        raise BadRequest(f"at most {MAX_METADATA_IDS} ids at once (MAX_METADATA_IDS), got {len(ids)}")
    searcher = await current(request.app)
    try:  # reads ids.parquet's row groups: off the event loop
        samples = await asyncio.get_running_loop().run_in_executor(request.app[THUMBNAIL_POOL], searcher.samples, ids)
    except IndexError as exc:
        raise BadRequest(str(exc)) from None
    metas = await _metadata(request, searcher, samples)
    return web.json_response([{"id": i, "metadata": meta} for i, meta in zip(ids, metas)])


async def preflight(request: web.Request) -> web.Response:
    """A CORS preflight (flask_cors's answer: any origin, the route's methods, the headers asked for)."""
    headers = {"Access-Control-Allow-Methods": f"{ROUTES[request.path]}, OPTIONS"}
    if asked := request.headers.get("Access-Control-Request-Headers"):
        headers["Access-Control-Allow-Headers"] = asked
    return web.Response(headers=headers)


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    if request.path in ROUTES:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if "X-Clipcrawl-Ignored" in response.headers:
            response.headers["Access-Control-Expose-Headers"] = "X-Clipcrawl-Ignored"


def cidr(value: str) -> str:
    """A network image_url queries may reach (a CIDR, or one address), as the download stage's SSRF guard reads
    it; ValueError naming it otherwise (argparse's type for --allow-addresses)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise ValueError(f"allow_addresses: {value!r} is not a CIDR network (as 10.0.0.0/8 or 127.0.0.1/32)") from None
    return value


def add_clip_routes(app: web.Application, index_name: str, allow_addresses: list[str] = ()) -> None:
    """Serve clip-retrieval's back-end API on `app` (serve.make_app's), the index under `index_name`."""
    app[INDEX_NAME] = index_name
    app[ALLOW_ADDRESSES] = [cidr(network) for network in allow_addresses]
    handlers = {"/indices-list": indices_list, "/knn-service": knn_service, "/metadata": metadata}
    for path, method in ROUTES.items():
        app.router.add_route(method, path, handlers[path])
        app.router.add_route("OPTIONS", path, preflight)
    app.on_response_prepare.append(_cors)
