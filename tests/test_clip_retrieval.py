"""clip-retrieval compatibility: clip-retrieval's own ClipClient against `clipcrawl serve`'s /knn-service, /metadata
and /indices-list on a real socket; index/ as `clip-retrieval back` loads it (its own loaders of metadata/*.parquet,
image.index and text.index), before and after a takedown; and clip back's own Flask service answering over it."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pandas as pd
import PIL.Image
import pyarrow.parquet as pq
import pytest
import requests
from aiohttp import web

from clipcrawl.flows import cli
from clipcrawl.tasks.index.clip_metadata import ensure_clip_metadata, is_published
from clipcrawl.tasks.search import clip_back
from clipcrawl.tasks.search import serve as serve_module
from clipcrawl.tasks.search.clip_back import ALLOW_ADDRESSES, INDEX_NAME
from clipcrawl.tasks.search.search import Searcher
from clipcrawl.tasks.search.serve import MAX_UPLOAD, make_app
from clipcrawl.tasks.takedown.match import Matched
from clipcrawl.tasks.takedown.rewrite import rewrite_index

NAME = "clipcrawl_test"


def url_of(i: int) -> str:
    """The URL of sample i (tests/test_search.py's write_crawl)."""
    return f"https://img.example/{i}.jpg"


def clip_retrieval_module(name: str):
    """clip_retrieval.NAME without the package's __init__, which imports every one of its tools (inference,
    filtering, ...) and so dependencies the tests do not install; its client needs only requests, its back end
    flask, flask_restful, faiss, pandas, h5py, ... which the test lock has."""
    import sys

    if "clip_retrieval" not in sys.modules:
        spec = importlib.util.find_spec("clip_retrieval")
        sys.modules["clip_retrieval"] = importlib.util.module_from_spec(spec)  # the package, __init__ not run
    return importlib.import_module(f"clip_retrieval.{name}")


cc = clip_retrieval_module("clip_client")
clip_back_module = clip_retrieval_module("clip_back")


@pytest.fixture(scope="module")
def searcher(fx, model):
    return Searcher(str(fx.dir), model=model)


@pytest.fixture(scope="module")
def image_server(fx):
    """A web server on 127.0.0.1 with one image, /q.jpg (sample 7's); 404 for anything else (robots.txt)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            found = self.path == "/q.jpg"
            body = fx.images[7] if found else b"not here"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/jpeg" if found else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def base_url(searcher):
    """`clipcrawl serve`'s app on 127.0.0.1 (its own event loop thread); image_url may reach 127.0.0.1 only."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(searcher, index_name=NAME, allow_addresses=["127.0.0.1/32"]))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, name="test-clip-back", daemon=True)
    thread.start()
    yield f"http://{host}:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


def client(base_url: str, **options):
    return cc.ClipClient(url=base_url + "/knn-service", indice_name=NAME, **options)


def same_samples(results: list[dict], expected: list[dict], fx) -> None:
    """The ClipClient's results are the Searcher's, under clip-retrieval's field names."""
    assert [r["id"] for r in results] == [e["id"] for e in expected]
    assert [r["similarity"] for r in results] == pytest.approx([e["similarity"] for e in expected], abs=1e-5)
    for r in results:
        assert set(r) == {"url", "caption", "key", "image", "id", "similarity"}, r.keys()
        assert (r["url"], r["caption"]) == (url_of(r["id"]), fx.captions[r["id"]])
        assert base64.b64decode(r["image"])[:3] == b"\xff\xd8\xff"  # a JPEG, whatever the shard stores


def test_text_query(fx, searcher, base_url):
    results = client(base_url, num_images=10, deduplicate=False).query(text="red circles")
    same_samples(results, searcher.search(text="red circles", k=10), fx)
    assert sum(fx.concept(r["id"]) == ("red", "circle") for r in results) >= 8
    captions = client(base_url, num_images=6, modality=cc.Modality.TEXT).query(text="blue stars")
    same_samples(captions, searcher.search(text="blue stars", k=6, modality="text", deduplicate=True), fx)


def test_image_query_from_a_file(fx, searcher, base_url, tmp_path):
    path = tmp_path / "query.jpg"
    path.write_bytes(fx.images[7])
    results = client(base_url, num_images=4).query(image=str(path))
    same_samples(results, searcher.search(image=fx.images[7], k=4, deduplicate=True), fx)
    assert results[0]["id"] == 7 and results[0]["similarity"] == pytest.approx(1, abs=1e-4)


def test_image_url_through_the_ssrf_guard(fx, searcher, base_url, image_server):
    results = client(base_url, num_images=3).query(image=image_server + "/q.jpg")  # the client sends image_url
    same_samples(results, searcher.search(image=fx.images[7], k=3, deduplicate=True), fx)
    refused = requests.post(
        base_url + "/knn-service", json={"image_url": "http://10.1.2.3/q.jpg", "modality": "image", "num_images": 3}
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "image_url: blocked_address"  # the status only: no host, no server answer


def test_embedding_input(fx, searcher, base_url):
    embedding = (searcher.embed_query(text="blue stars")[0] * 3).tolist()  # searched normalised, as the text
    results = client(base_url, num_images=8, deduplicate=False).query(embedding_input=embedding)
    same_samples(results, searcher.search(text="blue stars", k=8), fx)


def test_deduplicate(fx, searcher, base_url, tmp_path):
    dup = fx.duplicates[-1]
    path = tmp_path / "dup.img"
    path.write_bytes(fx.images[dup])
    both = client(base_url, num_images=5, deduplicate=False).query(image=str(path))
    assert {fx.groups[r["id"]] for r in both[:2]} == {fx.groups[dup]}  # the image and its copy
    unique = client(base_url, num_images=5, deduplicate=True).query(image=str(path))
    same_samples(unique, searcher.search(image=fx.images[dup], k=5, deduplicate=True), fx)
    groups = [fx.groups[r["id"]] for r in unique]
    assert groups[0] == fx.groups[dup] and len(set(groups)) == 5


def test_num_result_ids_beyond_num_images_carry_no_metadata(fx, searcher, base_url):
    """As clip back's map_to_metadata: num_result_ids searched, metadata for the first num_images; the body is JSON
    whatever its Content-Type (its front end posts text/plain); ignored options are named in a header."""
    body = {"text": "red circles", "modality": "image", "num_images": 3, "num_result_ids": 8, "indice_name": NAME}
    body |= {"use_safety_model": True, "aesthetic_score": "9", "aesthetic_weight": "0.5", "hide": 1}
    resp = requests.post(base_url + "/knn-service", data=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert resp.status_code == 200, resp.text
    results = resp.json()
    assert [r["id"] for r in results] == [r["id"] for r in searcher.search(text="red circles", k=8)]
    assert all("caption" in r for r in results[:3]) and all(set(r) == {"id", "similarity"} for r in results[3:])
    assert resp.headers["X-Clipcrawl-Ignored"] == "use_safety_model, aesthetic_score, aesthetic_weight, hide"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_indices_list_and_metadata(fx, searcher, base_url):
    assert requests.get(base_url + "/indices-list").json() == [NAME]
    assert make_app(searcher)[INDEX_NAME] == fx.dir.name  # no --index-name: the index folder's name
    resp = requests.post(base_url + "/metadata", json={"ids": [12, 0, 12], "indice_name": NAME})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert [g["id"] for g in got] == [12, 0, 12]
    for g in got:
        meta = g["metadata"]
        assert set(meta) == {"url", "caption", "key", "image"}
        assert (meta["url"], meta["caption"]) == (url_of(g["id"]), fx.captions[g["id"]])
    assert requests.post(base_url + "/metadata", json={"ids": [], "indice_name": NAME}).json() == []


def test_cors_preflight(base_url):
    asked = {"Origin": "https://rom1504.github.io", "Access-Control-Request-Method": "POST"}
    resp = requests.options(
        base_url + "/knn-service", headers=asked | {"Access-Control-Request-Headers": "content-type"}
    )
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "content-type"
    assert requests.get(base_url + "/indices-list", headers=asked).headers["Access-Control-Allow-Origin"] == "*"
    error = requests.post(base_url + "/metadata", json={"ids": "x"}, headers={"Origin": "https://example.org"})
    assert error.status_code == 400 and error.headers["Access-Control-Allow-Origin"] == "*"  # readable by the page
    assert "Access-Control-Allow-Origin" not in requests.get(base_url + "/api/info").headers  # clip's routes only


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/knn-service", {"modality": "image", "num_images": 3}, "must fill one of text, image, image_url"),
        ("/knn-service", {"text": "a", "use_mclip": True}, "use_mclip is not available"),
        ("/knn-service", {"text": "a", "indice_name": "laion5B"}, "unknown indice_name 'laion5B'"),
        ("/knn-service", {"text": "a", "num_images": 0}, "num_images must be between 1 and 1000"),
        ("/knn-service", {"text": "a", "num_result_ids": "many"}, "num_result_ids must be an integer"),
        ("/knn-service", {"text": "a", "modality": "audio"}, "modality must be one of image, text"),
        ("/knn-service", {"text": "a", "deduplicate": "maybe"}, "deduplicate must be true or false"),
        ("/knn-service", {"text": "a", "aesthetic_score": "high"}, "aesthetic_score must be a number"),
        ("/knn-service", {"image": "not base64!"}, "image is not valid base64"),
        ("/knn-service", {"embedding_input": [1.0, 2.0]}, "the query embedding has 2 dimensions"),
        ("/knn-service", {"embedding_input": [0.0] * 8}, "the embedding is all zeros"),
        ("/knn-service", {"text": "a", "num_result_ids": 10_001}, "num_result_ids must be between 1 and 10000"),
        ("/knn-service", {"image_url": "ftp://example.org/a.jpg"}, "image_url must be an http:// or https:// URL"),
        ("/metadata", {"ids": [10**6], "indice_name": NAME}, "index id 1000000 out of range"),
        ("/metadata", {"ids": [0] * 1001}, "at most 1000 ids at once"),
        ("/metadata", {"ids": [True]}, "ids must be a list of integers"),
    ],
)
def test_bad_requests_get_a_400_naming_the_reason(base_url, path, body, reason):
    resp = requests.post(base_url + path, json=body)
    assert resp.status_code == 400 and reason in resp.json()["error"], resp.text


def clip_back_metadata(folder: Path) -> pd.DataFrame:
    """index/metadata/ as clip back reads it: its ParquetMetadataProvider's table."""
    return clip_back_module.ParquetMetadataProvider(str(folder)).metadata_df


def check_loadable(index: Path, searcher: Searcher, fx, query: int) -> pd.DataFrame:
    """index/ as clip back loads it: both faiss indices (faiss.read_index, as its load_index) and metadata/, whose
    row i is sample i; its knn_search's search_and_reconstruct finds the query image's sample."""
    meta = clip_back_metadata(index / "metadata")
    ids = pq.read_table(index / "ids.parquet").to_pandas()
    assert {"url", "caption", "key", "similarity"} <= set(meta.columns)
    assert len(meta) == len(ids) == searcher.count
    for column in ("key", "url", "caption"):
        assert meta[column].tolist() == ids[column].tolist()
    image_index, text_index = (clip_back_module.load_index(str(index / f"{m}.index"), False) for m in ("image", "text"))
    assert image_index.ntotal == text_index.ntotal == len(meta)
    _, found, _ = image_index.search_and_reconstruct(searcher.embed_query(image=fx.images[query]), 1)
    assert meta.iloc[int(found[0][0])]["url"] == url_of(query)
    return meta


def test_clip_back_loads_the_index_folder(fx, searcher):
    meta = check_loadable(fx.dir, searcher, fx, 7)
    assert meta["url"].tolist() == [url_of(i) for i in range(len(meta))]  # in id order: the scenes, as indexed


def test_clip_back_serves_the_index_folder(fx, searcher):
    """clip-retrieval's own back end (its Flask resources, its loaders of an index folder) over OUT/index, queried
    with an embedding (its KnnService needs a CLIP model only to embed text or images, and the world's model is no
    model its loader knows): the same samples as clipcrawl's search, under its field names."""
    from flask import Flask
    from flask_restful import Api

    folder = str(fx.dir)
    image_index = clip_back_module.load_index(folder + "/image.index", False)
    text_index = clip_back_module.load_index(folder + "/text.index", False)
    columns = ["url", "caption", "key", "similarity"]
    provider, _ = clip_back_module.load_metadata_provider(folder, False, False, image_index, columns, False)
    resource = clip_back_module.ClipResource(
        device="cpu", model=None, preprocess=None, tokenizer=None, model_txt_mclip=None, safety_model=None,
        violence_detector=None, metadata_provider=provider, image_index=image_index, text_index=text_index,
        ivf_old_to_new_mapping=None, columns_to_return=columns, metadata_is_ordered_by_ivf=False,
        aesthetic_embeddings=None,
    )  # fmt: skip
    app = Flask(__name__)
    api = Api(app)
    api.add_resource(clip_back_module.IndicesList, "/indices-list", resource_class_kwargs={"indices": [NAME]})
    api.add_resource(
        clip_back_module.KnnService, "/knn-service", resource_class_kwargs={"clip_resources": {NAME: resource}}
    )
    api.add_resource(
        clip_back_module.MetadataService, "/metadata", resource_class_kwargs={"clip_resources": {NAME: resource}}
    )
    http = app.test_client()
    assert http.get("/indices-list").get_json() == [NAME]
    query = searcher.embed_query(image=fx.images[7])[0]
    for modality in ("image", "text"):
        body = {"embedding_input": query.tolist(), "modality": modality, "num_images": 5, "indice_name": NAME,
                "deduplicate": False, "use_safety_model": False, "use_violence_detector": False}  # fmt: skip
        served = http.post("/knn-service", data=json.dumps(body)).get_json()
        if modality == "image":
            assert served[0]["url"] == url_of(7)  # the query image's own sample first
        expected = searcher.search(embedding=query, k=5, modality=modality)
        assert [r["id"] for r in served] == [r["id"] for r in expected], modality
        assert [(r["url"], r["caption"], r["key"]) for r in served] == [
            (r["url"], r["caption"], r["key"]) for r in expected
        ]
        for r, e in zip(served, expected, strict=True):
            assert r["similarity"] == pytest.approx(e["similarity"], abs=1e-4)
    ids = [r["id"] for r in served]
    metas = http.post("/metadata", data=json.dumps({"ids": ids, "indice_name": NAME})).get_json()
    assert [(m["id"], m["metadata"]["url"]) for m in metas] == [(r["id"], r["url"]) for r in served]


def test_a_takedown_removes_the_sample_from_metadata(fx, model, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(fx.dir.parent, out)  # the index's shards stay where they are (index_infos.json's paths)
    gone = url_of(5)
    shutil.rmtree(out / "index" / "metadata")  # as an index of an earlier version: `clipcrawl index` adds it
    ensure_clip_metadata(str(out / "index"))
    assert gone in clip_back_metadata(out / "index" / "metadata")["url"].tolist()
    removed, _ = rewrite_index(str(out), Matched(urls={gone}))
    assert removed[str(out / "index" / "metadata" / "ids.parquet")] == 1
    searcher = Searcher(str(out / "index"), model=model)
    meta = check_loadable(out / "index", searcher, fx, 9)
    assert gone not in meta["url"].tolist() and len(meta) == len(fx.scenes) - 1
    assert [p.name for p in (out / "index" / "metadata").iterdir()] == ["ids.parquet"]  # no temporary file left


def test_the_download_buttons_request_is_answered_within_the_caps(fx, searcher, base_url, monkeypatch):
    """The front end's download button asks num_images=10000, num_result_ids=10000: num_images is taken as MAX_K
    (the results past it carry id and similarity), and only the first MAX_IMAGES carry their image."""
    body = {"text": "red circles", "modality": "image", "num_images": 10_000, "num_result_ids": 10_000}
    resp = requests.post(base_url + "/knn-service", json=body)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()) == searcher.count and all("caption" in r for r in resp.json())
    monkeypatch.setattr(clip_back, "MAX_K", 5)  # caps under the index's 76 samples
    monkeypatch.setattr(clip_back, "MAX_IMAGES", 2)
    results = requests.post(base_url + "/knn-service", json=body).json()
    assert [r["id"] for r in results] == [r["id"] for r in searcher.search(text="red circles", k=searcher.count)]
    assert [set(r) for r in results[:6]] == [set(results[0])] * 2 + [
        {"url", "caption", "key", "id", "similarity"}
    ] * 3 + [{"id", "similarity"}]
    assert "image" in results[0]
    got = requests.post(base_url + "/metadata", json={"ids": [12, 0, 3]}).json()
    assert ["image" in g["metadata"] for g in got] == [True, True, False]
    assert [g["metadata"]["url"] for g in got] == [url_of(12), url_of(0), url_of(3)]


def test_an_image_that_does_not_decode_goes_without_image(fx, base_url, monkeypatch):
    """PIL's DecompressionBombError (here: a PNG of crawl A's second shard over a lowered limit) leaves that result
    without `image`; the JPEG, sent as stored, keeps it."""
    png = next(i for i, ext in enumerate(fx.exts) if ext == "png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10)
    resp = requests.post(base_url + "/metadata", json={"ids": [0, png]})
    assert resp.status_code == 200, resp.text
    assert fx.exts[0] == "jpg" and ["image" in g["metadata"] for g in resp.json()] == [True, False]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"bad\r\nX-Injected: 1": 1, "hide": 1}, "hide, 1 more unknown fields"),
        ({f"field{i:05d}": 1 for i in range(10_000)}, ", ".join(f"field{i:05d}" for i in range(20)) + ", 9980 more"),
    ],
)
def test_unknown_fields_header_is_bounded_and_safe(base_url, extra, named):
    resp = requests.post(base_url + "/knn-service", json={"text": "red circles", "num_images": 2, **extra})
    assert resp.status_code == 200, resp.text
    header = resp.headers["X-Clipcrawl-Ignored"]
    assert header.startswith(named) and "X-Injected" not in resp.headers and len(header) < 2000


def test_a_body_over_the_limit_gets_a_json_413(base_url):
    resp = requests.post(base_url + "/metadata", data=b" " * (MAX_UPLOAD + 1), headers={"Content-Type": "text/plain"})
    assert resp.status_code == 413 and "the body is over" in resp.json()["error"]
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_serve_command_wiring(fx, searcher, monkeypatch):
    """--index-name and --allow-addresses reach make_app's app; --index . is named after the folder; a bad CIDR is
    refused at start."""
    apps = []
    monkeypatch.setattr(serve_module, "Searcher", lambda index_dir: searcher)
    monkeypatch.setattr(serve_module.web, "run_app", lambda app, **kwargs: apps.append(app))
    cli.main(["serve", "--index", str(fx.dir), "--index-name", "mine", "--allow-addresses", "10.0.0.0/8", "::1"])
    assert apps[-1][INDEX_NAME] == "mine" and apps[-1][ALLOW_ADDRESSES] == ["10.0.0.0/8", "::1"]
    monkeypatch.chdir(fx.dir)
    cli.main(["serve", "--index", "."])
    assert apps[-1][INDEX_NAME] == fx.dir.name and apps[-1][ALLOW_ADDRESSES] == []
    with pytest.raises(SystemExit):
        cli.parse(["serve", "--index", ".", "--allow-addresses", "10.0.0.0/99"])
    with pytest.raises(ValueError, match="'10.0.0.0/99' is not a CIDR network"):
        make_app(searcher, allow_addresses=["10.0.0.0/99"])


def index_copy(fx, tmp_path) -> Path:
    """A copy of the index folder (cp -r: metadata/ids.parquet a file of its own)."""
    shutil.copytree(fx.dir, tmp_path / "index")
    return tmp_path / "index"


def test_a_stale_metadata_copy_is_published_again(fx, tmp_path):
    index = index_copy(fx, tmp_path)
    ids = pq.read_table(index / "ids.parquet")
    pq.write_table(ids.slice(0, 10), index / "ids.parquet")  # ids.parquet changed, metadata/ left behind
    ensure_clip_metadata(str(index))
    assert (index / "metadata" / "ids.parquet").samefile(index / "ids.parquet")
    assert clip_back_metadata(index / "metadata")["url"].tolist() == [url_of(i) for i in range(10)]


def test_an_older_ids_parquet_is_published_with_caption(fx, tmp_path):
    index = index_copy(fx, tmp_path)
    ids = pq.read_table(index / "ids.parquet")
    pq.write_table(
        ids.rename_columns(["text" if c == "caption" else c for c in ids.column_names]), index / "ids.parquet"
    )
    ensure_clip_metadata(str(index))
    meta = clip_back_metadata(index / "metadata")
    assert "text" not in meta.columns and meta["caption"].tolist() == fx.captions
    assert is_published(str(index))
    written = (index / "metadata" / "ids.parquet").stat().st_mtime_ns
    ensure_clip_metadata(str(index))  # current: left as it is
    assert (index / "metadata" / "ids.parquet").stat().st_mtime_ns == written
    pq.write_table(ids.slice(0, 5), index / "ids.parquet")  # rewritten (now with caption): linked
    assert not is_published(str(index))
    ensure_clip_metadata(str(index))
    assert (index / "metadata" / "ids.parquet").samefile(index / "ids.parquet")


def test_an_object_store_copy_is_refreshed(fx):
    fs = fsspec.filesystem("memory")
    root = f"memory://clip-metadata-{id(fx)}"
    ids = pq.read_table(fx.dir / "ids.parquet")
    with fs.open(f"{root}/ids.parquet", "wb") as f:
        pq.write_table(ids, f)
    ensure_clip_metadata(root)
    assert fs.cat(f"{root}/metadata/ids.parquet") == fs.cat(f"{root}/ids.parquet")
    with fs.open(f"{root}/ids.parquet", "wb") as f:
        pq.write_table(ids.slice(0, 3), f)
    assert not is_published(root)
    ensure_clip_metadata(root)
    assert fs.cat(f"{root}/metadata/ids.parquet") == fs.cat(f"{root}/ids.parquet") and is_published(root)
    fs.rm(root, recursive=True)
