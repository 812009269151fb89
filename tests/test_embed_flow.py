"""The embed_and_filter flow on the synthetic world, after the ingest and download flows on the same
multi-process cluster: the filter agrees with the world's ground truth, and every task ran where its
Dask resources say (embedding on the GPU-tagged worker only, extraction and download never there)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from clipcrawl.tasks.world.groundtruth import compare_embeddings
from tests.helpers import embed, task_states

TASK_KINDS = {
    "extract_file": "extract",
    "dedup_partitions": "dedup",
    "publish_file": "publish",
    "download_shard_async": "download",
    "embed_shard": "embed",
}


def test_every_task_ran_on_a_worker_offering_its_resource(pipeline):
    _, _, records, resources = pipeline
    ran: dict[str, list[dict]] = {}
    for record in records:
        prefix = record["key"].rsplit("-", 1)[0] if isinstance(record["key"], str) else ""
        if prefix in TASK_KINDS:
            ran.setdefault(TASK_KINDS[prefix], []).append(resources[record["worker"]])
    assert {"extract", "download", "embed"} <= set(ran), sorted(ran)
    assert all("GPU" in r for r in ran["embed"]), ran["embed"]
    for kind in ("extract", "dedup", "publish", "download"):
        assert all("CPU" in r and "GPU" not in r for r in ran.get(kind, [])), (kind, ran[kind])


def test_dataset_keeps_matched_pairs_and_drops_mismatched(small_world, pipeline):
    out, state, _, _ = pipeline
    report = compare_embeddings(small_world, str(out))
    assert report["accuracy"] >= 0.95, report
    assert report["samples"] == state.result()["embedded"] > 0

    licenses = small_world.page_licenses()
    assert any(licenses.values())
    shards = sorted(p.stem for p in (out / "images").glob("*.tar"))
    for stem in shards:
        img = np.load(out / "embeddings" / "img_emb" / f"img_emb_{stem}.npy")
        txt = np.load(out / "embeddings" / "text_emb" / f"text_emb_{stem}.npy")
        meta = pq.read_table(out / "embeddings" / "metadata" / f"metadata_{stem}.parquet").to_pydict()
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (len(meta["key"]), img.shape[1])
        np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=2e-3)
        sims = (img.astype(np.float32) * txt.astype(np.float32)).sum(axis=1)
        np.testing.assert_allclose(sims, meta["similarity"], atol=5e-3)
        part = pq.read_table(out / "dataset" / f"part-{stem}.parquet").to_pydict()
        kept = {k for k, s in zip(meta["key"], meta["similarity"]) if s >= 0.3}
        assert set(part["key"]) == kept
        assert [licenses[p] or "?" for p in part["page_url"]] == part["LICENSE"]
        stats = json.loads((out / "dataset" / f"part-{stem}_stats.json").read_text())
        assert stats["kept"] == len(part["key"])


def test_nsfw_tag_finds_the_flagged_concept(small_world, pipeline):
    out, _, _, _ = pipeline
    report = compare_embeddings(small_world, str(out))
    assert report["flagged_samples"] > 0, report
    assert report["flagged_tagged_nsfw"] >= 0.9 * report["flagged_samples"], report
    assert report["unflagged_tagged_nsfw"] <= 0.02 * report["samples"], report


def test_rerun_is_served_from_cache(dask_address, pipeline):
    out, _, _, _ = pipeline
    again = embed(dask_address, out, batch_size=64)
    assert again.is_completed(), again.message
    states = [s for name, s in task_states(again).items() if name.startswith("embed-")]
    assert states and set(states) == {"Cached"}
