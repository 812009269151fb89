"""The download_images flow on the synthetic world: every image gets its ground-truth status."""

from __future__ import annotations

import json
import os
import tarfile

import dask
import pyarrow.parquet as pq
import pytest
from distributed import Client

from clipcrawl.flows.download import download_images
from clipcrawl.flows.runner import task_runner
from clipcrawl.tasks.core.layout import published_shards
from clipcrawl.tasks.download.shard_reader import shard_images
from clipcrawl.tasks.world import ImageServer
from clipcrawl.tasks.world.groundtruth import compare_downloads
from tests.helpers import run, task_states


@pytest.fixture(scope="module")
def pairs_dir(dask_address, small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("download")
    state = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root))
    assert state.is_completed(), state.message
    return out


def download(dask_address, pairs_dir, server, out=None, **overrides):
    flow = download_images.with_options(task_runner=task_runner(dask_address))
    return flow(
        pairs=str(pairs_dir / "pairs"),
        out=str(out or pairs_dir),
        settings=server.download_settings(**overrides),
        return_state=True,
    )


def test_download_matches_ground_truth_and_reruns_from_cache(dask_address, small_world, pairs_dir):
    pairs_rows = sum(pq.read_metadata(p).num_rows for p in (pairs_dir / "pairs").glob("*.parquet"))
    with ImageServer(small_world.root) as server:
        state = download(dask_address, pairs_dir, server, shard_size=200, image_threads=2)
        assert state.is_completed(), state.message
        report = compare_downloads(small_world, str(pairs_dir))
        assert report["equal"], (report["wrong"], report["missing"])
        summary = state.result()
        assert summary["count"] == pairs_rows == report["samples"]

        images = pairs_dir / "images"
        shards = sorted(images.glob("*.tar"))
        assert len(shards) == summary["shards"] == -(-pairs_rows // 200)
        for tar_path in shards:
            table = pq.read_table(tar_path.with_suffix(".parquet"))
            stats = json.loads((images / f"{tar_path.stem}_stats.json").read_text())
            ok = [r for r in table.to_pylist() if r["status"] == "success"]
            assert stats["successes"] == len(ok) and stats["count"] == table.num_rows
            with tarfile.open(tar_path) as tar:
                names = set(tar.getnames())
            assert names == {f"{r['key']}.{ext}" for r in ok for ext in ("jpg", "txt", "json")}
            for r in ok:
                assert max(r["width"], r["height"]) == 256 and r["sha256"]

        again = download(dask_address, pairs_dir, server, shard_size=200, image_threads=2)
        assert again.is_completed(), again.message
        states = [s for name, s in task_states(again).items() if name.startswith("download-")]
        assert states and set(states) == {"Cached"}


def test_parquet_output_format(dask_address, small_world, pairs_dir, tmp_path):
    """img2dataset's parquet layout (the image bytes in the shard's parquet; the files layout shares its path and
    is tested in tests/test_output_formats.py): the ground truth's statuses, an image for every success, and a
    rerun skips the published shards."""
    out = tmp_path / "parquet"
    with ImageServer(small_world.root) as server:
        state = download(dask_address, pairs_dir, server, out, shard_size=200, image_threads=2, output_format="parquet")
        assert state.is_completed(), state.message
        report = compare_downloads(small_world, str(out))
        assert report["equal"], (report["wrong"], report["missing"])
        shards = published_shards(str(out / "images"))
        assert len(shards) == state.result()["shards"] and all(s.endswith(".parquet") for s in shards)
        assert not list((out / "images").glob("*.tar"))
        images = {key for shard in shards for key, _ in shard_images(shard)}
        assert len(images) == state.result()["successes"] > 0
        again = download(dask_address, pairs_dir, server, out, shard_size=200, image_threads=2, output_format="parquet")
        states = [s for name, s in task_states(again).items() if name.startswith("download-")]
        assert states and set(states) == {"Cached"}


def test_local_workers_use_glibcs_adaptive_malloc_and_no_profiler(dask_address):
    # the nanny's MALLOC_TRIM_THRESHOLD_ makes every body and decoded image a fresh mmap (docs/benchmarks.md)
    with Client(dask_address) as client:
        trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert trim and set(trim.values()) == {None}, trim
    assert set(profiling.values()) == {False}, profiling
