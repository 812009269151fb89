"""tasks/search/serve.py: the JSON API on a real socket, and the search page rendered by a real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import html
import re
import struct
import threading
from html.parser import HTMLParser
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from clipcrawl.tasks.search.search import Searcher
from clipcrawl.tasks.search.serve import make_app
from clipcrawl.tasks.world.tiny_clip import embed_settings
from tests.helpers import keep_screenshot, run_chromium
from tests.test_search import tar_member


@pytest.fixture(scope="module")
def base_url(fx, model):
    """The app served by aiohttp's AppRunner on 127.0.0.1, a free port, its own event loop thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(Searcher(str(fx.dir), model=model)))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, name="test-serve", daemon=True)
    thread.start()
    yield f"http://{host}:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


def call(base_url: str, method: str, path: str, **kwargs) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request."""

    async def go():
        async with aiohttp.ClientSession() as session, session.request(method, base_url + path, **kwargs) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    return asyncio.run(go())


def call_json(base_url: str, method: str, path: str, **kwargs) -> tuple[int, dict]:
    import json

    status, headers, body = call(base_url, method, path, **kwargs)
    assert headers["Content-Type"].startswith("application/json"), (status, body[:200])
    return status, json.loads(body)


def red_circles(fx, results) -> int:
    return sum(fx.concept(r["id"]) == ("red", "circle") for r in results)


def test_get_search(fx, base_url):
    status, body = call_json(base_url, "GET", "/api/search?text=red+circles&k=10")
    assert status == 200, body
    assert len(body["results"]) == 10 and red_circles(fx, body["results"]) >= 8
    assert set(body["results"][0]) == {"id", "key", "url", "caption", "similarity", "shard", "duplicate_group"}
    assert body["query"] == {"text": "red circles", "image": False, "k": 10, "modality": "image", "deduplicate": False}
    status, body = call_json(base_url, "GET", "/api/search?text=red+circles&k=3&modality=text&deduplicate=1")
    assert status == 200, body
    assert len(body["results"]) == 3 and body["query"]["modality"] == "text" and body["query"]["deduplicate"]


def test_post_json_text_and_base64_image(fx, base_url):
    status, body = call_json(base_url, "POST", "/api/search", json={"text": "blue stars", "k": 10})
    assert status == 200, body
    assert sum(fx.concept(r["id"]) == ("blue", "star") for r in body["results"]) >= 8
    image = base64.b64encode(fx.images[7]).decode()
    for value in (image, "data:image/jpeg;base64," + image):
        status, body = call_json(base_url, "POST", "/api/search", json={"image": value, "k": 4})
        assert status == 200, body
        assert body["results"][0]["id"] == 7 and body["results"][0]["similarity"] == pytest.approx(1, abs=1e-4)
        assert body["query"]["image"] is True


def test_post_multipart_image_upload(fx, base_url):
    dup = fx.duplicates[-1]
    form = aiohttp.FormData()
    form.add_field("image", fx.images[dup], filename="query.webp", content_type="image/webp")
    form.add_field("k", "5")
    form.add_field("deduplicate", "1")
    status, body = call_json(base_url, "POST", "/api/search", data=form)
    assert status == 200, body
    groups = [r["duplicate_group"] for r in body["results"]]
    assert groups[0] == fx.groups[dup] and len(set(groups)) == 5
    form = aiohttp.FormData()
    form.add_field("text", "red circles")
    form.add_field("image", b"", filename="", content_type="application/octet-stream")  # an empty file input
    status, body = call_json(base_url, "POST", "/api/search", data=form)
    assert status == 200 and red_circles(fx, body["results"]) >= 8, body


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "reason"),
    [
        ("GET", "/api/search", {}, "exactly one of text or image"),
        ("GET", "/api/search?text=a&k=ten", {}, "k must be an integer, got 'ten'"),
        ("GET", "/api/search?text=a&k=0", {}, "k must be between 1 and 1000"),
        ("GET", "/api/search?text=a&k=5000", {}, "k must be between 1 and 1000"),
        ("GET", "/api/search?text=a&modality=audio", {}, "modality must be one of image, text"),
        ("GET", "/api/search?text=a&deduplicate=maybe", {}, "deduplicate must be true or false"),
        ("GET", "/api/search?text=a&colour=red", {}, "unknown parameter(s): colour"),
        ("GET", "/api/search?image=abc", {}, "image queries are POSTed"),
        ("GET", "/api/search?text=+", {}, "the text query is empty"),
        (
            "POST",
            "/api/search",
            {"json": {"text": "a", "image": "aGVsbG8="}},
            "exactly one of text or image (got both)",
        ),
        ("POST", "/api/search", {"json": {"image": "not base64!"}}, "image is not valid base64"),
        ("POST", "/api/search", {"json": {"image": "aGVsbG8="}}, "cannot decode the query image"),
        ("POST", "/api/search", {"json": ["red circles"]}, "the JSON body must be an object"),
        ("POST", "/api/search", {"json": {"text": 3}}, "text must be a string"),
        (
            "POST",
            "/api/search",
            {"data": b"{nope", "headers": {"Content-Type": "application/json"}},
            "the body is not valid JSON",
        ),
        (
            "POST",
            "/api/search",
            {"data": b"text=a", "headers": {"Content-Type": "text/plain"}},
            "unsupported Content-Type 'text/plain'",
        ),
        ("GET", "/api/thumbnail/abc", {}, "thumbnail id must be a non-negative integer, got 'abc'"),
    ],
)
def test_bad_requests_are_400_with_the_reason(base_url, method, path, kwargs, reason):
    status, body = call_json(base_url, method, path, **kwargs)
    assert status == 400
    assert reason in body["error"]


def test_bad_multipart_image_is_400(base_url):
    form = aiohttp.FormData()
    form.add_field("image", b"GIF89a broken", filename="q.gif", content_type="image/gif")
    status, body = call_json(base_url, "POST", "/api/search", data=form)
    assert status == 400 and body["error"].startswith("cannot decode the query image: ")


def test_thumbnail(fx, base_url):
    """One sample of each shard; crawl B's shard (added to the index later) has the keys of crawl A's first."""
    for i, mime in ((0, "image/jpeg"), (33, "image/png"), (fx.first_of_b, "image/webp")):
        status, headers, body = call(base_url, "GET", f"/api/thumbnail/{i}")
        assert status == 200 and body == tar_member(fx.tars[i], f"{fx.keys[i]}.{fx.exts[i]}"), (i, body[:200])
        assert headers["Content-Type"] == mime
        assert "max-age=" in headers["Cache-Control"]
    status, body = call_json(base_url, "GET", f"/api/thumbnail/{len(fx.scenes)}")
    assert status == 404 and "out of range" in body["error"]
    status, body = call_json(base_url, "GET", "/api/nothing")
    assert status == 404


def test_info(fx, base_url):
    status, body = call_json(base_url, "GET", "/api/info")
    assert status == 200
    assert body["count"] == len(fx.scenes) and body["shards"] == 3
    assert body["image"]["index_key"] == "IVF4,Flat" and body["text"]["params"] == fx.infos["text"]["params"]
    assert body["image"]["recall_at_k"] == fx.infos["image"]["recall_at_k"] == 1.0
    assert body["clip"]["checkpoint"] == embed_settings().checkpoint
    assert body["near_duplicates"]["threshold"] == fx.infos["settings"]["near_duplicate_threshold"]


def test_page_is_served(base_url):
    status, headers, body = call(base_url, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/api/search" in body and b"<script" in body
    assert b'src="http' not in body and b'href="http' not in body  # no external assets


# --- the page in a real browser -------------------------------------------------------------------------------


def element_text(dom: str, id: str) -> str:
    """The text of the page's <div id=...> (which holds only text)."""
    found = re.search(rf'<div id="{id}"[^>]*>([^<]*)</div>', dom)
    assert found, f"no div#{id} in the DOM"
    return html.unescape(found.group(1))


class Cards(HTMLParser):
    """The result cards of a dumped DOM: [{"id", "classes", "img", "caption"}]."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict] = []
        self._in_caption = False

    @classmethod
    def of(cls, dom: str) -> list[dict]:
        parser = cls()
        parser.feed(dom)
        return parser.cards

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "card" in classes:
            self.cards.append({"id": int(attrs["data-id"]), "classes": classes, "img": None, "caption": ""})
        elif tag == "img" and self.cards and self.cards[-1]["img"] is None:
            self.cards[-1]["img"] = attrs.get("src")
        elif tag == "p" and "caption" in classes:
            self._in_caption = True

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.cards[-1]["caption"] += data


def test_page_renders_the_query_from_the_url(fx, base_url, chromium, tmp_path):
    done = run_chromium(chromium, tmp_path, f"{base_url}/?text={quote('red circles')}&k=10", "--dump-dom")
    cards = Cards.of(done.stdout)
    assert len(cards) == 10, done.stdout[-3000:]
    for card in cards:
        assert card["img"] == f"/api/thumbnail/{card['id']}"
        assert card["caption"] == fx.captions[card["id"]]
    assert fx.concept(cards[0]["id"]) == ("red", "circle")
    assert red_circles(fx, cards) >= 8
    assert "red" in cards[0]["caption"] and "circle" in cards[0]["caption"]
    assert "loaded" in cards[0]["classes"]  # the browser got and decoded the thumbnail
    assert not any("broken" in c["classes"] for c in cards)
    assert element_text(done.stdout, "error") == ""
    assert element_text(done.stdout, "status").startswith("10 results for \u201cred circles\u201d in the image index")


def test_page_shows_errors(base_url, chromium, tmp_path):
    done = run_chromium(chromium, tmp_path, f"{base_url}/?text=red&k=5000", "--dump-dom")
    assert element_text(done.stdout, "error") == "Search failed: k must be between 1 and 1000, got 5000"
    assert Cards.of(done.stdout) == []


def test_page_screenshot(base_url, chromium, tmp_path):
    shot = tmp_path / "page.png"
    run_chromium(
        chromium,
        tmp_path,
        f"{base_url}/?text={quote('red circles')}&k=20",
        "--window-size=1280,900",
        "--hide-scrollbars",
        f"--screenshot={shot}",
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1280, 900)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 500  # text and thumbnails, not a blank page
    reds = sum(n for n, (r, g, b) in colours if r > 180 and g < 80 and b < 80)
    assert reds > 0.01 * 1280 * 900  # the red circles' thumbnails are on it
    keep_screenshot(shot, "serve_page.png")
