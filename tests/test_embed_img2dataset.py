"""`embed` on img2dataset's output folder as img2dataset writes it (img2dataset/writer.py, WebDatasetSampleWriter):
{shard}.tar holding {key}.jpg, {key}.json and, when a caption column was given, {key}.txt (webdataset's TarWriter
writes a sample's members in sorted order); {shard}.parquet, one row per input line, failures included, with key,
caption (only with --caption_col), url, status, error_message, width, height, original_width, original_height,
exif, sha256; and {shard}_stats.json, written last."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core.config import EmbedSettings
from clipcrawl.tasks.core.errors import InputError, is_transient
from clipcrawl.tasks.core.layout import published_shards
from clipcrawl.tasks.embed.stage import embed_shard
from clipcrawl.tasks.world import sample_training_pairs
from tests.test_clip_model import write_tiny_model

FAILED = 2  # img2dataset could not download this one: a parquet row, no tar members
BLANK = 4  # downloaded, its caption empty

# img2dataset's shard parquet schema (downloader.py: the input's columns, url, caption and any
# save_additional_columns, then key, status, error_message, the sizes as int32, exif, then compute_hash's
# sha256); caption optional
PARQUET_FIELDS = [
    ("url", pa.string()),
    ("caption", pa.string()),
    ("NSFW", pa.string()),
    ("key", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("exif", pa.string()),
    ("sha256", pa.string()),
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))
    return EmbedSettings(
        checkpoint=tiny, pretrained=None, device="cpu", batch_size=4, loader_threads=2, similarity_threshold=-1.0
    )


def captions(n: int) -> dict[str, str]:
    pairs = sample_training_pairs(n, seed=2, size=(32, 32))
    return {f"{i:09d}": ("" if i == BLANK else caption) for i, (_, caption) in enumerate(pairs)}


def img2dataset_rows(n: int = 6, caption_col: bool = True) -> tuple[list[dict], dict[str, bytes]]:
    """img2dataset's rows of one shard (FAILED failed to download) and the JPEG of each success, by key."""
    rows, images = [], {}
    for i, ((img, _), (key, caption)) in enumerate(
        zip(sample_training_pairs(n, seed=2, size=(32, 32)), captions(n).items())
    ):
        ok = i != FAILED
        rows.append(
            {
                "url": f"https://img.example/{i}.jpg",
                "caption": caption,
                "NSFW": "UNLIKELY",  # an input column kept by save_additional_columns
                "key": key,
                "status": "success" if ok else "failed_to_download",
                "error_message": None if ok else "HTTP Error 404: Not Found",
                "width": 32 if ok else None,
                "height": 32 if ok else None,
                "original_width": 32 if ok else None,
                "original_height": 32 if ok else None,
                "exif": None,
                "sha256": f"{i:064x}" if ok else None,
            }
        )
        if not caption_col:  # img2dataset adds caption to its rows and json only with a caption_col
            del rows[-1]["caption"]
        if ok:
            body = io.BytesIO()
            img.save(body, "JPEG")
            images[key] = body.getvalue()
    return rows, images


def img2dataset_folder(folder, n=6, caption_col=True, txt=True, parquet=True) -> str:
    """folder/00000.tar/.parquet/_stats.json as img2dataset's webdataset writer leaves them; the tar's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, images = img2dataset_rows(n, caption_col)
    captions_of = captions(n)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for meta in rows:
            key = meta["key"]
            if key not in images:
                continue
            members = {"jpg": images[key], "json": json.dumps(meta, indent=4).encode()}
            if txt:
                members["txt"] = captions_of[key].encode()
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tar.addfile(info, io.BytesIO(members[ext]))
    if parquet:
        schema = pa.schema([f for f in PARQUET_FIELDS if caption_col or f[0] != "caption"])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "00000.parquet")
    successes = n - 1
    stats = {
        "count": n,
        "successes": successes,
        "failed_to_download": 1,
        "failed_to_resize": 0,
        "duration": 1.0,
        "start_time": 0.0,
        "end_time": 1.0,
        "status_dict": {"success": successes, "HTTP Error 404: Not Found": 1},
    }
    (folder / "00000_stats.json").write_text(json.dumps(stats))
    return str(folder / "00000.tar")


def embedded(out) -> tuple[dict, dict]:
    metadata = pq.read_table(out / "embeddings" / "metadata" / "metadata_00000.parquet")
    return dict(zip(metadata["key"].to_pylist(), metadata["caption"].to_pylist())), dict(
        zip(metadata["key"].to_pylist(), metadata["url"].to_pylist())
    )


def expected_captions(n=6) -> dict[str, str]:
    return {k: c for i, (k, c) in enumerate(captions(n).items()) if i not in (FAILED, BLANK)}


@pytest.mark.parametrize("txt", [True, False], ids=["with-txt", "parquet-only"])
def test_caption_from_the_parquet_caption_column(tmp_path, settings, txt):
    tar = img2dataset_folder(tmp_path / "i2d", txt=txt)
    assert published_shards(str(tmp_path / "i2d")) == [tar]  # img2dataset's _stats.json marks the shard done
    stats = embed_shard(tar, str(tmp_path / "out"), settings)
    texts, urls = embedded(tmp_path / "out")
    assert texts == expected_captions()
    assert urls[f"{0:09d}"] == "https://img.example/0.jpg"
    assert stats["samples"] == 5  # the failed download is skipped, not a sample
    assert stats["status"] == {"embedded": 4, "missing_image": 0, "decode_error": 0, "no_caption": 1, "taken_down": 0}
    assert [(f["key"], f["status"]) for f in stats["failures"]] == [(f"{BLANK:09d}", "no_caption")]


def test_caption_from_txt_members_when_the_parquet_has_no_caption_column(tmp_path, settings):
    tar = img2dataset_folder(tmp_path / "i2d", caption_col=False)
    stats = embed_shard(tar, str(tmp_path / "out"), settings)
    texts, urls = embedded(tmp_path / "out")
    assert texts == expected_captions()
    assert urls[f"{5:09d}"] == "https://img.example/5.jpg"
    assert (stats["samples"], stats["embedded"], stats["status"]["no_caption"]) == (5, 4, 1)


def test_tar_without_a_parquet_reads_txt_and_json_members(tmp_path, settings):
    tar = img2dataset_folder(tmp_path / "i2d", parquet=False)
    stats = embed_shard(tar, str(tmp_path / "out"), settings)
    texts, urls = embedded(tmp_path / "out")
    assert texts == expected_captions()
    assert urls == {k: f"https://img.example/{int(k)}.jpg" for k in texts}  # from {key}.json
    sha = pq.read_table(tmp_path / "out" / "dataset" / "part-00000.parquet")["sha256"].to_pylist()
    assert sha == [f"{int(k):064x}" for k in texts]
    assert (stats["samples"], stats["embedded"], stats["status"]["no_caption"]) == (5, 4, 1)


@pytest.mark.parametrize("parquet", [True, False], ids=["parquet-without-caption", "tar-only"])
def test_a_shard_without_any_caption_fails_loudly(tmp_path, settings, parquet):
    tar = img2dataset_folder(tmp_path / "i2d", caption_col=False, txt=False, parquet=parquet)
    with pytest.raises(InputError) as raised:
        embed_shard(tar, str(tmp_path / "out"), settings)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(tar) and "{key}.txt" in message
    assert ("caption column" in message) == parquet
    assert not is_transient(raised.value)  # the task's retries leave it alone
    assert not (tmp_path / "out").exists()  # nothing published, no empty captions embedded
