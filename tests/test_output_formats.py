"""The download's output formats (webdataset, files, parquet, as img2dataset's writers lay them out) written by the
shard writer, read back by embed, the thumbnails and a takedown; and shards as img2dataset itself writes them."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core.config import DownloadSettings, EmbedSettings
from clipcrawl.tasks.core.layout import published_shards
from clipcrawl.tasks.core.uri import filesystem
from clipcrawl.tasks.download import shards as shards_module
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shard_reader import image_index, read_image, shard_images
from clipcrawl.tasks.download.shards import IMAGES_SCHEMA, ShardWriter, sample_key
from clipcrawl.tasks.download.sinks import OUTPUT_FORMATS, ROWS_PER_GROUP, SINKS
from clipcrawl.tasks.embed.stage import embed_shard
from clipcrawl.tasks.report.html import tar_thumbnails
from clipcrawl.tasks.takedown.match import Matched
from clipcrawl.tasks.takedown.rewrite import rewrite_shards
from clipcrawl.tasks.world import sample_training_pairs
from tests.test_clip_model import write_tiny_model
from tests.test_embed_img2dataset import PARQUET_FIELDS, expected_captions, img2dataset_rows

FORMATS = ("webdataset", "files", "parquet")
N = 6
DOWN = 2  # this sample's download failed: a row, no image


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))
    return EmbedSettings(
        checkpoint=tiny, pretrained=None, device="cpu", batch_size=4, loader_threads=2, similarity_threshold=-1.0
    )


def url(i: int) -> str:
    return f"https://img.example/{i}.jpg"


def write_shard(out: str, output_format: str, seed: int = 3) -> str:
    """images/00000 in `output_format`: N rendered scenes with captions, sample DOWN failed; the shard's URI."""
    download = DownloadSettings(image_size=32, min_bytes=0, output_format=output_format)
    with ShardWriter(out, 0, download) as writer:
        for i, (img, caption) in enumerate(sample_training_pairs(N, seed=seed, size=(32, 32))):
            row = {"key": sample_key(0, i), "uid": 10 + i, "url": url(i), "caption": caption, "language": "en"}
            if i == DOWN:
                writer.add(row | {"status": "http_4xx", "http_status": 404}, None)
                continue
            body = io.BytesIO()
            img.save(body, "PNG")
            writer.add(row | {"http_status": 200, "bytes": body.tell()}, process_image(body.getvalue(), download))
    return writer.shard_uri


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """{format: the out folder} of the same samples written in each format."""
    outs = {}
    for fmt in FORMATS:
        out = str(tmp_path_factory.mktemp(fmt))
        write_shard(out, fmt)
        outs[fmt] = out
    return outs


def read_stats(out: str) -> dict:
    with open(os.path.join(out, "images", "00000_stats.json")) as f:
        return json.load(f)


def ok_keys() -> list[str]:
    return [sample_key(0, i) for i in range(N) if i != DOWN]


def test_each_format_has_img2datasets_layout(shards):
    keys = ok_keys()
    images = {fmt: os.path.join(out, "images") for fmt, out in shards.items()}
    assert sorted(os.listdir(images["webdataset"])) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert sorted(os.listdir(images["files"])) == ["00000", "00000.parquet", "00000_stats.json"]
    assert sorted(os.listdir(os.path.join(images["files"], "00000"))) == sorted(
        f"{k}.{ext}" for k in keys for ext in ("jpg", "txt", "json")
    )
    assert sorted(os.listdir(images["parquet"])) == ["00000.parquet", "00000_stats.json"]
    assert [published_shards(images[fmt]) for fmt in FORMATS] == [
        [os.path.join(images["webdataset"], "00000.tar")],
        [os.path.join(images["files"], "00000")],
        [os.path.join(images["parquet"], "00000.parquet")],
    ]
    rows = pq.read_table(os.path.join(images["webdataset"], "00000.parquet"))
    table = pq.read_table(os.path.join(images["parquet"], "00000.parquet"))
    # ParquetSampleWriter: the rows' columns, then the bytes in a binary column named by the encode format
    assert table.column_names == [*rows.column_names, "jpg"] and table.column_names[:13] == IMAGES_SCHEMA.names
    assert table.schema.field("jpg").type == pa.binary() and table.num_rows == N
    assert table.drop_columns(["jpg"]).equals(rows)
    assert [b is None for b in table["jpg"].to_pylist()] == [i == DOWN for i in range(N)]
    folder = os.path.join(images["files"], "00000")
    with open(os.path.join(folder, f"{keys[0]}.json")) as f:
        assert json.load(f)["url"] == url(0)
    with open(os.path.join(folder, f"{keys[0]}.txt")) as f:
        assert f.read() == rows["caption"][0].as_py()
    stats = [read_stats(shards[fmt]) for fmt in FORMATS]
    image_bytes = sum(len(b) for b in table["jpg"].to_pylist() if b is not None)  # the images the shard holds
    assert image_bytes > 0
    assert {(s["count"], s["successes"], s["image_bytes"]) for s in stats} == {(N, N - 1, image_bytes)}


def test_every_format_reads_back_the_same_images(shards):
    found = {fmt: dict(shard_images(published_shards(os.path.join(out, "images"))[0])) for fmt, out in shards.items()}
    assert list(found["webdataset"]) == ok_keys()
    assert found["files"] == found["webdataset"] == found["parquet"]
    some = {ok_keys()[1]}
    assert [k for fmt in FORMATS for k, _ in shard_images(published_shards(f"{shards[fmt]}/images")[0], some)] == [
        *some
    ] * 3


def test_embed_reads_every_format_alike(shards, settings, tmp_path):
    results = {}
    for fmt, out in shards.items():
        stats = embed_shard(published_shards(os.path.join(out, "images"))[0], out, settings)
        meta = pq.read_table(os.path.join(out, "embeddings", "metadata", "metadata_00000.parquet"))
        emb = np.load(os.path.join(out, "embeddings", "img_emb", "img_emb_00000.npy"))
        results[fmt] = (stats["embedded"], meta["key"].to_pylist(), meta["caption"].to_pylist(), emb)
    embedded, keys, texts, emb = results["webdataset"]
    assert embedded == N - 1 and keys == ok_keys()
    for fmt in ("files", "parquet"):
        assert results[fmt][:3] == (embedded, keys, texts)
        np.testing.assert_array_equal(results[fmt][3], emb)


@pytest.mark.parametrize("fmt", FORMATS)
def test_thumbnails_from_every_format(shards, fmt):
    shard = published_shards(os.path.join(shards[fmt], "images"))[0]
    refs = image_index(shard)
    assert sorted(refs) == ok_keys()
    key = ok_keys()[2]
    assert read_image(shard, key, refs[key]) == dict(shard_images(shard, {key}))[key]
    assert refs[key].ext == "jpg"
    thumbnail = tar_thumbnails(16)
    assert thumbnail({"key": key, "tar": shard})[:2] == b"\xff\xd8"  # a JPEG
    assert thumbnail({"key": sample_key(0, DOWN), "tar": shard}) is None  # the failed download has no image


@pytest.mark.parametrize("fmt", ["files", "parquet"])
def test_takedown_removes_the_image_from_the_shard(tmp_path, fmt):
    out = str(tmp_path)
    shard = write_shard(out, fmt)
    gone = sample_key(0, 1)
    before = read_stats(out)
    removed = rewrite_shards(out, Matched(urls={url(1)}))
    assert removed[os.path.join(out, "images", "00000.parquet")] == 1
    assert gone not in dict(shard_images(shard)) and gone not in image_index(shard)
    assert sorted(dict(shard_images(shard))) == [k for k in ok_keys() if k != gone]
    rows = pq.read_table(os.path.join(out, "images", "00000.parquet")).to_pylist()
    row = next(r for r in rows if r["key"] == gone)
    assert row["status"] == "taken_down" and row["url"] is None and row.get("jpg") is None
    if fmt == "files":
        assert removed[shard] == 3 and not [n for n in os.listdir(shard) if n.startswith(gone)]  # .jpg .txt .json
    after = read_stats(out)
    assert after["successes"] == before["successes"] - 1 and 0 < after["image_bytes"] < before["image_bytes"]
    assert rewrite_shards(out, Matched(urls={url(1)})) == {}  # done: nothing matches again


def test_object_store_output(s3_endpoint, settings):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="formats")
    for fmt in ("files", "parquet"):
        out = f"s3://formats/{fmt}"
        assert write_shard(out, fmt) == f"{out}/images/{'00000' if fmt == 'files' else '00000.parquet'}"
        [shard] = published_shards(f"{out}/images")
        assert shard == f"{out}/images/{'00000' if fmt == 'files' else '00000.parquet'}"
        assert sorted(dict(shard_images(shard))) == ok_keys()
        assert embed_shard(shard, out, settings)["embedded"] == N - 1
        key = ok_keys()[0]
        assert read_image(shard, key, image_index(shard)[key]) == dict(shard_images(shard, {key}))[key]
        with pytest.raises(RuntimeError), ShardWriter(out, 1, DownloadSettings(output_format=fmt)) as writer:
            writer.add({"key": sample_key(1, 0), "url": "u", "status": "http_4xx"}, None)
            raise RuntimeError("worker died")
        fs, path = filesystem(f"{out}/images")
        assert not [p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[1].startswith("00001")]
        write_shard(out, fmt)  # written again: the same shard, nothing left over
        assert sorted(dict(shard_images(shard))) == ok_keys()
        objects = sorted(p.removeprefix(f"{path}/") for p in fs.find(path))
        files = [f"00000/{k}.{ext}" for k in ok_keys() for ext in ("jpg", "json", "txt")] if fmt == "files" else []
        assert objects == sorted([*files, "00000.parquet", "00000_stats.json"])
        with pytest.raises(RuntimeError), ShardWriter(out, 0, DownloadSettings(output_format=fmt)):
            raise RuntimeError("worker died")  # a rewrite that fails before it publishes: the shard stays
        assert published_shards(f"{out}/images") == [shard] and sorted(dict(shard_images(shard))) == ok_keys()


def test_every_output_format_has_a_sink():
    assert set(SINKS) == set(OUTPUT_FORMATS) == {"webdataset", "files", "parquet"}


def images_of(out: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(out, "images"))
        for d, _, fs in os.walk(os.path.join(out, "images"))
        for f in fs
    )


def test_a_shard_written_again_in_another_format_replaces_the_old_one(tmp_path):
    """Each rewrite (other images) is what the readers see, and no other format's images stay; a takedown then
    removes the sample from the only copy."""
    out = str(tmp_path)
    layouts = {
        "webdataset": ["00000.tar"],
        "files": [f"00000/{k}.{ext}" for k in ok_keys() for ext in ("jpg", "json", "txt")],
        "parquet": [],
    }
    previous = None
    for seed, fmt in enumerate(["webdataset", "files", "parquet", "webdataset", "parquet", "files"]):
        shard = write_shard(out, fmt, seed=seed)
        assert published_shards(os.path.join(out, "images")) == [shard]
        assert read_stats(out)["output_format"] == fmt
        assert images_of(out) == sorted([*layouts[fmt], "00000.parquet", "00000_stats.json"])
        alone = write_shard(str(tmp_path / f"alone-{seed}"), fmt, seed=seed)  # the same, written to an empty OUT
        images = dict(shard_images(shard))
        assert images == dict(shard_images(alone)) and images != previous  # this rewrite's, not an earlier one's
        previous, key = images, ok_keys()[0]
        assert tar_thumbnails(16)({"key": key, "tar": shard}) == tar_thumbnails(16)({"key": key, "tar": alone})
    gone = sample_key(0, 1)
    assert rewrite_shards(out, Matched(urls={url(1)}))
    assert gone not in dict(shard_images(shard)) and not [p for p in images_of(out) if gone in p]


def test_a_parquet_shard_keeps_its_row_groups_through_a_takedown(tmp_path):
    """More rows than a row group: the rewrite keeps groups of ROWS_PER_GROUP rows and the image column stored
    as the download stores it; only the taken-down row's bytes go."""
    out, n = str(tmp_path), ROWS_PER_GROUP * 2 + 5
    download = DownloadSettings(image_size=16, min_bytes=0, output_format="parquet")
    body = io.BytesIO()
    next(iter(sample_training_pairs(1, seed=1, size=(16, 16))))[0].save(body, "PNG")
    image = process_image(body.getvalue(), download)
    ok = {i for i in range(n) if i % 50 == 0}  # successes; the other rows are failed downloads (no bytes)
    with ShardWriter(out, 0, download) as writer:
        for i in range(n):
            row = {"key": sample_key(0, i), "url": url(i), "caption": f"c{i}"}
            writer.add(row | ({"http_status": 200} if i in ok else {"status": "http_4xx"}), image if i in ok else None)
    path = os.path.join(out, "images", "00000.parquet")

    def layout_of() -> tuple[list[int], set[str]]:
        meta = pq.ParquetFile(path).metadata
        column = meta.schema.names.index("jpg")
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
        return [g.num_rows for g in groups], {g.column(column).compression for g in groups}

    before = pq.read_table(path)
    groups, compression = layout_of()
    removed = rewrite_shards(out, Matched(urls={url(50)}))
    assert removed[path] == 1
    assert layout_of() == (groups, compression) and max(groups) <= ROWS_PER_GROUP < n
    after = pq.read_table(path)
    images = after["jpg"].to_pylist()
    assert images[50] is None and after["status"][50].as_py() == "taken_down"
    assert [b for i, b in enumerate(images) if i != 50] == [
        b for i, b in enumerate(before["jpg"].to_pylist()) if i != 50
    ]
    assert read_stats(out)["image_bytes"] == len(image.data) * (len(ok) - 1)


def test_a_killed_files_writer_leaves_nothing_the_next_one_keeps(tmp_path):
    stale = tmp_path / "images" / "00000.tmp-0123abcd"
    stale.mkdir(parents=True)
    (stale / f"{sample_key(0, 0)}.jpg").write_bytes(b"half")
    other = tmp_path / "images" / "00001.tmp-0123abcd"  # another shard's: not this writer's
    other.mkdir()
    write_shard(str(tmp_path), "files")
    assert not stale.exists() and other.exists()


def test_a_failed_local_files_shard_is_not_published(tmp_path, monkeypatch):
    out = str(tmp_path)
    with pytest.raises(RuntimeError), ShardWriter(out, 1, DownloadSettings(output_format="files")) as writer:
        writer.add({"key": sample_key(1, 0), "url": "u", "status": "http_4xx"}, None)
        raise RuntimeError("worker died")
    assert os.listdir(os.path.join(out, "images")) == []  # the temporary folder went, nothing was published

    def dies(uri, obj):
        raise OSError("disk full")

    monkeypatch.setattr(shards_module, "write_json", dies)  # after the folder's rename, before the stats
    with pytest.raises(OSError, match="disk full"):
        write_shard(out, "files")
    assert os.path.isdir(os.path.join(out, "images", "00000"))  # renamed into place ...
    assert published_shards(os.path.join(out, "images")) == []  # ... but not published
    assert not [n for n in os.listdir(os.path.join(out, "images")) if ".tmp-" in n]


# ---- shards as img2dataset writes them (img2dataset 1.47 img2dataset/writer.py): FilesSampleWriter writes
# {folder}/{shard}/{key}.{encode_format}, {key}.txt (with a caption column), {key}.json (the row) for each success
# and the rows to {folder}/{shard}.parquet; ParquetSampleWriter writes {folder}/{shard}.parquet only, the rows'
# schema (downloader.py: the input's columns, key, status, ...; tests/test_embed_img2dataset.py) with
# pa.field(encode_format, pa.binary()) appended, None for a failure. Its `txt` field is not in that schema, so
# BufferedParquetWriter drops it. Both leave {shard}_stats.json, written last.


def img2dataset_stats(folder) -> None:
    stats = {
        "count": N,
        "successes": N - 1,
        "failed_to_download": 1,
        "failed_to_resize": 0,
        "duration": 1.0,
        "start_time": 0.0,
        "end_time": 1.0,
        "status_dict": {"success": N - 1, "HTTP Error 404: Not Found": 1},
    }
    (folder / "00000_stats.json").write_text(json.dumps(stats))


def test_embed_reads_img2datasets_files_shard(tmp_path, settings):
    folder = tmp_path / "i2d"
    (folder / "00000").mkdir(parents=True)
    rows, images = img2dataset_rows()
    schema = pa.schema(PARQUET_FIELDS)
    for row in rows:
        if row["key"] in images:
            (folder / "00000" / f"{row['key']}.jpg").write_bytes(images[row["key"]])
            (folder / "00000" / f"{row['key']}.txt").write_text(row["caption"])
            (folder / "00000" / f"{row['key']}.json").write_text(json.dumps(row, indent=4))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "00000.parquet")
    img2dataset_stats(folder)
    assert published_shards(str(folder)) == [str(folder / "00000")]
    stats = embed_shard(str(folder / "00000"), str(tmp_path / "out"), settings)
    meta = pq.read_table(tmp_path / "out" / "embeddings" / "metadata" / "metadata_00000.parquet")
    assert dict(zip(meta["key"].to_pylist(), meta["caption"].to_pylist())) == expected_captions()
    assert stats["status"]["embedded"] == len(expected_captions()) and stats["status"]["missing_image"] == 0


def test_embed_reads_img2datasets_parquet_shard(tmp_path, settings):
    folder = tmp_path / "i2d"
    folder.mkdir()
    rows, images = img2dataset_rows()
    schema = pa.schema(PARQUET_FIELDS).append(pa.field("jpg", pa.binary()))
    table = pa.Table.from_pylist([row | {"jpg": images.get(row["key"])} for row in rows], schema=schema)
    pq.write_table(table, folder / "00000.parquet", row_group_size=2)
    img2dataset_stats(folder)
    assert published_shards(str(folder)) == [str(folder / "00000.parquet")]
    stats = embed_shard(str(folder / "00000.parquet"), str(tmp_path / "out"), settings)
    meta = pq.read_table(tmp_path / "out" / "embeddings" / "metadata" / "metadata_00000.parquet")
    assert dict(zip(meta["key"].to_pylist(), meta["caption"].to_pylist())) == expected_captions()
    assert stats["status"]["embedded"] == len(expected_captions()) and stats["status"]["missing_image"] == 0
    key = next(iter(expected_captions()))
    assert (
        read_image(str(folder / "00000.parquet"), key, image_index(str(folder / "00000.parquet"))[key]) == images[key]
    )
