import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shard_reader import shard_images
from clipcrawl.tasks.download.shards import (
    IMAGES_SCHEMA,
    ShardSpec,
    ShardWriter,
    member_key,
    plan_shards,
    read_member,
    read_shard_rows,
    sample_key,
    tar_members,
)
from clipcrawl.tasks.download.stage import summarize
from clipcrawl.tasks.ingest.stage import PAIRS_SCHEMA


def write_pairs(path, first_uid: int, n: int, row_group_size: int = 2) -> str:
    table = pa.table(
        {
            "uid": pa.array(range(first_uid, first_uid + n), pa.uint64()),
            "url": [f"https://img.example/{i}.jpg" for i in range(first_uid, first_uid + n)],
            "caption": [f"caption {i}" for i in range(first_uid, first_uid + n)],
            "page_url": ["https://page.example/"] * n,
            "source": ["wat-0"] * n,
            "language": ["en"] * n,
            "license": [None] * n,
        },
        schema=PAIRS_SCHEMA,
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


@pytest.fixture
def pairs(tmp_path):
    return [
        write_pairs(tmp_path / "a.parquet", 0, 7),
        write_pairs(tmp_path / "b.parquet", 100, 0),
        write_pairs(tmp_path / "c.parquet", 200, 5),
    ]


def test_plan_shards_across_files(pairs):
    a, b, c = pairs
    specs = plan_shards(pairs, 4)
    assert specs == [
        ShardSpec(0, ((a, 0, 4),)),
        ShardSpec(1, ((a, 4, 7), (c, 0, 1))),
        ShardSpec(2, ((c, 1, 5),)),
    ]
    assert [s.num_rows for s in specs] == [4, 4, 4]
    assert plan_shards(pairs, 100) == [ShardSpec(0, ((a, 0, 7), (c, 0, 5)))]
    assert plan_shards(pairs, 3)[-1] == ShardSpec(3, ((c, 2, 5),))
    assert plan_shards([b], 4) == []


def test_plan_shards_balances_the_shards(pairs):
    # the fewest shards of at most shard_size, sizes within one of each other: no small last shard
    a, _, c = pairs
    assert plan_shards(pairs, 10) == [ShardSpec(0, ((a, 0, 6),)), ShardSpec(1, ((a, 6, 7), (c, 0, 5)))]  # not 10, 2
    assert [s.num_rows for s in plan_shards(pairs, 5)] == [4, 4, 4]  # not 5, 5 and 2
    assert [s.num_rows for s in plan_shards([a], 3)] == [3, 2, 2]  # not 3, 3 and 1


def test_read_shard_rows_returns_exactly_those_rows(pairs):
    uids = []
    for spec in plan_shards(pairs, 4):
        table = read_shard_rows(spec)
        assert table.schema == PAIRS_SCHEMA and table.num_rows == spec.num_rows
        uids.append(table.column("uid").to_pylist())
    assert uids == [[0, 1, 2, 3], [4, 5, 6, 200], [201, 202, 203, 204]]
    only = read_shard_rows(plan_shards(pairs, 4)[1], columns=["uid", "caption"])
    assert only.column_names == ["uid", "caption"] and only.column("caption").to_pylist()[-1] == "caption 200"
    assert read_shard_rows(ShardSpec(0, ())).num_rows == 0


def test_read_shard_rows_checks_the_file(pairs):
    with pytest.raises(ValueError, match="rows"):
        read_shard_rows(ShardSpec(0, ((pairs[0], 5, 9),)))


def test_sample_key_is_img2datasets():
    assert sample_key(0, 0) == "000000000"
    assert sample_key(12, 345) == "000120345"
    assert sample_key(3, 7, shard_size=100) == "000030007"  # at least 4 digits
    assert sample_key(3, 7, shard_size=100_000) == "0000300007"  # digits of 99999
    assert sample_key(3, 7, shard_size=10_001) == "0000300007"


def jpeg(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def row(i: int, **extra) -> dict:
    return {
        "key": sample_key(0, i),
        "uid": i,
        "url": f"https://img.example/{i}.jpg",
        "caption": f"a red square {i}",
        "page_url": "https://page.example/",
        "source": "wat-0",
        "language": "en",
        **extra,
    }


SETTINGS = DownloadSettings(image_size=32)


def test_shard_writer_outputs(tmp_path):
    body = jpeg()
    ok = process_image(body, SETTINGS)
    samples = [
        (row(2, status="success", http_status=200, bytes=len(body)), ok),
        (row(0, status="timeout", error_message="read timeout"), None),
        (row(1, status="success", http_status=200, bytes=11), process_image(b"<html></html>", SETTINGS)),
        (row(3, status="http_4xx", http_status=404), None),
        (row(4, http_status=200, bytes=len(body)), ok),
    ]
    with ShardWriter(str(tmp_path), 0, SETTINGS) as writer:
        for r, image in samples:
            writer.add(r, image)
    stats = writer.stats(0)
    images = tmp_path / "images"
    assert sorted(os.listdir(images)) == ["00000.parquet", "00000.tar", "00000_stats.json"]

    with tarfile.open(images / "00000.tar") as tar:
        names = tar.getnames()
        assert sorted(names) == [
            "000000002.jpg",
            "000000002.json",
            "000000002.txt",
            "000000004.jpg",
            "000000004.json",
            "000000004.txt",
        ]
        assert tar.extractfile("000000002.txt").read() == b"a red square 2"
        meta = json.loads(tar.extractfile("000000004.json").read())
        assert meta["key"] == "000000004" and meta["status"] == "success" and meta["width"] == 32
        assert meta["url"] == "https://img.example/4.jpg" and meta["language"] == "en"
        assert meta["caption"] == "a red square 4" and "text" not in meta  # img2dataset's name
        img = Image.open(tar.extractfile("000000002.jpg"))
        assert img.format == "JPEG" and img.size == (32, 32)

    table = pq.read_table(images / "00000.parquet")
    assert table.column_names[: len(IMAGES_SCHEMA)] == IMAGES_SCHEMA.names
    assert {"page_url", "source", "language"} <= set(table.column_names)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [sample_key(0, i) for i in range(5)]  # sorted by key
    assert [r["status"] for r in rows] == ["timeout", "not_an_image", "success", "http_4xx", "success"]
    assert rows[0]["error_message"] == "read timeout" and rows[3]["http_status"] == 404
    assert rows[2]["width"] == 32 and rows[2]["original_width"] == 64 and rows[2]["sha256"] == ok.sha256
    assert rows[1]["sha256"] is not None and rows[1]["width"] is None
    assert "text" not in table.column_names and rows[2]["caption"] == "a red square 2"

    published = json.loads((images / "00000_stats.json").read_text())
    assert published["count"] == 5 and published["successes"] == 2 and published["failures"] == 3
    assert published["status"] == {"http_4xx": 1, "not_an_image": 1, "success": 2, "timeout": 1}
    assert published["bytes"] == 2 * len(body) + 11
    assert published["duration"] > 0 and published["throughput"] > 0
    assert stats["status"] == published["status"]
    # img2dataset's keys, which its aggregation scripts read: not_an_image is its resizer's failure
    assert (published["failed_to_download"], published["failed_to_resize"]) == (2, 1)
    assert published["status_dict"] == published["status"] and published["end_time"] > published["start_time"]
    summary = summarize([published, published], {})
    assert (summary["count"], summary["failed_to_download"], summary["failed_to_resize"]) == (10, 4, 2)


def test_column_set_is_stable_when_everything_failed(tmp_path):
    with ShardWriter(str(tmp_path / "a"), 0, SETTINGS) as w:
        w.add(row(0, status="dns_error", final_url=None, attempts=None, note=None), None)
    with ShardWriter(str(tmp_path / "b"), 0, SETTINGS) as w:
        w.add(
            row(0, http_status=200, bytes=10, final_url="https://x/", attempts=1, note="n"),
            process_image(jpeg(), SETTINGS),
        )
    failed = pq.read_schema(tmp_path / "a" / "images" / "00000.parquet")
    good = pq.read_schema(tmp_path / "b" / "images" / "00000.parquet")
    assert failed.remove_metadata() == good.remove_metadata()
    with tarfile.open(tmp_path / "a" / "images" / "00000.tar") as tar:
        assert tar.getnames() == []


def test_blocklisted_rows_keep_nothing_of_the_image_and_count_by_list(tmp_path):
    with ShardWriter(str(tmp_path), 0, SETTINGS) as w:
        for i, name in enumerate(("hotline.txt", "hotline.txt", "urls.txt")):
            listed = row(
                i, status="blocklisted", error_message=f"on blocklist {name} (md5)", bytes=9999, blocklist=name
            )
            w.add(listed, None)
        stats = w.close()
    assert stats["blocklisted_by_list"] == {"hotline.txt": 2, "urls.txt": 1}
    table = pq.read_table(tmp_path / "images" / "00000.parquet")
    assert "blocklist" not in table.column_names
    for column in ("width", "height", "original_width", "original_height", "sha256", "bytes"):
        assert table.column(column).null_count == 3, column
    with tarfile.open(tmp_path / "images" / "00000.tar") as tar:
        assert tar.getnames() == []


def test_empty_shard_still_has_every_column(tmp_path):
    with ShardWriter(str(tmp_path), 3, SETTINGS):
        pass
    table = pq.read_table(tmp_path / "images" / "00003.parquet")
    assert table.num_rows == 0 and table.column_names[: len(IMAGES_SCHEMA)] == IMAGES_SCHEMA.names


def test_a_crash_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="worker died"), ShardWriter(str(tmp_path), 0, SETTINGS) as writer:
        writer.add(row(0, http_status=200), process_image(jpeg(), SETTINGS))
        raise RuntimeError("worker died")
    assert os.listdir(tmp_path / "images") == []


def test_bad_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate"), ShardWriter(str(tmp_path), 0, SETTINGS) as writer:
        writer.add(row(0, status="timeout"), None)
        writer.add(row(0, status="timeout"), None)
    with pytest.raises(ValueError, match="status"), ShardWriter(str(tmp_path), 0, SETTINGS) as writer:
        writer.add(row(0, status="lost"), None)  # not in the closed vocabulary
    assert os.listdir(tmp_path / "images") == []


def test_webp_extension(tmp_path):
    settings = DownloadSettings(image_size=32, encode_format="webp")
    with ShardWriter(str(tmp_path), 1, settings) as writer:
        writer.add({"key": sample_key(1, 0), "uid": 1, "url": "u", "caption": "a cat"}, process_image(jpeg(), settings))
        writer.add({"key": sample_key(1, 1), "uid": 2, "url": "v", "caption": None}, process_image(jpeg(), settings))
    with tarfile.open(tmp_path / "images" / "00001.tar") as tar:
        names = ["000010000.json", "000010000.txt", "000010000.webp", "000010001.json", "000010001.webp"]
        assert sorted(tar.getnames()) == names  # no caption, no .txt (img2dataset's layout)
        assert tar.extractfile("000010000.txt").read() == b"a cat"


def test_s3_output_is_spooled_and_published_on_close(s3_endpoint, tmp_path):
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="shards")
    out = "s3://shards/run"
    with pytest.raises(RuntimeError), ShardWriter(out, 0, SETTINGS) as writer:
        writer.add(row(0, http_status=200), process_image(jpeg(), SETTINGS))
        raise RuntimeError("worker died")
    fs = s3fs.S3FileSystem()
    assert not fs.exists("shards/run/images/00000.tar")
    with ShardWriter(out, 0, SETTINGS) as writer:
        writer.add(row(0, http_status=200), process_image(jpeg(), SETTINGS))
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("shards/run/images")) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
    ]
    with fs.open("shards/run/images/00000.tar", "rb") as f, tarfile.open(fileobj=f) as tar:
        assert sorted(tar.getnames()) == ["000000000.jpg", "000000000.json", "000000000.txt"]

    fs.put(write_pairs(tmp_path / "p.parquet", 0, 5), "shards/pairs/p.parquet")
    specs = plan_shards(["s3://shards/pairs/p.parquet"], 3)
    assert [read_shard_rows(s).column("uid").to_pylist() for s in specs] == [[0, 1, 2], [3, 4]]


def test_both_tar_readers_key_members_as_webdataset_does(tmp_path):
    """webdataset's key is the member name up to the first dot of its basename ('a.b.jpg': key 'a', field
    'b.jpg', which a reader asking for 'jpg' does not get): the search's random-access map and the embed stage's
    streaming reader find the same images under the same keys."""
    assert member_key("a.b.jpg") == ("a", "b.jpg")
    assert member_key("d/e/000010002.JPG") == ("d/e/000010002", "jpg")
    assert member_key("d.x/k.json") == ("d.x/k", "json")
    assert member_key(".hidden") is None and member_key("README") is None
    members = {  # several dots in a name, a folder with a dot, an upper-case extension, a second image of a key
        "000000000.jpg": b"first",
        "000000000.png": b"second image of the key",
        "000000001.thumb.jpg": b"a field thumb.jpg of key 000000001",
        "000000001.txt": b"caption",
        "shard.v2/000000002.PNG": b"in a folder",
        "000000003.4.webp": b"key 000000003, field 4.webp",
    }
    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = tar_members(str(tar_path))
    assert {k: m[2] for k, m in found.items()} == {"000000000": "jpg", "shard.v2/000000002": "png"}
    assert read_member(str(tar_path), "000000000", found["000000000"]) == b"first"
    streamed = dict(shard_images(str(tar_path), {"000000000", "000000001", "000000003", "shard.v2/000000002"}))
    assert streamed == {"000000000": b"first", "shard.v2/000000002": b"in a folder"}
