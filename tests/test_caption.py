"""One spelling for the caption: `caption` in pairs/, the shard parquet and {key}.json, embeddings/metadata,
ids.parquet and search results (as img2dataset and clip-retrieval name it). Outputs of earlier versions, which
called it `text`, stay readable by every stage (tasks/core/caption.py): pairs downloaded again, shards embedded
again, metadata indexed, an old ids.parquet searched. Built by the real stages on a few scenes of the synthetic
world, embedded with its tiny CLIP model."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core.config import DownloadSettings, IndexSettings
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shards import ShardWriter, plan_download, read_shard_rows, sample_key
from clipcrawl.tasks.embed.clip_model import load_model
from clipcrawl.tasks.embed.stage import embed_shard, shard_samples
from clipcrawl.tasks.index.stage import finish_index, index_modality, plan_index
from clipcrawl.tasks.search.search import Searcher
from clipcrawl.tasks.world.scenes import describe, encode_image, random_scene, render_scene
from clipcrawl.tasks.world.tiny_clip import embed_settings

N = 12
EMBED = embed_settings(similarity_threshold=-1.0)  # every sample kept: rows follow the pairs
DOWNLOAD = DownloadSettings(image_size=64)


def renamed(table: pa.Table, old: str, new: str) -> pa.Table:
    return table.rename_columns([new if c == old else c for c in table.column_names])


def rewrite(parquet: Path, old: str, new: str) -> None:
    """Rename a column of a parquet file in place (an output as an earlier version wrote it)."""
    pq.write_table(renamed(pq.read_table(parquet), old, new), parquet)


def write_pairs(path: Path, first: int, captions: list[str], column: str = "caption") -> None:
    """A pairs/ file of the samples first, first + 1, ...; earlier versions wrote the caption in `text`."""
    n = len(captions)
    pq.write_table(
        pa.table(
            {
                "uid": pa.array(range(first, first + n), pa.uint64()),
                "url": [f"https://img.example/{i}.jpg" for i in range(first, first + n)],
                column: captions,
                "page_url": ["https://page.example/"] * n,
                "source": ["wat-0"] * n,
                "language": ["en"] * n,
                "license": pa.nulls(n, pa.string()),
            }
        ),
        path,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[str]]:
    """OUT: old-style pairs (and new ones) planned and read by the download stage, written as one shard by its
    writer, embedded and indexed; and the captions in row order."""
    out = tmp_path_factory.mktemp("caption") / "out"
    rng = random.Random("caption-test")
    scenes = [random_scene(rng, flagged_rate=0) for _ in range(N)]
    captions = [describe(s, rng) for s in scenes]
    (out / "pairs").mkdir(parents=True)
    write_pairs(out / "pairs" / "a.parquet", 0, captions[: N // 2], "text")
    write_pairs(out / "pairs" / "b.parquet", N // 2, captions[N // 2 :])

    _, (spec,) = plan_download(str(out / "pairs"), 100, DOWNLOAD, str(out / "_inputs"))
    rows = read_shard_rows(spec, settings=DOWNLOAD)
    assert "text" not in rows.column_names and rows["caption"].to_pylist() == captions
    with ShardWriter(str(out), 0, DOWNLOAD) as writer:
        for i, (row, scene) in enumerate(zip(rows.to_pylist(), scenes)):
            image = process_image(encode_image(render_scene(scene), "jpg"), DOWNLOAD)
            writer.add(row | {"key": sample_key(0, i), "http_status": 200}, image)
    embed_shard(writer.shard_uri, str(out), EMBED)
    plan = plan_index(str(out / "embeddings"), str(out), IndexSettings(index_key="Flat", queries=10))
    finish_index(plan, index_modality(plan, "image"), index_modality(plan, "text"))
    return out, captions


def keyed(table: pa.Table, column: str = "caption") -> dict[str, str]:
    return dict(zip(table["key"].to_pylist(), table[column].to_pylist()))


def test_new_outputs_call_it_caption(run):
    out, captions = run
    expected = {sample_key(0, i): c for i, c in enumerate(captions)}
    shard = pq.read_table(out / "images" / "00000.parquet")
    assert "text" not in shard.column_names and keyed(shard) == expected
    with tarfile.open(out / "images" / "00000.tar") as tar:
        records = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for key, caption in expected.items():
        record = json.loads(records[f"{key}.json"])
        assert record["caption"] == caption and "text" not in record
        assert records[f"{key}.txt"].decode() == caption
    metadata = pq.read_table(out / "embeddings" / "metadata" / "metadata_00000.parquet")
    assert "text" not in metadata.column_names and keyed(metadata) == expected
    ids = pq.read_table(out / "index" / "ids.parquet")
    assert "text" not in ids.column_names and keyed(ids) == expected
    dataset = pq.read_table(out / "dataset" / "part-00000.parquet")
    assert keyed(dataset, "TEXT") == expected  # the LAION columns keep TEXT


def test_pairs_of_earlier_versions_are_read_beside_new_ones(run, tmp_path):
    out, captions = run
    (tmp_path / "pairs").mkdir()
    write_pairs(tmp_path / "pairs" / "old.parquet", 0, captions, "text")
    _, specs = plan_download(str(tmp_path / "pairs"), 5)
    rows = pa.concat_tables(read_shard_rows(spec) for spec in specs)
    assert rows.column_names[:3] == ["uid", "url", "caption"] and rows["caption"].to_pylist() == captions


def old_shard(out: Path, images: Path) -> Path:
    """OUT's shard as earlier versions wrote it: `text` in its parquet and in each {key}.json."""
    images.mkdir(parents=True)
    shutil.copy(out / "images" / "00000_stats.json", images)
    rewrite(shutil.copy(out / "images" / "00000.parquet", images), "caption", "text")
    with tarfile.open(out / "images" / "00000.tar") as src, tarfile.open(images / "00000.tar", "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".json"):
                record = json.loads(data)
                data = json.dumps({("text" if k == "caption" else k): v for k, v in record.items()}).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return images / "00000.tar"


@pytest.mark.parametrize("parquet", [True, False], ids=["with-its-parquet", "tar-only"])
def test_shards_of_earlier_versions_are_embedded(run, tmp_path, parquet):
    out, captions = run
    tar = old_shard(out, tmp_path / "images")
    if not parquet:  # captions from {key}.txt, the rest from {key}.json
        (tmp_path / "images" / "00000.parquet").unlink()
    expected = {sample_key(0, i): c for i, c in enumerate(captions)}
    samples = shard_samples(str(tar))
    assert {key: row["caption"] for key, row in samples.items()} == expected
    stats = embed_shard(str(tar), str(tmp_path), EMBED)
    assert stats["embedded"] == N
    metadata = pq.read_table(tmp_path / "embeddings" / "metadata" / "metadata_00000.parquet")
    assert keyed(metadata) == expected and metadata["url"].to_pylist() == [
        f"https://img.example/{i}.jpg" for i in range(N)
    ]


def test_metadata_and_ids_of_earlier_versions_are_indexed_and_searched(run, tmp_path):
    out, captions = run
    again = tmp_path / "out"
    shutil.copytree(out / "embeddings", again / "embeddings")
    shutil.copytree(out / "dataset", again / "dataset")
    rewrite(again / "embeddings" / "metadata" / "metadata_00000.parquet", "caption", "text")
    plan = plan_index(str(again / "embeddings"), str(again), IndexSettings(index_key="Flat", queries=10))
    finish_index(plan, index_modality(plan, "image"), index_modality(plan, "text"))
    ids = pq.read_table(again / "index" / "ids.parquet")
    assert keyed(ids) == keyed(pq.read_table(out / "index" / "ids.parquet"))

    rewrite(again / "index" / "ids.parquet", "caption", "text")  # an index of an earlier version
    searcher = Searcher(str(again / "index"), model=load_model(EMBED))
    results = searcher.search(text=captions[3], k=N, modality="text")
    assert len(results) == N and {r["caption"] for r in results} == set(captions)
    best = results[0]
    assert best["caption"] == captions[best["id"]] and "text" not in best


def test_a_takedown_over_an_earlier_versions_output(run, tmp_path):
    """ids.parquet, the metadata and the shard parquet calling the caption `text`: the takedown removes the sample,
    and the files it rewrites call it caption."""
    from clipcrawl.tasks.takedown.match import request
    from clipcrawl.tasks.takedown.stage import takedown

    out, captions = run
    old = tmp_path / "out"
    shutil.copytree(out, old)
    infos = old / "index" / "index_infos.json"  # its shards name the copy's folders
    infos.write_text(infos.read_text().replace(json.dumps(str(out))[1:-1], json.dumps(str(old))[1:-1]))
    written = [
        old / "index" / "ids.parquet",
        old / "embeddings" / "metadata" / "metadata_00000.parquet",
        old / "images" / "00000.parquet",
    ]
    for parquet in written:
        rewrite(parquet, "caption", "text")
    gone, url = sample_key(0, 3), "https://img.example/3.jpg"
    takedown(str(old), request([url]), "an earlier version's output")
    expected = {sample_key(0, i): c for i, c in enumerate(captions) if i != 3}
    for parquet in written:
        table = pq.read_table(parquet)
        assert "text" not in table.column_names and url not in table["url"].to_pylist()
        assert {k: c for k, c in keyed(table).items() if k != gone} == expected
    assert keyed(pq.read_table(old / "images" / "00000.parquet"))[gone] is None
    assert gone not in keyed(pq.read_table(old / "index" / "ids.parquet"))
    with tarfile.open(old / "images" / "00000.tar") as tar:
        assert not [m for m in tar.getnames() if m.startswith(gone)]
