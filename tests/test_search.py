"""tasks/search/search.py on a tiny index of the synthetic world: two webdataset shards of scenes with known
concepts, embedded by the world's tiny CLIP model, indexed exactly with faiss."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import fsspec
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipcrawl.tasks.embed.clip_model import load_model
from clipcrawl.tasks.index.ids import write_ids
from clipcrawl.tasks.search.search import NotFound, Searcher, format_results
from clipcrawl.tasks.world.scenes import Scene, describe, encode_image, random_scene, render_scene
from clipcrawl.tasks.world.tiny_clip import embed_settings

RED_CIRCLES, BLUE_STARS, OTHERS = 12, 12, 32
DUPLICATES = 4  # the last rows: re-encodings of the first red circles, in their duplicate groups
SHARD_ROWS = 30
FORMATS = ("jpg", "jpg", "jpg", "png", "webp")  # member extension by id % 5


@dataclass
class Fixture:
    """What the test index holds, by id."""

    dir: Path
    scenes: list[Scene]
    captions: list[str]
    images: list[bytes]
    exts: list[str]
    groups: list[int]
    tars: dict[str, str] = field(default_factory=dict)

    def concept(self, i: int) -> tuple[str, str]:
        return self.scenes[i].colour, self.scenes[i].shape


def _scenes(rng: random.Random) -> list[Scene]:
    def scene(shape: str | None, colour: str | None) -> Scene:
        while True:
            s = random_scene(rng, flagged_rate=0)
            if shape and colour:
                s = Scene(shape, colour, s.count, s.background, s.size, s.layout_seed)
                if s.background != colour:
                    return s
            elif (s.colour, s.shape) not in (("red", "circle"), ("blue", "star")):
                return s

    scenes = [scene("circle", "red") for _ in range(RED_CIRCLES)] + [scene("star", "blue") for _ in range(BLUE_STARS)]
    scenes += [scene(None, None) for _ in range(OTHERS)]
    return scenes


def build_index(out: Path, model, seed: int = 0) -> Fixture:
    """OUT/images/0000{0,1}.tar and OUT/index/ (image.index, text.index, ids.parquet, index_infos.json)."""
    rng = random.Random(f"search-test:{seed}")
    scenes = _scenes(rng)
    rng.shuffle(scenes)
    scenes += scenes[:DUPLICATES]  # exact scenes again, encoded at another size: near-duplicates
    captions = [describe(s, rng) for s in scenes]
    images, exts, groups = [], [], []
    for i, s in enumerate(scenes):
        dup = i >= len(scenes) - DUPLICATES
        ext = FORMATS[i % len(FORMATS)]
        images.append(encode_image(render_scene(s, (200, 200) if dup else (256, 256)), ext))
        exts.append(ext)
        groups.append(i - (len(scenes) - DUPLICATES) if dup else i)
    fx = Fixture(out / "index", scenes, captions, images, exts, groups)

    (out / "images").mkdir(parents=True)
    tables = []
    for first in range(0, len(scenes), SHARD_ROWS):
        stem = f"{first // SHARD_ROWS:05d}"
        tar_path = out / "images" / f"{stem}.tar"
        rows = range(first, min(first + SHARD_ROWS, len(scenes)))
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for i in rows:
                key = f"{stem}{i - first:04d}"
                meta = json.dumps({"key": key, "caption": captions[i]}).encode()
                for name, data in (
                    (f"{key}.{exts[i]}", images[i]),
                    (f"{key}.txt", captions[i].encode()),
                    (f"{key}.json", meta),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        fx.tars[stem] = str(tar_path)
        tables.append(
            pa.table(
                {
                    "key": [f"{stem}{i - first:04d}" for i in rows],
                    "shard": [stem] * len(rows),
                    "row": [i - first for i in rows],
                    "url": [f"https://img.example/{i}.{exts[i]}" for i in rows],
                    "text": [captions[i] for i in rows],
                    "similarity": [0.4] * len(rows),
                    "duplicate_group": [groups[i] for i in rows],
                }
            )
        )

    pixels = torch.from_numpy(np.stack([model.prepare(Image.open(io.BytesIO(b))) for b in images]))
    img_emb, txt_emb = model.encode_images(pixels), model.encode_texts(captions)
    fx.dir.mkdir()
    d = img_emb.shape[1]
    image_index = faiss.IndexFlatIP(d)
    image_index.add(img_emb)
    text_index = faiss.index_factory(d, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)  # exercises "params"
    text_index.train(txt_emb)
    text_index.add(txt_emb)
    faiss.write_index(image_index, str(fx.dir / "image.index"))
    faiss.write_index(text_index, str(fx.dir / "text.index"))
    write_ids(str(fx.dir / "ids.parquet"), tables)
    settings = embed_settings()
    infos = {
        "dim": d,
        "count": len(scenes),
        "clip": {"model": settings.model, "pretrained": settings.pretrained, "checkpoint": settings.checkpoint},
        "shards": [
            {"stem": stem, "tar": tar, "rows": len(t), "first_id": n * SHARD_ROWS}
            for n, ((stem, tar), t) in enumerate(zip(fx.tars.items(), tables))
        ],
        "image": {"index_key": "Flat", "params": "", "k": 10, "recall_at_k": 1.0},
        "text": {"index_key": "IVF4,Flat", "params": "nprobe=4", "k": 10, "recall_at_k": 1.0},
        "near_duplicates": {"threshold": 0.96, "groups": len(set(groups)), "duplicates": DUPLICATES, "dropped": False},
    }
    (fx.dir / "index_infos.json").write_text(json.dumps(infos))
    return fx


@pytest.fixture(scope="module")
def model():
    return load_model(embed_settings())


@pytest.fixture(scope="module")
def fx(tmp_path_factory, model) -> Fixture:
    return build_index(tmp_path_factory.mktemp("search"), model)


@pytest.fixture(scope="module")
def searcher(fx, model) -> Searcher:
    return Searcher(str(fx.dir), model=model)


def test_text_query_finds_the_concept(fx, searcher):
    for text, concept in (("red circles", ("red", "circle")), ("a photo of blue stars", ("blue", "star"))):
        results = searcher.search(text=text, k=10)
        assert len(results) == 10
        hits = [fx.concept(r["id"]) == concept for r in results]
        assert sum(hits) >= 8, (text, [fx.captions[r["id"]] for r in results])
        assert hits[0], (text, fx.captions[results[0]["id"]])
        sims = [r["similarity"] for r in results]
        assert sims == sorted(sims, reverse=True)


def test_text_query_on_the_caption_index(fx, searcher):
    assert searcher.indices["text"].nprobe == 4  # index_infos.json "params" applied
    results = searcher.search(text="red circles", k=10, modality="text")
    assert sum(fx.concept(r["id"]) == ("red", "circle") for r in results) >= 8


def test_image_query_finds_itself_first(fx, searcher):
    for i in (5, 40):
        results = searcher.search(image=fx.images[i], k=5)
        assert results[0]["id"] == i
        assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert results[1]["similarity"] < 0.999


def test_a_query_photo_with_an_exif_orientation_is_turned_upright(fx, searcher):
    """A camera stores a portrait photo sideways with an EXIF orientation; the query is turned upright,
    as the download stage turns the images it stores."""
    i = 5
    upright = Image.open(io.BytesIO(fx.images[i])).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6: view it turned 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    sideways.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    assert searcher.search(image=buf.getvalue(), k=1)[0]["id"] == i
    plain = io.BytesIO()
    sideways.save(plain, "JPEG", quality=95)  # the same pixels without the tag: the sideways scene
    assert (
        searcher.search(image=plain.getvalue(), k=1)[0]["similarity"]
        < searcher.search(image=buf.getvalue(), k=1)[0]["similarity"]
    )


def test_result_fields_come_from_the_id_table(fx, searcher):
    r = searcher.search(text="red circles", k=1)[0]
    i, first = r["id"], (r["id"] // 30) * 30
    assert r == {
        "id": i,
        "key": f"{i // 30:05d}{i - first:04d}",
        "url": f"https://img.example/{i}.{fx.exts[i]}",
        "caption": fx.captions[i],
        "similarity": r["similarity"],
        "shard": f"{i // 30:05d}",
        "duplicate_group": fx.groups[i],
    }
    assert 0 < r["similarity"] <= 1


def test_deduplicate_keeps_one_per_group_and_fills_k(fx, searcher):
    dup = len(fx.scenes) - 1  # a re-encoded copy of id fx.groups[dup]
    original = fx.groups[dup]
    plain = searcher.search(image=fx.images[original], k=10)
    assert {plain[0]["id"], plain[1]["id"]} == {original, dup}  # the two copies lead
    deduped = searcher.search(image=fx.images[original], k=10, deduplicate=True)
    assert len(deduped) == 10
    groups = [r["duplicate_group"] for r in deduped]
    assert len(set(groups)) == 10 and groups.count(original) == 1
    assert deduped[0]["id"] == plain[0]["id"]
    first_of_group = {}
    for r in searcher.search(image=fx.images[original], k=len(fx.scenes)):
        first_of_group.setdefault(r["duplicate_group"], r["id"])
    assert [r["id"] for r in deduped] == list(first_of_group.values())[:10]


def test_deduplicate_searches_deeper_until_k_groups(fx, model, tmp_path):
    # Most rows in one group: the first k * 4 candidates hold few groups, so the search must go deeper.
    index_dir = tmp_path / "index"
    shutil.copytree(fx.dir, index_dir)
    n = len(fx.scenes)
    big = set(range(n - 14))
    groups = [0 if i in big else i for i in range(n)]
    tables = [
        pa.Table.from_pylist(
            [
                {**row, "duplicate_group": groups[row["id"]]}
                for row in Searcher(str(fx.dir), model=model).ids.lookup(range(n))
            ]
        )
    ]
    write_ids(str(index_dir / "ids.parquet"), tables)
    searcher = Searcher(str(index_dir), model=model)
    results = searcher.search(text="a yellow square", k=12, deduplicate=True)
    assert len(results) == 12 and len({r["duplicate_group"] for r in results}) == 12
    assert sum(r["duplicate_group"] == 0 for r in results) == 1
    everything = searcher.search(text="a yellow square", k=100, deduplicate=True)  # only 15 groups exist
    assert len(everything) == 15
    assert len(searcher.search(text="a yellow square", k=100)) == n  # k > count: all of them


def test_thumbnail_is_the_tar_member(fx, searcher):
    mimes = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
    for i in (0, 3, 4, 29, 30, 33, len(fx.scenes) - 1):  # both shards, every format
        data, mime = searcher.thumbnail(i)
        assert data == fx.images[i]
        assert mime == mimes[fx.exts[i]]
    with pytest.raises(NotFound, match="out of range"):
        searcher.thumbnail(len(fx.scenes))


def test_thumbnail_of_a_missing_member(fx, model, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(fx.dir, index_dir)
    infos = json.loads((index_dir / "index_infos.json").read_text())
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    infos["shards"][1]["tar"] = str(empty)
    (index_dir / "index_infos.json").write_text(json.dumps(infos))
    searcher = Searcher(str(index_dir), model=model)
    assert searcher.thumbnail(0)[0] == fx.images[0]
    with pytest.raises(NotFound, match=r"no image member 000010000\.jpg.*empty\.tar"):
        searcher.thumbnail(30)


def test_remote_index(fx, model):
    # Any fsspec URI: the indices are streamed into memory (as local ones are read), ids and tars through open_uri.
    mem = fsspec.filesystem("memory")
    for name in ("image.index", "text.index", "ids.parquet"):
        mem.pipe(f"/search-test/index/{name}", (fx.dir / name).read_bytes())
    infos = json.loads((fx.dir / "index_infos.json").read_text())
    for shard in infos["shards"]:
        remote = f"memory://search-test/images/{shard['stem']}.tar"
        mem.pipe(remote, Path(shard["tar"]).read_bytes())
        shard["tar"] = remote
    mem.pipe("/search-test/index/index_infos.json", json.dumps(infos).encode())
    try:
        searcher = Searcher("memory://search-test/index", model=model)
        results = searcher.search(text="red circles", k=10, modality="text")
        assert sum(fx.concept(r["id"]) == ("red", "circle") for r in results) >= 8
        assert searcher.thumbnail(31) == (fx.images[31], "image/jpeg")
    finally:
        mem.rm("/search-test", recursive=True)


def test_model_is_loaded_from_index_infos(fx):
    searcher = Searcher(str(fx.dir))  # no model given: index_infos.json "clip" names it
    assert searcher._model is None
    results = searcher.search(text="red circles", k=10)
    assert sum(fx.concept(r["id"]) == ("red", "circle") for r in results) >= 8
    assert searcher.model.name == embed_settings().checkpoint


def test_bad_queries_name_the_reason(fx, searcher):
    with pytest.raises(ValueError, match="exactly one of a text or an image query"):
        searcher.search()
    with pytest.raises(ValueError, match=r"exactly one .* \(got both\)"):
        searcher.search(text="red circles", image=fx.images[0])
    with pytest.raises(ValueError, match="cannot decode the query image: "):
        searcher.search(image=b"not an image at all")
    with pytest.raises(ValueError, match="cannot decode the query image: "):
        searcher.search(image=fx.images[0][: len(fx.images[0]) // 3])  # a cut-off JPEG
    with pytest.raises(ValueError, match=r"cannot decode the query image: it is empty"):
        searcher.search(image=b"")
    with pytest.raises(ValueError, match="the text query is empty"):
        searcher.search(text="  ")
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        searcher.search(text="red circles", modality="audio")
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            searcher.search(text="red circles", k=k)


def test_missing_index_files_are_named(fx, model, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not an index directory.*index_infos\.json"):
        Searcher(str(tmp_path / "nowhere"))
    for name in ("text.index", "ids.parquet"):
        index_dir = tmp_path / f"without-{name}"
        shutil.copytree(fx.dir, index_dir)
        (index_dir / name).unlink()
        with pytest.raises(FileNotFoundError, match=rf"without-{name}/{name} does not exist"):
            Searcher(str(index_dir), model=model)


def test_format_results():
    results = [
        {
            "id": 3,
            "key": "000000003",
            "url": "https://a.example/x.jpg",
            "caption": "a red\ncircle",
            "similarity": 0.31234,
            "shard": "00000",
            "duplicate_group": 3,
        }
    ]
    assert format_results(results) == "0.3123\t000000003\ta red circle\thttps://a.example/x.jpg"
