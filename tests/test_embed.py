import io
import json
import os
import tarfile
import threading
import time

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core.config import DownloadSettings, EmbedSettings
from clipcrawl.tasks.core.layout import published_shards
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shards import ShardWriter, sample_key
from clipcrawl.tasks.embed import clip_model
from clipcrawl.tasks.embed import stage as embed
from clipcrawl.tasks.embed.clip_model import worker_model
from clipcrawl.tasks.embed.stage import (
    DATASET_SCHEMA,
    METADATA_SCHEMA,
    embed_shard,
    embed_shard_task,
    summarize,
)
from clipcrawl.tasks.world import sample_training_pairs
from tests.test_clip_model import write_tiny_model

DOWNLOAD = DownloadSettings(image_size=48, min_bytes=0, encode_format="jpg", shard_size=10_000)
FAILED = 3  # this sample's download failed: a row of the shard's parquet, not a sample to embed


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))
    return EmbedSettings(
        checkpoint=tiny, pretrained=None, device="cpu", batch_size=4, loader_threads=2, similarity_threshold=-1.0
    )


def make_shard(out: str, n: int, corrupt=(), missing=()) -> str:
    """images/00000.tar/.parquet of `n` rendered scenes with their captions, as the download stage writes them."""
    with ShardWriter(out, 0, DOWNLOAD) as writer:
        for i, (img, caption) in enumerate(sample_training_pairs(n, seed=1, size=(48, 48))):
            row = {
                "key": sample_key(0, i),
                "uid": 1000 + i,
                "url": f"https://img.example/{i}.jpg",
                "caption": caption,
                "page_url": f"https://page.example/{i}",
                "language": "en",
                "license": "cc-by" if i == 0 else None,
            }
            if i == FAILED:
                writer.add(row | {"status": "http_4xx", "error_message": "404", "http_status": 404}, None)
                continue
            body = io.BytesIO()
            img.save(body, "JPEG")
            image = process_image(body.getvalue(), DOWNLOAD)
            if i in corrupt:
                image.data = b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10
            writer.add(row, image)
        writer.close()
    tar_uri = f"{out}/images/00000.tar"
    if missing:
        drop = {f"{sample_key(0, i)}.jpg" for i in missing}
        with fsspec.open(tar_uri, "rb") as f, tarfile.open(fileobj=f) as src:
            members = [(m, src.extractfile(m).read()) for m in src if m.name not in drop]
        with fsspec.open(tar_uri, "wb") as f, tarfile.open(fileobj=f, mode="w") as dst:
            for member, data in members:
                dst.addfile(member, io.BytesIO(data))
    return tar_uri


def read_outputs(out: str, stem: str = "00000"):
    def npy(kind):
        with fsspec.open(f"{out}/embeddings/{kind}/{kind}_{stem}.npy", "rb") as f:
            return np.load(f)

    def table(path):
        with fsspec.open(f"{out}/{path}", "rb") as f:
            return pq.read_table(f)

    with fsspec.open(f"{out}/dataset/part-{stem}_stats.json", "r") as f:
        stats = json.load(f)
    return (
        npy("img_emb"),
        npy("text_emb"),
        table(f"embeddings/metadata/metadata_{stem}.parquet"),
        table(f"dataset/part-{stem}.parquet"),
        stats,
    )


def test_outputs_follow_clip_retrieval_layout(tmp_path, settings):
    out = str(tmp_path)
    stats = embed_shard(make_shard(out, 10), out, settings)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and "images" not in p.parts)
    assert files == [
        "dataset/part-00000.parquet",
        "dataset/part-00000_stats.json",
        "embeddings/img_emb/img_emb_00000.npy",
        "embeddings/metadata/metadata_00000.parquet",
        "embeddings/text_emb/text_emb_00000.npy",
    ]
    img, txt, metadata, dataset, saved = read_outputs(out)
    assert saved == json.loads(json.dumps(stats))
    assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (9, 16)
    np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(txt.astype(np.float32), axis=1), 1.0, atol=2e-3)

    assert metadata.schema == METADATA_SCHEMA and metadata.num_rows == 9
    rows = metadata.to_pylist()
    keys = [sample_key(0, i) for i in range(10) if i != FAILED]
    assert [r["key"] for r in rows] == keys
    assert rows[0]["uid"] == 1000 and rows[0]["url"] == "https://img.example/0.jpg" and rows[0]["license"] == "cc-by"
    assert rows[1]["original_width"] == 48 and rows[1]["page_url"] == "https://page.example/1"
    assert len(rows[1]["sha256"]) == 64 and rows[1]["language"] == "en"
    captions = {sample_key(0, i): t for i, (_, t) in enumerate(sample_training_pairs(10, seed=1, size=(48, 48)))}
    assert all(r["caption"] == captions[r["key"]] for r in rows)
    dots = np.einsum("ij,ij->i", img.astype(np.float32), txt.astype(np.float32))
    np.testing.assert_allclose(metadata["similarity"].to_numpy(), dots, atol=3e-3)
    assert set(metadata["NSFW"].to_pylist()) <= {"NSFW", "UNSURE", "UNLIKELY"}

    assert dataset.schema == DATASET_SCHEMA and dataset.num_rows == 9  # threshold -1 keeps every row
    first = dataset.to_pylist()[0]
    assert (first["SAMPLE_ID"], first["URL"], first["LICENSE"], first["HEIGHT"], first["WIDTH"]) == (
        1000,
        "https://img.example/0.jpg",
        "cc-by",
        48,
        48,
    )
    assert set(dataset["LICENSE"].to_pylist()[1:]) == {"?"}

    assert (stats["samples"], stats["embedded"], stats["kept"], stats["dropped_similarity"]) == (9, 9, 9, 0)
    assert stats["status"] == {"embedded": 9, "missing_image": 0, "decode_error": 0, "no_caption": 0, "taken_down": 0}
    assert stats["failures"] == []
    assert stats["shard"] == "00000" and stats["model"] == settings.checkpoint
    assert sum(stats["similarity"]["histogram"]["counts"]) == 9 and sum(stats["nsfw"].values()) == 9
    assert stats["timings"]["model_s"] > 0 and stats["samples_per_s"] > 0
    stats_mtime = os.stat(tmp_path / "dataset" / "part-00000_stats.json").st_mtime_ns
    assert all(os.stat(tmp_path / f).st_mtime_ns <= stats_mtime for f in files)  # the marker comes last


def test_similarity_threshold_and_drop_nsfw_filter_rows(tmp_path, settings):
    out = str(tmp_path)
    tar = make_shard(out, 12)
    embed_shard(tar, out, settings)
    similarity = read_outputs(out)[2]["similarity"].to_numpy()
    threshold = float(np.median(similarity))
    stats = embed_shard(tar, out, settings.model_copy(update={"similarity_threshold": threshold}))
    _, _, metadata, dataset, _ = read_outputs(out)
    assert metadata.num_rows == 11  # embeddings keep every row; only dataset/ is filtered
    expected = [k for k, s in zip(metadata["key"].to_pylist(), similarity) if s >= threshold]
    assert 0 < len(expected) < 11 and dataset["key"].to_pylist() == expected
    assert (stats["kept"], stats["dropped_similarity"], stats["dropped_nsfw"]) == (len(expected), 11 - len(expected), 0)
    assert min(dataset["similarity"].to_pylist()) >= threshold

    # Mostly flagged categories: the random model's top two are often both flagged.
    prompts = {
        "neutral_prompts": ("a photo", "a drawing"),
        "flagged_prompts": tuple(f"flagged thing {i}" for i in range(10)),
    }
    stats = embed_shard(tar, out, settings.model_copy(update=prompts | {"drop_nsfw": True}))
    _, _, metadata, dataset, _ = read_outputs(out)
    tags = dict(zip(metadata["key"].to_pylist(), metadata["NSFW"].to_pylist()))
    assert 0 < stats["nsfw"]["NSFW"] < 11 and stats["nsfw"]["NSFW"] == list(tags.values()).count("NSFW")
    assert dataset["key"].to_pylist() == [k for k, tag in tags.items() if tag != "NSFW"]
    assert stats["dropped_nsfw"] == stats["nsfw"]["NSFW"] and stats["kept"] == 11 - stats["nsfw"]["NSFW"]
    assert "NSFW" not in dataset["NSFW"].to_pylist()


def test_corrupt_and_missing_images_are_recorded_and_the_shard_goes_on(tmp_path, settings):
    out = str(tmp_path)
    stats = embed_shard(make_shard(out, 8, corrupt={1}, missing={5}), out, settings)
    _, _, metadata, _, _ = read_outputs(out)
    assert metadata["key"].to_pylist() == [sample_key(0, i) for i in (0, 2, 4, 6, 7)]
    assert stats["status"] == {"embedded": 5, "missing_image": 1, "decode_error": 1, "no_caption": 0, "taken_down": 0}
    assert [(f["key"], f["status"]) for f in stats["failures"]] == [
        (sample_key(0, 1), "decode_error"),
        (sample_key(0, 5), "missing_image"),
    ]
    assert all(f["error"] for f in stats["failures"])


def test_empty_shard(tmp_path, settings):
    out = str(tmp_path)
    with ShardWriter(out, 0, DOWNLOAD) as writer:
        writer.add(
            {"key": sample_key(0, 0), "uid": 1, "url": "https://x/0.jpg", "caption": "t", "status": "timeout"}, None
        )
    stats = embed_shard(f"{out}/images/00000.tar", out, settings)
    img, txt, metadata, dataset, _ = read_outputs(out)
    assert img.shape == txt.shape == (0, 16) and img.dtype == np.float16
    assert metadata.num_rows == dataset.num_rows == 0
    assert metadata.schema == METADATA_SCHEMA and dataset.schema == DATASET_SCHEMA
    assert (stats["samples"], stats["embedded"], stats["kept"]) == (0, 0, 0)


def test_rerun_overwrites_idempotently(tmp_path, settings):
    out = str(tmp_path)
    tar = make_shard(out, 6)
    embed_shard(tar, out, settings)
    first = read_outputs(out)
    embed_shard(tar, out, settings)
    second = read_outputs(out)
    for a, b in zip(first[:2], second[:2]):
        np.testing.assert_array_equal(a, b)
    assert first[2].equals(second[2]) and first[3].equals(second[3])
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_non_local_uris(settings):
    out = "memory://clipcrawl-embed-test"
    embed_shard(make_shard(out, 5), out, settings)
    img, _, metadata, dataset, saved = read_outputs(out)
    assert img.shape == (4, 16) and metadata.num_rows == dataset.num_rows == 4 and saved["embedded"] == 4


def test_unreadable_tar_names_the_uri(tmp_path, settings):
    out = str(tmp_path)
    tar = make_shard(out, 4)
    with open(tar, "r+b") as f:
        f.truncate(700)  # cut inside the first member
    with pytest.raises(OSError, match="00000.tar"):
        embed_shard(tar, out, settings)
    assert not (tmp_path / "dataset").exists()


def test_model_is_loaded_once_per_process(tmp_path, settings, monkeypatch):
    loads = []
    load = clip_model.load_model
    monkeypatch.setattr(clip_model, "load_model", lambda s: loads.append(s) or load(s))
    monkeypatch.setattr(clip_model, "_MODELS", {})
    out = str(tmp_path)
    tar = make_shard(out, 4)
    embed_shard(tar, out, settings)
    embed_shard(tar, out, settings.model_copy(update={"similarity_threshold": 0.5, "batch_size": 2}))
    assert len(loads) == 1 and worker_model(settings) is worker_model(settings)


def test_loader_reads_a_bounded_window_ahead(monkeypatch):
    produced = []

    def members(tar_uri, keys):
        for i in range(1000):
            produced.append(i)
            yield str(i), b""

    monkeypatch.setattr(embed, "shard_images", members)
    monkeypatch.setattr(embed, "_pixels", lambda data, preprocess: (None, 0.0))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        items = embed._prefetch("x.tar", set(), pool, None, window=8)
        next(items)
        time.sleep(0.3)
        assert len(produced) <= 8 + 2
        items.close()  # stops the reader thread
    assert not [t for t in threading.enumerate() if t.name == "clipcrawl-embed-tar"]


def test_task_run_name_uses_the_shard():
    assert embed_shard_task.task_run_name(parameters={"tar_uri": "s3://b/out/images/00042.tar"}) == "embed-00042"


def test_published_shards_and_run_summary(tmp_path, settings):
    out = str(tmp_path)
    tar = make_shard(out, 5)
    (tmp_path / "images" / "00001.tar").write_bytes(b"")  # no _stats.json: its download did not finish
    assert published_shards(f"{out}/images") == [tar]
    stats = embed_shard(tar, out, settings)
    summary = summarize([stats, stats], {"00002.tar": "OSError: gone"})
    assert (summary["shards"], summary["samples"], summary["embedded"], summary["kept"]) == (3, 8, 8, 8)
    assert summary["status"]["embedded"] == 8 and sum(summary["nsfw"].values()) == 8
    assert summary["failed"] == [{"shard": "00002.tar", "error": "OSError: gone"}]
