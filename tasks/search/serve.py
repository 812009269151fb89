"""A web page and JSON API over a built index (like clip-retrieval's back end and front end).

    GET  /                      the search page (tasks/static/index.html)
    GET  /api/search?text=...&k=10&modality=image&deduplicate=1
    POST /api/search            JSON {"text" | "image": base64, "k", "modality", "deduplicate"},
                                or multipart/form-data with the same fields, "image" a file
    GET  /api/thumbnail/{id}    the sample's image from its shard's tar
    GET  /api/info              counts, index keys, search parameters, measured recall

and clip-retrieval's back-end API (clip_back.py: /indices-list, /knn-service, /metadata) for its ClipClient
and front end.

Searches run one at a time in a worker thread (faiss and torch use every core themselves);
thumbnails are read by a few threads of their own so a page of them does not wait behind a search.
Bad requests get 400 and {"error": reason}, bodies over MAX_UPLOAD 413.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.uri import filesystem, is_local, name_of
from clipcrawl.tasks.search.search import MODALITIES, NotFound, Searcher

STATIC = Path(__file__).parent / "static"
MAX_K = 1000
MAX_UPLOAD = 32 << 20  # bytes of a request body (an uploaded query image)
THUMBNAIL_CACHE = "public, max-age=86400"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}

SEARCHER = web.AppKey("searcher", Searcher)
CHECKED = web.AppKey("index_checked", list)  # [time of the last check, index_infos.json's mtime, the Searcher]
RELOAD_CHECK_SECONDS = 1.0
SEARCH_POOL = web.AppKey("search_pool", ThreadPoolExecutor)
THUMBNAIL_POOL = web.AppKey("thumbnail_pool", ThreadPoolExecutor)
log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request the API cannot serve; the message is the reason given to the client."""

    status = 400


class TooLarge(BadRequest):
    """A request body over MAX_UPLOAD bytes."""

    status = 413


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def count(value, name: str, default: int, top: int, clamp: bool = False) -> int:
    """A count parameter (k, num_images, ...): an integer, or its decimal digits as a query parameter gives them;
    `default` when absent or empty; between 1 and `top` (over `top`: `top` when `clamp`, else refused)."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
        if isinstance(value, (bool, float)) or str(number) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer, got {value!r}") from None
    if clamp and number > top:
        return top
    if not 1 <= number <= top:
        raise BadRequest(f"{name} must be between 1 and {top}, got {number}")
    return number


def _k(value) -> int:
    return count(value, "k", 10, MAX_K)


def flag(value, name: str = "deduplicate") -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if str(value).lower() in TRUE:
        return True
    if str(value).lower() in FALSE:
        return False
    raise BadRequest(f"{name} must be true or false (1/0), got {value!r}")


def modality(value) -> str:
    value = value or "image"
    if value not in MODALITIES:
        raise BadRequest(f"modality must be one of {', '.join(MODALITIES)}, got {value!r}")
    return value


def base64_image(value) -> bytes:
    if not isinstance(value, str):
        raise BadRequest("image must be a base64 string")
    if value.startswith("data:"):  # a data: URL, as a browser's FileReader gives
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"image is not valid base64: {exc}") from None


def _text(value) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("text must be a string")
    return value


def query_from_params(params) -> dict:
    """Search arguments from GET query parameters or a JSON body (a mapping)."""
    unknown = set(params) - {"text", "image", "k", "modality", "deduplicate"}
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    image = params.get("image")
    return {
        "text": _text(params.get("text")),
        "image": None if image in (None, "") else base64_image(image),
        "k": _k(params.get("k")),
        "modality": modality(params.get("modality")),
        "deduplicate": flag(params.get("deduplicate")),
    }


async def _query_from_multipart(request: web.Request) -> dict:
    fields, image = {}, None
    reader = await request.multipart()
    async for part in reader:
        if part.name == "image":
            image = bytes(await part.read())
        elif part.name:
            fields[part.name] = await part.text()
    query = query_from_params(fields)
    if image:  # an empty file input sends a part with no bytes: no image
        query["image"] = image
    return query


async def _search(request: web.Request, query: dict) -> web.Response:
    if (query["text"] is None) == (query["image"] is None):
        raise BadRequest("give exactly one of text or image" + ("" if query["text"] is None else " (got both)"))
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    searcher = await current(request.app)
    try:
        results = await loop.run_in_executor(request.app[SEARCH_POOL], lambda: searcher.search(**query))
    except ValueError as exc:  # the Searcher's own checks: bad image bytes, empty text, ...
        raise BadRequest(str(exc)) from None
    echo = {key: value for key, value in query.items() if key != "image"}
    echo["image"] = query["image"] is not None
    return web.json_response(
        {"results": results, "query": echo, "took_ms": round((time.perf_counter() - started) * 1000, 1)}
    )


async def search_get(request: web.Request) -> web.Response:
    if "image" in request.query:
        raise BadRequest('image queries are POSTed: POST /api/search with JSON {"image": base64} or multipart')
    return await _search(request, query_from_params(request.query))


async def search_post(request: web.Request) -> web.Response:
    ctype = request.content_type
    if ctype == "application/json":
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object")
        return await _search(request, query_from_params(body))
    if ctype == "multipart/form-data":
        return await _search(request, await _query_from_multipart(request))
    raise BadRequest(f"unsupported Content-Type {ctype!r}: send application/json or multipart/form-data")


async def thumbnail(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise BadRequest(f"thumbnail id must be a non-negative integer, got {raw!r}")
    loop = asyncio.get_running_loop()
    searcher = await current(request.app)
    try:
        data, mime = await loop.run_in_executor(request.app[THUMBNAIL_POOL], searcher.thumbnail, int(raw))
    except NotFound as exc:
        return _error(404, str(exc))
    return web.Response(body=data, content_type=mime, headers={"Cache-Control": THUMBNAIL_CACHE})


async def info(request: web.Request) -> web.Response:
    return web.json_response((await current(request.app)).info())


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@web.middleware
async def json_errors(request: web.Request, handler):
    """API errors as JSON: 400 with the reason for bad requests, 500 (logged) for failures."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception as exc:  # one bad query must not look like an HTML error page to the API's clients
        log.exception("%s %s failed", request.method, request.path_qs)
        return _error(500, f"{type(exc).__name__}: {exc}")


def infos_mtime(index_dir: str) -> float | str | None:
    """When index_infos.json last changed (None where the filesystem does not say)."""
    fs, path = filesystem(layout.index_infos(index_dir))
    try:
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    found = next((info[k] for k in ("mtime", "LastModified", "updated", "last_modified") if info.get(k)), None)
    return found if isinstance(found, float | int) else (str(found) if found is not None else None)


async def current(app: web.Application) -> Searcher:
    """The app's Searcher, loaded again when index_infos.json changed (a takedown, an index add rewrote the
    index: its last write): checked at most once a second; a failed load keeps the old one (logged)."""
    now = time.monotonic()
    searcher = app[CHECKED][2]
    if now - app[CHECKED][0] < RELOAD_CHECK_SECONDS:
        return searcher
    app[CHECKED][0] = now
    loop = asyncio.get_running_loop()
    mtime = await loop.run_in_executor(app[SEARCH_POOL], infos_mtime, searcher.index_dir)
    if mtime is None or mtime == app[CHECKED][1]:
        return searcher
    try:
        fresh = await loop.run_in_executor(app[SEARCH_POOL], lambda: Searcher(searcher.index_dir, searcher._model))
    except (OSError, ValueError) as exc:  # a writer half-way: the next check tries again
        log.warning("index %s changed but did not load: %s", searcher.index_dir, exc)
        return searcher
    app[CHECKED][1:] = [mtime, fresh]  # the app is frozen once serving: the holder changes, not the app
    log.info("index %s changed: reloaded (%d samples)", searcher.index_dir, fresh.count)
    return fresh


def index_name_of(index_dir: str) -> str:
    """The index's name in clip-retrieval's API: its folder's name (a local path resolved first: `.` is named)."""
    if not is_local(index_dir):
        return name_of(index_dir)
    return name_of(os.path.abspath(index_dir.removeprefix("file://"))) or index_dir


def make_app(
    searcher: Searcher, thumbnail_threads: int = 8, index_name: str | None = None, allow_addresses: list[str] = ()
) -> web.Application:
    """The aiohttp application serving `searcher` (loaded again when its index changes, current()), with
    clip-retrieval's back-end API for the index `index_name` (default: the index folder's name); image_url
    queries may reach the internal networks of `allow_addresses` (CIDRs), public addresses only otherwise."""
    from clipcrawl.tasks.search.clip_back import add_clip_routes  # it builds on this module's helpers

    app = web.Application(middlewares=[json_errors], client_max_size=MAX_UPLOAD)
    app[SEARCHER] = searcher
    app[CHECKED] = [time.monotonic(), infos_mtime(searcher.index_dir), searcher]
    app[SEARCH_POOL] = ThreadPoolExecutor(1, thread_name_prefix="clipcrawl-search")
    app[THUMBNAIL_POOL] = ThreadPoolExecutor(thumbnail_threads, thread_name_prefix="clipcrawl-thumbnail")

    async def shutdown(app: web.Application) -> None:
        app[SEARCH_POOL].shutdown(wait=False, cancel_futures=True)
        app[THUMBNAIL_POOL].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    app.router.add_get("/", page)
    app.router.add_get("/api/search", search_get)
    app.router.add_post("/api/search", search_post)
    app.router.add_get("/api/thumbnail/{id}", thumbnail)
    app.router.add_get("/api/info", info)
    add_clip_routes(app, index_name or index_name_of(searcher.index_dir), allow_addresses)
    return app


def serve(
    index_dir: str,
    host: str = "127.0.0.1",
    port: int = 1234,
    index_name: str | None = None,
    allow_addresses: list[str] = (),
) -> None:
    """Load the index and its CLIP model, then serve until interrupted."""
    searcher = Searcher(index_dir)
    searcher.model  # noqa: B018 - load now: a missing model fails at start, and the first query is not slow
    name = index_name or index_name_of(index_dir)
    app = make_app(searcher, index_name=name, allow_addresses=allow_addresses)
    print(
        f"serving {searcher.count} samples of {index_dir} at http://{host}:{port}/ (indice_name {name!r})", flush=True
    )
    web.run_app(app, host=host, port=port, print=None)
