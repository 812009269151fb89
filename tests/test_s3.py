"""s3:// inputs, outputs and Prefect result storage, against a real S3 API server on 127.0.0.1.

One chained run of every stage (ingest -> download -> embed -> index -> report) reads and writes s3 only:
the crawl's files, every stage's outputs and the task cache are objects in the moto server's buckets."""

import json
import os
import re

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs

from clipcrawl.flows.download import download_images
from clipcrawl.flows.embed import embed_and_filter
from clipcrawl.flows.index import build_index
from clipcrawl.flows.ingest import ingest_crawl
from clipcrawl.flows.report import build_report
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core.config import (
    Gate,
    IndexSettings,
    IngestSettings,
    QualityGates,
    ReportSettings,
)
from clipcrawl.tasks.core.uri import atomic_write, exists, listdir, read_json, write_json
from clipcrawl.tasks.search.search import Searcher
from clipcrawl.tasks.world import ImageServer, tiny_clip
from clipcrawl.tasks.world.groundtruth import (
    compare_downloads,
    compare_embeddings,
    compare_near_duplicates,
    compare_pairs,
    compare_search,
)
from tests.helpers import task_states

OUT = "s3://chain/run"
GATES_OFF = QualityGates(**{name: Gate() for name in QualityGates.model_fields})
INDEX = IndexSettings(queries=200, near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD)
STAGE_TIMEOUT_S = 900  # a stage that hangs (a lost worker) fails the chain instead of the whole CI job


@pytest.fixture(scope="module")
def s3_inputs(s3_endpoint, small_world) -> list[str]:
    """The small world's WAT files, uploaded to s3://crawl/."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="crawl")
    inputs = []
    for path in small_world.wat_uris():
        key = path.split(str(small_world.root) + "/", 1)[1]
        s3.upload_file(path, "crawl", key)
        inputs.append(f"s3://crawl/{key}")
    return inputs


def on(flow, dask_address):
    return flow.with_options(task_runner=task_runner(dask_address), timeout_seconds=STAGE_TIMEOUT_S)


def ingest(dask_address, inputs):
    return on(ingest_crawl, dask_address)(out=OUT, settings=IngestSettings(inputs=inputs), return_state=True)


def download(dask_address, server):
    return on(download_images, dask_address)(
        pairs=f"{OUT}/pairs", out=OUT, settings=server.download_settings(shard_size=150), return_state=True
    )


def embed(dask_address):
    return on(embed_and_filter, dask_address)(
        images=f"{OUT}/images", out=OUT, settings=tiny_clip.embed_settings(batch_size=64), return_state=True
    )


def index(dask_address):
    return on(build_index, dask_address)(embeddings=f"{OUT}/embeddings", out=OUT, settings=INDEX, return_state=True)


def report(dask_address, small_world):
    return on(build_report, dask_address)(
        out=OUT,
        settings=ReportSettings(gates=GATES_OFF),
        ground_truth=os.path.join(small_world.root, "manifest", "pairs.parquet"),
        return_state=True,
    )


@pytest.fixture(scope="module")
def chain(dask_address, s3_endpoint, small_world, s3_inputs) -> dict:
    """Every stage once on s3, each but the report run twice: {"states": {stage: state}, "again": {stage: state}}."""
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="chain")
    states, again = {}, {}

    def first(stage, go):
        states[stage] = go()
        assert states[stage].is_completed(), (stage, states[stage].message)

    first("ingest", lambda: ingest(dask_address, s3_inputs))
    again["ingest"] = ingest(dask_address, s3_inputs)
    with ImageServer(small_world.root) as server:
        first("download", lambda: download(dask_address, server))
        again["download"] = download(dask_address, server)
    first("embed", lambda: embed(dask_address))
    again["embed"] = embed(dask_address)
    first("index", lambda: index(dask_address))
    again["index"] = index(dask_address)
    first("report", lambda: report(dask_address, small_world))
    return {"states": states, "again": again}


def test_writes_commit_whole_objects_and_listings_see_other_writers(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="writes")
    for mode, data in (("w", '{"half": '), ("wb", b"half")):
        with pytest.raises(RuntimeError), atomic_write("s3://writes/a/failed.bin", mode) as f:
            f.write(data)
            raise RuntimeError("killed while writing")
        assert not exists("s3://writes/a/failed.bin"), mode
    write_json("s3://writes/a/one.json", {"n": 1})
    assert listdir("s3://writes/a") == ["s3://writes/a/one.json"]
    # another process (a Dask worker, a later run) adds and replaces objects: listings and sizes are not cached
    s3.put_object(Bucket="writes", Key="a/two.json", Body=b"{}")
    s3.put_object(Bucket="writes", Key="a/one.json", Body=json.dumps({"n": 1, "replaced": True}).encode())
    assert listdir("s3://writes/a") == ["s3://writes/a/one.json", "s3://writes/a/two.json"]
    assert exists("s3://writes/a/two.json")
    assert read_json("s3://writes/a/one.json") == {"n": 1, "replaced": True}


def s3_json(fs: s3fs.S3FileSystem, path: str):
    return json.loads(fs.cat_file(path))


def test_every_stage_writes_the_contract_layout_on_s3(chain, small_world):
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    root = OUT.removeprefix("s3://")
    names = {p.removeprefix(root + "/") for p in fs.find(root) if "/_results/" not in p}
    pairs = sorted(n for n in names if re.fullmatch(r"pairs/[^/]+\.parquet", n))
    assert pairs and {n.removesuffix(".parquet") + ".stats.json" for n in pairs} <= names
    assert "pairs/_summary.json" in names and "images/_summary.json" in names and "dataset/_summary.json" in names

    images = s3_json(fs, f"{root}/images/_summary.json")
    stems = [f"{s:05d}" for s in range(images["shards"])]
    assert len(stems) >= 2  # shards are made and read in parallel
    for stem in stems:
        assert {
            f"images/{stem}.tar",
            f"images/{stem}.parquet",
            f"images/{stem}_stats.json",
            f"embeddings/img_emb/img_emb_{stem}.npy",
            f"embeddings/text_emb/text_emb_{stem}.npy",
            f"embeddings/metadata/metadata_{stem}.parquet",
            f"dataset/part-{stem}.parquet",
            f"dataset/part-{stem}_stats.json",
        } <= names, stem
    assert {
        "index/image.index",
        "index/text.index",
        "index/ids.parquet",
        "index/index_infos.json",
        "report/index.html",
        "report/stats.json",
    } <= names
    assert not [n for n in names if ".tmp-" in n or n.endswith(".new")], "no temporary object is left behind"

    # the contents: each stage's files against the world's truth and the stage's own summary
    assert compare_pairs(small_world, OUT)["equal"]
    downloads = compare_downloads(small_world, OUT)
    assert downloads["equal"], (downloads["wrong"], downloads["missing"])
    assert (
        downloads["samples"]
        == images["count"]
        == sum(pq.ParquetFile(fs.open(f"{root}/{p}")).metadata.num_rows for p in pairs)
    )
    embedded = compare_embeddings(small_world, OUT)
    dataset = s3_json(fs, f"{root}/dataset/_summary.json")
    assert embedded["samples"] == dataset["embedded"] > 0 and embedded["accuracy"] >= 0.9, embedded
    for stem in stems:
        with fs.open(f"{root}/embeddings/img_emb/img_emb_{stem}.npy") as f:
            vectors = np.load(f)
        assert vectors.dtype == np.float16
        np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=1e-2)
        assert (
            len(vectors)
            == pq.ParquetFile(fs.open(f"{root}/embeddings/metadata/metadata_{stem}.parquet")).metadata.num_rows
        )
    infos = s3_json(fs, f"{root}/index/index_infos.json")
    kept = sum(pq.ParquetFile(fs.open(f"{root}/dataset/part-{stem}.parquet")).metadata.num_rows for stem in stems)
    assert infos["count"] == dataset["kept"] == kept
    assert infos["sources"] == [f"{OUT}/embeddings"]
    near = compare_near_duplicates(small_world, OUT)
    assert near["samples"] == infos["count"] and near["recall"] >= 0.9 and near["precision"] >= 0.9, near
    stats = s3_json(fs, f"{root}/report/stats.json")
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    assert funnel["decoded"] == images["successes"] and funnel["clip_passed"] == kept
    assert funnel["indexed"] == infos["count"]
    assert stats["ground_truth"]["samples"] == embedded["samples"]
    page = fs.cat_file(f"{root}/report/index.html").decode()
    assert "<html" in page and "data:image/jpeg;base64," in page  # thumbnails read from the tars on s3


def test_search_an_index_on_s3(chain, small_world):
    searcher = Searcher(f"{OUT}/index")
    infos = searcher.info()
    assert searcher.count == infos["image"]["ntotal"] == infos["text"]["ntotal"] > 100
    found = compare_search(small_world, searcher)
    assert found["precision"] >= 0.8, found
    first = searcher.search(text=found["query"], k=1)[0]
    assert first["url"] in {u for u, _ in small_world.expected_pairs()}
    data, mime = searcher.thumbnail(first["id"])  # read from the shard's tar on s3
    assert mime == "image/jpeg" and data[:2] == b"\xff\xd8"


def test_result_storage_is_on_s3_and_reruns_are_served_from_it(chain):
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert fs.ls(f"{OUT.removeprefix('s3://')}/_results"), "the task cache lives in the shared result storage on s3"
    again = chain["again"]
    for stage, prefix in (("ingest", "extract-"), ("download", "download-"), ("embed", "embed-")):
        assert again[stage].is_completed(), again[stage].message
        states = {s for name, s in task_states(again[stage]).items() if name.startswith(prefix)}
        assert states == (set() if stage == "ingest" else {"Cached"}), (stage, states)  # ingest: in the uid store
    # the index grows by the shards it does not hold: with none new, the rerun plans and builds nothing
    assert again["index"].is_completed(), again["index"].message
    assert not [n for n in task_states(again["index"]) if n.startswith(("index-", "finish_index"))]
    assert again["index"].result()["count"] == chain["states"]["index"].result()["count"]


def test_s3_keys_never_reach_logs_artifacts_or_outputs(chain, s3_endpoint):
    from prefect.client.orchestration import get_client

    from tests.conftest import S3_KEY_ID, S3_SECRET
    from tests.helpers import recorded_text, secrets_found

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET  # the keys every stage above ran with
    with get_client(sync_client=True) as client:
        texts = recorded_text(client)
    assert len(texts["logs"]) > 100 and len(texts["artifacts"]) > 10
    assert any(OUT in message for message in texts["logs"]), "the scan reads what the chain logged"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    objects = [path for path in fs.find("chain") if fs.size(path) < 50_000_000]
    assert len(objects) > 20
    texts["outputs"] = [fs.cat_file(path).decode("latin-1") for path in objects]
    assert secrets_found(texts, [S3_KEY_ID, S3_SECRET]) == []
