"""The pipeline's outputs read by the libraries that img2dataset's and clip-retrieval's users read them with:
webdataset and Hugging Face datasets (images/*.tar), embedding-reader (embeddings/) and DuckDB (dataset/ and the
shard parquets). Each reader's view of the session's `pipeline` run (the small synthetic world) is compared with
the same files read directly: the shard parquets and the metadata with pyarrow, the embeddings with numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SUCCESS = "success"


@pytest.fixture(scope="module")
def out(pipeline) -> Path:
    return pipeline[0]


def caption_column(names) -> str:
    """The caption's column, as the pipeline writes it: caption (img2dataset's and clip-retrieval's name)."""
    assert "caption" in names and "text" not in names, f"the caption is not `caption` among {list(names)}"
    return "caption"


def tars(out: Path) -> list[Path]:
    found = sorted((out / "images").glob("*.tar"))
    assert len(found) > 1, f"the pipeline wrote {len(found)} tar(s); these tests need several shards"
    return found


def shard_successes(out: Path) -> dict[tuple[str, str], dict]:
    """{(tar path, key): row} of every success of every shard, from the parquet beside each tar."""
    rows = {}
    for tar in tars(out):
        table = pq.read_table(tar.with_suffix(".parquet"))
        caption = caption_column(table.column_names)
        for row in table.to_pylist():
            if row["status"] == SUCCESS:
                rows[(str(tar), row["key"])] = row | {"caption": row[caption]}
    assert rows, "no shard has a success"
    return rows


def read_parquets(folder: Path, pattern: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob(pattern))], promote_options="default")


def test_webdataset_iterates_every_success_of_every_shard(out):
    import webdataset as wds

    expected = shard_successes(out)
    dataset = (
        wds.WebDataset([str(t) for t in tars(out)], shardshuffle=False)
        .decode("pil")
        .to_tuple("__url__", "__key__", "jpg", "txt", "json")
    )
    seen = set()
    for url, key, image, caption, record in dataset:
        # a key seen twice: the members of one sample were not adjacent in the tar, webdataset split it
        assert (url, key) not in seen, f"{key} of {url} came twice"
        seen.add((url, key))
        assert (url, key) in expected, f"{key} of {url} is not a success in the shard's parquet"
        row = expected[(url, key)]
        assert image.size == (row["width"], row["height"]), key
        assert caption == row["caption"], key
        assert (record["key"], record["url"], record["uid"]) == (key, row["url"], str(row["uid"]))
        assert record[caption_column(record)] == row["caption"], key
    assert seen == expected.keys()


def read_embeddings(out: Path, folder: str) -> dict[str, tuple[dict, np.ndarray]]:
    """{key: (metadata row, vector)}: each shard's npy rows beside its metadata rows, read with numpy and pyarrow."""
    embeddings, metadata = out / "embeddings" / folder, out / "embeddings" / "metadata"
    truth = {}
    for npy in sorted(embeddings.glob("*.npy")):
        vectors = np.load(npy)
        assert vectors.dtype == np.float16, npy.name
        table = pq.read_table(metadata / f"metadata_{npy.stem.removeprefix(folder + '_')}.parquet")
        assert len(vectors) == table.num_rows, npy.name
        caption = caption_column(table.column_names)
        for row, vector in zip(table.to_pylist(), vectors, strict=True):
            assert row["key"] not in truth, f"{row['key']} is in two shards"
            truth[row["key"]] = (row | {"caption": row[caption]}, vector)
    return truth


@pytest.mark.parametrize(("folder", "other"), [("img_emb", "text_emb"), ("text_emb", "img_emb")])
def test_embedding_reader_reads_every_embedding_with_its_metadata(out, folder, other):
    from embedding_reader import EmbeddingReader

    metadata = out / "embeddings" / "metadata"
    truth, others = read_embeddings(out, folder), read_embeddings(out, other)
    total = sum(pq.read_metadata(p).num_rows for p in metadata.glob("*.parquet"))
    assert total > 100 and len(truth) == total and others.keys() == truth.keys()
    caption = caption_column(pq.read_schema(next(metadata.glob("*.parquet"))).names)

    reader = EmbeddingReader(
        embeddings_folder=str(out / "embeddings" / folder),
        file_format="parquet_npy",
        metadata_folder=str(metadata),
        meta_columns=["key", "url", caption, "similarity"],
    )
    assert (reader.count, reader.dimension) == (total, next(iter(truth.values()))[1].shape[0])
    keys = []
    # batches smaller than a shard and not dividing it, so that batches straddle the files
    for batch, meta in reader(batch_size=37, start=0, end=reader.count, show_progress=False):
        assert len(batch) == len(meta)
        for vector, row in zip(batch, meta.to_dict("records"), strict=True):
            key = row["key"]
            expected, expected_vector = truth[key]
            assert (row["url"], row[caption]) == (expected["url"], expected["caption"]), key
            np.testing.assert_array_equal(vector, expected_vector.astype(vector.dtype), err_msg=key)
            # the row's similarity is its own image and caption's: a metadata row beside another sample's
            # embeddings (within a file) would not match
            similarity = float(np.dot(vector.astype(np.float32), others[key][1].astype(np.float32)))
            assert similarity == pytest.approx(row["similarity"], abs=1e-3), key
            keys.append(key)
    assert len(keys) == total and set(keys) == truth.keys()
    norms = np.linalg.norm(np.stack([v for _, v in truth.values()]).astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # L2-normalised, within float16's precision


def test_duckdb_queries_agree_with_pyarrow(out):
    import duckdb

    images, dataset, metadata = out / "images", out / "dataset", out / "embeddings" / "metadata"
    shards = read_parquets(images, "*.parquet")
    parts = read_parquets(dataset, "part-*.parquet")
    meta = read_parquets(metadata, "*.parquet")
    stats = [json.loads(p.read_text()) for p in sorted(dataset.glob("part-*_stats.json"))]
    assert parts.num_rows > 0 and stats
    threshold, drop_nsfw = stats[0]["similarity_threshold"], stats[0]["drop_nsfw"]
    assert all((s["similarity_threshold"], s["drop_nsfw"]) == (threshold, drop_nsfw) for s in stats)

    db = duckdb.connect()
    db.execute(f"CREATE VIEW shards AS SELECT * FROM read_parquet('{images}/*.parquet')")
    db.execute(f"CREATE VIEW dataset AS SELECT * FROM read_parquet('{dataset}/part-*.parquet')")
    db.execute(f"CREATE VIEW metadata AS SELECT * FROM read_parquet('{metadata}/*.parquet')")

    assert db.execute("SELECT count(*) FROM shards").fetchone()[0] == shards.num_rows
    assert db.execute("SELECT count(*) FROM dataset").fetchone()[0] == parts.num_rows
    status = dict(db.execute("SELECT status, count(*) FROM shards GROUP BY status").fetchall())
    assert status == {s: shards["status"].to_pylist().count(s) for s in set(shards["status"].to_pylist())}
    laion = ["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW", "similarity"]
    rows = db.execute(f"SELECT {', '.join(laion)} FROM dataset ORDER BY SAMPLE_ID").fetchall()
    assert rows == sorted(zip(*(parts[c].to_pylist() for c in laion), strict=True))

    # every dataset row joins the one success of its key in the shards: its URL, caption and original size
    caption = caption_column(shards.column_names)
    joined = db.execute(
        f"SELECT d.key, d.SAMPLE_ID, d.URL, d.TEXT, d.WIDTH, d.HEIGHT, s.uid, s.url, s.{caption}, s.original_width,"
        " s.original_height, s.status FROM dataset d JOIN shards s ON d.key = s.key ORDER BY d.key"
    ).fetchall()
    by_key = {row["key"]: row for row in shards.to_pylist()}
    assert len(by_key) == shards.num_rows  # keys unique across shards
    expected = []
    for row in sorted(parts.to_pylist(), key=lambda r: r["key"]):
        shard = by_key[row["key"]]
        fields = ("uid", "url", caption, "original_width", "original_height", "status")
        expected.append(
            (row["key"], row["SAMPLE_ID"], row["URL"], row["TEXT"], row["WIDTH"], row["HEIGHT"])
            + tuple(shard[f] for f in fields)
        )
    assert joined == expected
    assert all(r[1:4] == r[6:9] and r[4:6] == r[9:11] and r[11] == SUCCESS for r in joined)

    # LAION's filter over the metadata of every embedded sample gives exactly the dataset's rows
    flagged = "AND NSFW IS DISTINCT FROM 'NSFW'" if drop_nsfw else ""
    kept = db.execute(
        f"SELECT key FROM metadata WHERE similarity >= CAST(? AS FLOAT) {flagged} ORDER BY key", [threshold]
    ).fetchall()
    assert [k for (k,) in kept] == sorted(parts["key"].to_pylist())
    assert meta.num_rows > parts.num_rows  # the filter dropped some


HF_SCRIPT = """
import json, sys
from datasets import Features, Image, Json, Value, load_dataset
features = Features({"__key__": Value("string"), "__url__": Value("string"), "jpg": Image(), "txt": Value("string"),
                     "json": Json()})
ds = load_dataset("webdataset", data_files={"train": sys.argv[2:]}, split="train", cache_dir=sys.argv[1],
                  features=features)
rows = [
    {"url": r["__url__"], "key": r["__key__"], "size": list(r["jpg"].size), "txt": r["txt"], "json": r["json"]}
    for r in ds
]
print(json.dumps({"columns": ds.column_names, "image": type(ds.features["jpg"]).__name__, "rows": rows}))
"""


def load_with_datasets(tars: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    """Hugging Face datasets' packaged webdataset builder on `tars`, offline, its cache and home in tmp_path, in a
    process of its own (datasets reads its environment at import)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HOME=str(home))
    return subprocess.run(
        [sys.executable, "-c", HF_SCRIPT, str(tmp_path / "cache"), *map(str, tars)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_hugging_face_datasets_loads_the_shards(out, tmp_path):
    """load_dataset("webdataset", data_files=...) with the json column declared as datasets' Json: inferred (from
    the first five samples), a field of {key}.json that is null in all five and a string later (final_url, page_url,
    ...) fails the load ("Couldn't cast array of type string to null"), for img2dataset's shards as for ours."""
    expected = shard_successes(out)
    done = load_with_datasets(tars(out), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert {"__key__", "__url__", "jpg", "txt", "json"} <= set(loaded["columns"])
    assert loaded["image"] == "Image"
    got = {}
    for r in loaded["rows"]:
        url = r["url"].removeprefix("file://")
        assert (url, r["key"]) not in got, f"{r['key']} of {url} came twice"
        got[(url, r["key"])] = r
    assert got.keys() == expected.keys()
    for where, r in got.items():
        row = expected[where]
        assert tuple(r["size"]) == (row["width"], row["height"]), where
        assert r["txt"] == row["caption"], where
        assert (r["json"]["key"], r["json"]["url"], r["json"]["uid"]) == (row["key"], row["url"], str(row["uid"])), (
            where
        )
