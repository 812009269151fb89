"""tasks/search/search.py on a tiny index built by the real stages: scenes of the synthetic world with known
concepts, written as webdataset shards by the download stage's writer, embedded by the embed stage with the world's
tiny CLIP model, indexed by the index stage; a second crawl's embeddings folder is then added to the index."""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from PIL import Image

from clipcrawl.tasks.core.config import DownloadSettings, IndexSettings
from clipcrawl.tasks.core.uri import read_json, write_json
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shards import ShardWriter, sample_key
from clipcrawl.tasks.embed.stage import embed_shard
from clipcrawl.tasks.index.ids import write_ids
from clipcrawl.tasks.index.stage import SettingsMismatch, finish_index, index_modality, plan_index
from clipcrawl.tasks.search import search as search_module
from clipcrawl.tasks.search.search import NotFound, Searcher, format_results
from clipcrawl.tasks.world import tiny_clip
from clipcrawl.tasks.world.scenes import Scene, describe, encode_image, random_scene, render_scene
from clipcrawl.tasks.world.tiny_clip import embed_settings

RED_CIRCLES, BLUE_STARS, OTHERS = 12, 12, 32
DUPLICATES = 4  # crawl A's last rows: its first images again, under other URLs (stored in another format)
SHARD_SIZE = 30  # crawl A: two shards
SECOND_CRAWL = 16  # crawl B: one shard, whose keys are those of crawl A's first shard
FORMATS = ("jpg", "png", "webp")  # encode_format of the shards A/00000, A/00001, B/00000
EMBED = embed_settings(similarity_threshold=-1.0)  # every image is kept: ids follow the scenes
SETTINGS = IndexSettings(
    index_key="IVF4,Flat",  # exercises the tuned search "params"
    target_recall=1.0,
    queries=50,
    near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD,
)


@dataclass
class Fixture:
    """What the test index holds, by id: crawl A's samples (two shards), then crawl B's (one shard), added later."""

    dir: Path
    scenes: list[Scene]
    captions: list[str]
    images: list[bytes] = field(default_factory=list)  # as stored in the shard's tar
    exts: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # the shard's name in the index (ids.parquet `shard`)
    tars: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # near-duplicate group: the first id of the scene
    duplicates: list[int] = field(default_factory=list)  # the ids of the copies
    first_of_b: int = 0
    infos: dict = field(default_factory=dict)

    def concept(self, i: int) -> tuple[str, str]:
        return self.scenes[i].colour, self.scenes[i].shape


def _scenes(rng: random.Random, concepts: bool = True, others: int = OTHERS) -> list[Scene]:
    def scene(shape: str | None, colour: str | None) -> Scene:
        while True:
            s = random_scene(rng, flagged_rate=0)
            if shape and colour:
                s = Scene(shape, colour, s.count, s.background, s.size, s.layout_seed)
                if s.background != colour:
                    return s
            elif (s.colour, s.shape) not in (("red", "circle"), ("blue", "star")):
                return s

    scenes = []
    if concepts:
        scenes += [scene("circle", "red") for _ in range(RED_CIRCLES)] + [
            scene("star", "blue") for _ in range(BLUE_STARS)
        ]
    return scenes + [scene(None, None) for _ in range(others)]


def write_crawl(fx: Fixture, out: Path, first: int, count: int, formats: tuple[str, ...]) -> None:
    """OUT/images/ (the download stage's shards, SHARD_SIZE samples each) of fx.scenes[first:first+count] served as JPEG,
    then OUT/embeddings/ and OUT/dataset/ of each shard by the embed stage; records where each sample landed."""
    for n, start in enumerate(range(0, count, SHARD_SIZE)):
        download = DownloadSettings(encode_format=formats[n])
        with ShardWriter(str(out), n, download) as writer:
            for row in range(start, min(start + SHARD_SIZE, count)):
                i = first + row
                body = encode_image(render_scene(fx.scenes[i]), "jpg")
                sample = {"key": sample_key(n, row - start), "uid": i, "url": f"https://img.example/{i}.jpg"}
                writer.add(sample | {"caption": fx.captions[i]}, process_image(body, download))
        embed_shard(writer.shard_uri, str(out), EMBED)
        with tarfile.open(writer.shard_uri) as tar:
            for row in range(start, min(start + SHARD_SIZE, count)):
                key = sample_key(n, row - start)
                fx.images.append(tar.extractfile(f"{key}.{formats[n]}").read())
                fx.exts.append(formats[n])
                fx.keys.append(key)
                fx.tars.append(writer.shard_uri)


def index(embeddings: Path, out: Path, settings: IndexSettings) -> dict:
    """The index stage's plain functions, as the build_index flow runs them."""
    plan = plan_index(str(embeddings), str(out), settings)
    return finish_index(plan, index_modality(plan, "image"), index_modality(plan, "text"))


def build_index(out: Path, seed: int = 0) -> Fixture:
    """Two crawls, A and B, downloaded and embedded by the real stages; A indexed into A/index/, then B's
    embeddings folder added to it (an incremental add, with no settings given: the index's own)."""
    rng = random.Random(f"search-test:{seed}")
    scenes = _scenes(rng)
    rng.shuffle(scenes)
    scenes += scenes[:DUPLICATES]
    second = _scenes(rng, concepts=False, others=SECOND_CRAWL)
    fx = Fixture(out / "a" / "index", scenes + second, [describe(s, rng) for s in scenes + second])
    fx.first_of_b = len(scenes)
    fx.duplicates = list(range(len(scenes) - DUPLICATES, len(scenes)))
    write_crawl(fx, out / "a", 0, len(scenes), FORMATS[:2])
    write_crawl(fx, out / "b", len(scenes), len(second), FORMATS[2:])
    index(out / "a" / "embeddings", out / "a", SETTINGS)
    fx.infos = index(out / "b" / "embeddings", out / "a", IndexSettings())
    fx.shards = [s["name"] for s in fx.infos["shards"] for _ in range(s["count"])]
    fx.groups = [i - fx.duplicates[0] if i in fx.duplicates else i for i in range(len(fx.scenes))]
    return fx


@pytest.fixture(scope="module")
def searcher(fx, model) -> Searcher:
    return Searcher(str(fx.dir), model=model)


def test_the_add_kept_the_index_settings(fx, searcher):
    """B was added with no settings given (as `clipcrawl index` without flags): the index's own were used, not the
    defaults (near_duplicate_threshold 0.96), and the near-duplicates are the copies."""
    assert "add_s" in fx.infos["image"] and fx.infos["count"] == len(fx.scenes) == searcher.count
    assert [s["name"] for s in fx.infos["shards"]] == ["00000", "00001", "1-00000"]
    assert fx.infos["settings"] == SETTINGS.model_dump(mode="json")
    assert (
        fx.infos["near_duplicates"]["threshold"]
        == tiny_clip.NEAR_DUPLICATE_THRESHOLD
        != IndexSettings().near_duplicate_threshold
    )
    assert [r["duplicate_group"] for r in searcher.ids.lookup(range(len(fx.scenes)))] == fx.groups


def test_an_add_with_other_index_rules_is_refused(fx):
    a, b = fx.dir.parent, fx.dir.parent.parent / "b"
    with pytest.raises(SettingsMismatch) as refused:
        plan_index(str(b / "embeddings"), str(a), IndexSettings(near_duplicate_threshold=0.96))
    assert str(refused.value) == (
        f"{fx.dir}/index_infos.json: cannot add with near_duplicate_threshold 0.96 (the index was built with "
        f"{tiny_clip.NEAR_DUPLICATE_THRESHOLD}): leave it unset to use the index's, or rebuild the index (--rebuild)"
    )
    # the same value given explicitly, another tuning target and this machine's threads: taken
    given = IndexSettings(near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD, target_recall=0.9, threads=1)
    plan = plan_index(str(b / "embeddings"), str(a), given)
    assert plan.mode == "none" and plan.settings == SETTINGS.model_copy(update={"target_recall": 0.9, "threads": 1})
    assert plan_index(str(b / "embeddings"), str(a), given, rebuild=True).settings == given


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
    assert fx.infos["text"]["params"].startswith("nprobe=")
    assert f"nprobe={searcher.indices['text'].nprobe}" == fx.infos["text"]["params"]  # the tuned params applied
    results = searcher.search(text="red circles", k=10, modality="text")
    assert sum(fx.concept(r["id"]) == ("red", "circle") for r in results) >= 8


def test_image_query_finds_itself_first(fx, searcher):
    for i in (5, 40, fx.first_of_b + 3):  # both crawls
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
    for r in (searcher.search(text="red circles", k=1)[0], searcher.search(image=fx.images[-1], k=1)[0]):
        i = r["id"]
        assert r == {
            "id": i,
            "key": fx.keys[i],
            "url": f"https://img.example/{i}.jpg",
            "caption": fx.captions[i],
            "similarity": r["similarity"],
            "shard": fx.shards[i],
            "duplicate_group": fx.groups[i],
        }
        assert 0 < r["similarity"] <= 1 + 1e-3  # cosine of float16 embeddings
    assert searcher.search(image=fx.images[-1], k=1)[0]["id"] == len(fx.scenes) - 1
    assert fx.shards[-1] == "1-00000" and fx.keys[-1].startswith("00000")  # B's shard: A's shard 00000's keys


def test_deduplicate_keeps_one_per_group_and_fills_k(fx, searcher):
    dup = fx.duplicates[-1]  # a copy, stored as PNG, of id fx.groups[dup] (stored as JPEG)
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


def fetches_of(searcher: Searcher, monkeypatch) -> list[int]:
    """The candidate counts the searcher's kNN searches ask for, as they happen."""
    fetches, knn = [], searcher._knn
    monkeypatch.setattr(searcher, "_knn", lambda index, query, k: fetches.append(k) or knn(index, query, k))
    return fetches


def test_deduplicate_searches_deeper_until_k_groups(fx, model, tmp_path, monkeypatch):
    # All rows but the query's 14 farthest in one group: the first k * 4 candidates hold one group, so the search
    # must go deeper.
    index_dir = tmp_path / "index"
    shutil.copytree(fx.dir, index_dir)
    n = len(fx.scenes)
    original = Searcher(str(fx.dir), model=model)
    big = {r["id"] for r in original.search(text="a yellow square", k=n)[:-14]}
    first = min(big)
    groups = [first if i in big else i for i in range(n)]
    tables = [
        pa.Table.from_pylist([{**row, "duplicate_group": groups[row["id"]]} for row in original.ids.lookup(range(n))])
    ]
    write_ids(str(index_dir / "ids.parquet"), tables)
    searcher = Searcher(str(index_dir), model=model)
    fetches = fetches_of(searcher, monkeypatch)
    results = searcher.search(text="a yellow square", k=12, deduplicate=True)
    assert len(results) == 12 and len({r["duplicate_group"] for r in results}) == 12
    assert sum(r["duplicate_group"] == first for r in results) == 1
    assert fetches == [48, n]  # k * 4, then deeper: the whole index (n < k * DEDUP_DEPTH)
    assert all(set(r) == set(results[0]) and r["caption"] == fx.captions[r["id"]] for r in results)
    fetches.clear()
    monkeypatch.setattr(search_module, "DEDUP_DEPTH", 4)  # the cap: k * 4 candidates at most
    capped = searcher.search(text="a yellow square", k=12, deduplicate=True)
    assert fetches == [48]
    first_48 = searcher.search(text="a yellow square", k=48)
    assert len(capped) == len({r["duplicate_group"] for r in first_48}) == 1  # the groups among those only
    everything = searcher.search(text="a yellow square", k=100, deduplicate=True)  # only 15 groups exist
    assert len(everything) == 15
    assert len(searcher.search(text="a yellow square", k=100)) == n  # k > count: all of them


def tar_member(tar_path: str, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        return tar.extractfile(name).read()


def test_thumbnail_is_the_tar_member_of_its_shard(fx, searcher):
    """Crawl B's shard has crawl A's first shard's stem and keys: each sample's thumbnail comes from its own tar."""
    mimes = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
    b = fx.first_of_b
    ids = (0, 3, 29, 30, 33, fx.duplicates[-1], b, b + 3, len(fx.scenes) - 1)  # every shard, every format
    assert fx.keys[0] == fx.keys[b] and fx.tars[0] != fx.tars[b]
    for i in ids:
        data, mime = searcher.thumbnail(i)
        assert data == tar_member(fx.tars[i], f"{fx.keys[i]}.{fx.exts[i]}"), (i, fx.shards[i])
        assert mime == mimes[fx.exts[i]]
    assert searcher.thumbnail(0)[0] != searcher.thumbnail(b)[0]
    with pytest.raises(NotFound, match="out of range"):
        searcher.thumbnail(len(fx.scenes))


def test_thumbnail_of_a_missing_member(fx, model, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(fx.dir, index_dir)
    infos = read_json(str(index_dir / "index_infos.json"))
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    infos["shards"][1]["tar"] = str(empty)  # the shard's tar was replaced since it was indexed
    write_json(str(index_dir / "index_infos.json"), infos)
    searcher = Searcher(str(index_dir), model=model)
    assert searcher.thumbnail(0)[0] == fx.images[0]
    with pytest.raises(NotFound, match=r"id 30: no image member 000010000\.jpg\|jpeg\|webp\|png in .*empty\.tar"):
        searcher.thumbnail(30)


def test_remote_index(fx, model):
    # Any fsspec URI: the indices are streamed into memory (as local ones are read), ids and tars through open_uri.
    mem = fsspec.filesystem("memory")
    for name in ("image.index", "text.index", "ids.parquet"):
        mem.pipe(f"/search-test/index/{name}", (fx.dir / name).read_bytes())
    infos = read_json(str(fx.dir / "index_infos.json"))
    for shard in infos["shards"]:
        remote = f"memory://search-test/{shard['name']}/{Path(shard['tar']).name}"
        mem.pipe(remote, Path(shard["tar"]).read_bytes())
        shard["tar"] = remote
    write_json("memory://search-test/index/index_infos.json", infos)
    try:
        searcher = Searcher("memory://search-test/index", model=model)
        results = searcher.search(text="red circles", k=10, modality="text")
        assert sum(fx.concept(r["id"]) == ("red", "circle") for r in results) >= 8
        assert searcher.thumbnail(31) == (fx.images[31], "image/png")
        assert searcher.thumbnail(fx.first_of_b) == (fx.images[fx.first_of_b], "image/webp")
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
