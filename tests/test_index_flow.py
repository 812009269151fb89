"""The build_index flow on the synthetic world's embeddings: every kept sample indexed once, recall
measured, a text query finds its concept, near-duplicates match the world's repeated images, an index
grows by new shards without a rebuild, and the work runs on CPU workers."""

from __future__ import annotations

import json
import shutil
import time

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client

from clipcrawl.flows.index import build_index
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.search.search import Searcher
from clipcrawl.tasks.world import tiny_clip
from clipcrawl.tasks.world.groundtruth import compare_near_duplicates, compare_search

SETTINGS = IndexSettings(queries=200, near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD)


def index(dask_address, out, settings=SETTINGS, **kwargs):
    flow = build_index.with_options(task_runner=task_runner(dask_address))
    state = flow(embeddings=str(out / "embeddings"), out=str(out), settings=settings, return_state=True, **kwargs)
    assert state.is_completed(), state.message
    return state.result()


def copy_run(pipeline, dest, stems=None):
    """The embed stage's outputs of the pipeline (only the given shard stems), to index without touching them."""
    src = pipeline[0]
    for folder, pattern in (
        ("embeddings/img_emb", "img_emb_{}.npy"),
        ("embeddings/text_emb", "text_emb_{}.npy"),
        ("embeddings/metadata", "metadata_{}.parquet"),
        ("dataset", "part-{}.parquet"),
        ("dataset", "part-{}_stats.json"),
    ):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for stem in stems or shard_stems(pipeline):
            shutil.copy(src / folder / pattern.format(stem), dest / folder / pattern.format(stem))
    return dest


def shard_stems(pipeline) -> list[str]:
    return sorted(p.stem.removeprefix("metadata_") for p in (pipeline[0] / "embeddings" / "metadata").glob("*.parquet"))


def dataset_keys(out) -> list[str]:
    return [k for p in sorted((out / "dataset").glob("part-*.parquet")) for k in pq.read_table(p)["key"].to_pylist()]


@pytest.fixture(scope="module")
def indexed(dask_address, pipeline, tmp_path_factory):
    out = copy_run(pipeline, tmp_path_factory.mktemp("indexed"))
    keys = dataset_keys(out)
    with Client(dask_address) as client:
        start = time.time()
        client.get_task_stream()
        summary = index(dask_address, out)
        records = client.get_task_stream(start=start)
        workers = {addr: w["resources"] for addr, w in client.scheduler_info()["workers"].items()}
    return out, summary, keys, records, workers


def test_every_kept_sample_is_indexed_once_with_measured_recall(indexed):
    out, summary, keys, _, _ = indexed
    infos = json.loads((out / "index" / "index_infos.json").read_text())
    ids = pq.read_table(out / "index" / "ids.parquet")
    assert ids["key"].to_pylist() == keys and infos["count"] == summary["count"] == len(keys) > 100
    for modality in ("image", "text"):
        built = faiss.read_index(str(out / "index" / f"{modality}.index"))
        assert built.ntotal == len(keys)
        part = infos[modality]
        assert part["index_key"] == "Flat" and part["recall_at_k"] == pytest.approx(1.0)  # exact at this size
        assert 0 < part["p50_ms"] <= part["p99_ms"] and part["k"] == 10
        assert part["gpus"] == faiss.get_num_gpus()  # 0 with faiss-cpu: built and measured on the CPU
    img = np.load(out / "embeddings" / "img_emb" / f"img_emb_{ids['shard'][0]}.npy")
    stored = faiss.read_index(str(out / "index" / "image.index")).reconstruct(0)
    np.testing.assert_allclose(stored, img[ids["row"][0].as_py()].astype(np.float32), atol=1e-3)


def test_text_query_returns_the_concept_first(small_world, indexed):
    out = indexed[0]
    found = compare_search(small_world, Searcher(str(out / "index")))
    # chance is concept_samples / count (~5%)
    assert found["k"] == 10 and found["hits"][:3] == [True] * 3 and found["precision"] >= 0.9, found


def test_near_duplicates_are_the_worlds_repeated_images(small_world, indexed):
    out, summary, _, _, _ = indexed
    truth = compare_near_duplicates(small_world, str(out))
    assert truth["repeated_images"] > 5, truth
    assert truth["recall"] >= 0.98 and truth["precision"] >= 0.98, truth
    marked = sum(pq.read_table(p)["near_duplicate"].to_numpy().sum() for p in (out / "dataset").glob("part-*.parquet"))
    assert marked == truth["marked"] == summary["near_duplicates"]["duplicates"]


def test_index_tasks_ran_on_cpu_workers(indexed):
    _, _, _, records, workers = indexed
    ran = [
        workers[r["worker"]]
        for r in records
        if isinstance(r["key"], str) and r["key"].rsplit("-", 1)[0] in ("plan_index", "index_modality", "finish_index")
    ]
    assert len(ran) == 4 and all("CPU" in r and "GPU" not in r for r in ran), ran


def test_new_shards_are_added_without_a_rebuild(dask_address, pipeline, tmp_path):
    stems = shard_stems(pipeline)
    assert len(stems) >= 3
    out = copy_run(pipeline, tmp_path, stems[:2])
    first = index(dask_address, out)
    copy_run(pipeline, tmp_path, stems[2:])
    grown = index(dask_address, out)
    infos = json.loads((out / "index" / "index_infos.json").read_text())
    assert "add_s" in infos["image"] and "build_s" not in infos["image"]
    assert grown["count"] == len(dataset_keys(out)) > first["count"]
    assert pq.read_table(out / "index" / "ids.parquet")["key"].to_pylist() == dataset_keys(out)
    # a vector of the new shards finds itself
    ids = pq.read_table(out / "index" / "ids.parquet")
    last = len(ids) - 1
    img = np.load(out / "embeddings" / "img_emb" / f"img_emb_{ids['shard'][last]}.npy")
    built = faiss.read_index(str(out / "index" / "image.index"))
    _, found = built.search(img[ids["row"][last].as_py()][None].astype(np.float32), 5)
    assert last in found[0]
    # nothing new: nothing is rewritten
    mtime = (out / "index" / "image.index").stat().st_mtime_ns
    assert index(dask_address, out)["count"] == grown["count"]
    assert (out / "index" / "image.index").stat().st_mtime_ns == mtime


def test_an_ivf_index_is_tuned_to_the_target_recall(dask_address, pipeline, tmp_path):
    out = copy_run(pipeline, tmp_path)
    summary = index(dask_address, out, IndexSettings(queries=200, index_key="IVF8,SQfp16", target_recall=0.9))
    infos = json.loads((out / "index" / "index_infos.json").read_text())
    assert summary["image"]["index_key"] == "IVF8,SQfp16" and summary["image"]["params"].startswith("nprobe=")
    assert summary["image"]["recall_at_k"] >= 0.9
    assert len(infos["image"]["tuning"]) >= 1


def test_dropping_near_duplicates_keeps_one_per_group(dask_address, pipeline, tmp_path):
    out = copy_run(pipeline, tmp_path)
    before = len(dataset_keys(out))
    summary = index(dask_address, out, SETTINGS.model_copy(update={"drop_near_duplicates": True}))
    dropped = summary["near_duplicates"]["dropped_rows"]
    assert dropped == summary["near_duplicates"]["duplicates"] > 0
    assert len(dataset_keys(out)) == before - dropped
    for p in (out / "dataset").glob("part-*.parquet"):
        assert not pq.read_table(p)["near_duplicate"].to_numpy().any()


def test_index_tasks_retry_transient_errors_only():
    from clipcrawl.tasks.core.cache import retry_transient
    from clipcrawl.tasks.index import stage

    for task in (stage.plan_index_task, stage.index_modality_task, stage.finish_index_task):
        assert task.retries == 2 and task.retry_condition_fn is retry_transient, task.name
