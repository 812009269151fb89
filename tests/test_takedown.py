"""The takedown flow on a real pipeline output of the synthetic world (the session's `pipeline`, copied, then
indexed and reported): afterwards no file under OUT holds the sample's URL, caption, image bytes or sha256 (parquet
files read as values, Prefect result files decoded), search never returns it, rows stay aligned, a repeated
takedown changes nothing, and neither an incremental index add nor a re-download brings it back."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import shutil
import tarfile

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.flows.index import build_index
from clipcrawl.flows.runner import task_runner
from clipcrawl.flows.takedown import takedown
from clipcrawl.tasks.core.config import IndexSettings, ReportSettings
from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.report.stage import finish_report, report_shards, shard_summary
from clipcrawl.tasks.search.search import Searcher
from clipcrawl.tasks.takedown import log
from clipcrawl.tasks.takedown.derived import _decoded
from clipcrawl.tasks.takedown.match import read_list, request
from clipcrawl.tasks.takedown.rewrite import remove_vectors
from clipcrawl.tasks.world import tiny_clip

SETTINGS = IndexSettings(queries=100, near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD)


def index(dask_address, out, embeddings):
    flow = build_index.with_options(task_runner=task_runner(dask_address))
    state = flow(embeddings=str(embeddings), out=str(out), settings=SETTINGS, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def every_text(path) -> bytes:
    """A file's bytes, plus what they hold as values: a parquet file's cells, a result file's serialised value."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        data += json.dumps(table.to_pylist(), default=str, ensure_ascii=False).encode()
    return data + _decoded(data)


def holders(out, needles: dict[str, bytes]) -> list[str]:
    return [
        f"{what} in {path.relative_to(out)}"
        for path in sorted(p for p in out.rglob("*") if p.is_file())
        for what, needle in needles.items()
        if needle in every_text(path)
    ]


def pick(out):
    """A kept, indexed sample shown in the report (a thumbnail with its caption) whose URL and caption no other
    image's sample contains (so that their absence afterwards means the takedown removed them, not that nothing
    else held them)."""
    ids = pq.read_table(out / "index" / "ids.parquet").to_pylist()
    images = [r for p in sorted((out / "images").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    report = (out / "report" / "index.html").read_text()
    for row in ids:
        if html.escape(row["caption"]) not in report:
            continue
        sha = next(r["sha256"] for r in images if r["url"] == row["url"])
        others = [r for r in images if r["sha256"] != sha]
        if not any(row["url"] in (r["url"] or "") or row["caption"] in (r["caption"] or "") for r in others):
            return row, sha
    pytest.fail("no sample with a unique URL and caption")


def snapshot(out) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def taken(dask_address, pipeline, tmp_path_factory):
    """OUT of the pipeline with an index and a report, one sample taken down by URL: (OUT, the sample, ...)."""
    out = tmp_path_factory.mktemp("takedown") / "out"
    shutil.copytree(pipeline[0], out)
    index(dask_address, out, out / "embeddings")
    settings = ReportSettings()
    finish_report(str(out), [shard_summary(str(out), s, settings) for s in report_shards(str(out))], settings)
    sample, sha = pick(out)
    pristine = tmp_path_factory.mktemp("takedown") / "pristine"  # OUT before the takedown, for the tests that redo it
    shutil.copytree(out, pristine, symlinks=True)
    with tarfile.open(out / "images" / f"{sample['shard']}.tar") as tar:
        image = tar.extractfile(f"{sample['key']}.jpg").read()
    vector = np.load(out / "embeddings" / "img_emb" / f"img_emb_{sample['shard']}.npy")[sample["row"]]
    needles = {
        "url": sample["url"].encode(),
        "caption": sample["caption"].encode(),
        "sha256": sha.encode(),
        "image": image,
        "embedding": vector.tobytes(),
        "indexed embedding": vector.astype(np.float32).tobytes(),
    }
    part = pq.read_table(out / "dataset" / f"part-{sample['shard']}.parquet").to_pylist()
    sample["SAMPLE_ID"] = next(r["SAMPLE_ID"] for r in part if r["key"] == sample["key"])
    assert {"url", "caption", "image"} <= {h.split(" ")[0] for h in holders(out, needles)}  # the check can fail
    assert "caption in report/index.html" in holders(out, needles)  # the sample is a thumbnail of the report
    before = {p.name for p in (out / "_results").iterdir()}
    result = takedown(out=str(out), urls=[" " + sample["url"] + "\n"], reason="rights holder request 7")
    return out, sample, image, needles, result, before, pristine


def test_no_file_holds_the_sample_afterwards(taken):
    out, _, _, needles, result, before, _ = taken
    assert not result["noop"] and result["rows"] > 0
    assert holders(out, needles) == []
    assert {p.name for p in (out / "_results").iterdir()} <= before  # result files deleted, none written


def test_search_never_returns_it(taken):
    out, sample, image, *_ = taken
    searcher = Searcher(str(out / "index"))
    k = searcher.count
    for found in (
        searcher.search(image=image, k=k),
        searcher.search(text=sample["caption"], k=k, modality="text"),
        searcher.search(text=sample["caption"], k=k),
    ):
        assert len(found) == k and sample["url"] not in {r["url"] for r in found}


def test_rows_stay_aligned(taken):
    aligned(taken[0])


def aligned(out):
    """Row i of each embeddings file, ids.parquet and both indices, and the dataset's marks, stay one sample."""
    ids = pq.read_table(out / "index" / "ids.parquet")
    infos = json.loads((out / "index" / "index_infos.json").read_text())
    assert infos["count"] == len(ids) == sum(s["count"] for s in infos["shards"])
    for modality in ("image", "text"):
        assert faiss.read_index(str(out / "index" / f"{modality}.index")).ntotal == len(ids)
    for meta in (out / "embeddings" / "metadata").glob("*.parquet"):
        stem = meta.stem.removeprefix("metadata_")
        keys = pq.read_table(meta)["key"].to_pylist()
        img = np.load(out / "embeddings" / "img_emb" / f"img_emb_{stem}.npy")
        assert len(img) == len(np.load(out / "embeddings" / "text_emb" / f"text_emb_{stem}.npy")) == len(keys)
        mine = ids.filter(pa.compute.equal(ids["shard"], stem))
        assert [keys[r] for r in mine["row"].to_pylist()] == mine["key"].to_pylist()
        stored = faiss.read_index(str(out / "index" / "image.index"))
        first = next(s["first_id"] for s in infos["shards"] if s["name"] == stem)
        if len(mine):
            np.testing.assert_allclose(
                stored.reconstruct(first), img[mine["row"][0].as_py()].astype(np.float32), atol=1e-3
            )
    groups = ids["duplicate_group"].to_numpy()
    assert (groups <= np.arange(len(ids))).all() and (groups[groups] == groups).all()  # roots are ids of the index
    at = {k: i for i, k in enumerate(ids["key"].to_pylist())}
    for part in (out / "dataset").glob("part-*.parquet"):
        for row in pq.read_table(part).to_pylist():
            assert row["duplicate_group"] == groups[at[row["key"]]]
            assert row["near_duplicate"] == (groups[at[row["key"]]] != at[row["key"]])


def test_the_log_records_it_hashed(taken):
    out, sample, *_ = taken
    entries = log.read_log(str(out))
    assert len(entries) == 1 and entries[0]["reason"] == "rights holder request 7"
    assert log.digest(sample["url"]) in entries[0]["url_sha256"]
    assert entries[0]["files"]["index/ids.parquet"] >= 1 and "images/" + sample["shard"] + ".tar" in entries[0]["files"]
    assert log.tombstones(str(out)).holds(sample["url"])


def test_a_second_takedown_changes_nothing(taken):
    out, sample, *_ = taken
    before = snapshot(out)
    again = takedown(out=str(out), urls=[sample["url"]], reason="again")
    assert again["noop"] and again["files"] == 0
    assert snapshot(out) == before


def test_an_incremental_add_does_not_bring_it_back(dask_address, pipeline, taken, tmp_path):
    """A later embeddings folder still holding the sample (its shard as first embedded) is added to the index."""
    out, sample, _, needles, *_ = taken
    later = tmp_path / "later"
    for folder, name in (
        ("embeddings/img_emb", "img_emb_{}.npy"),
        ("embeddings/text_emb", "text_emb_{}.npy"),
        ("embeddings/metadata", "metadata_{}.parquet"),
        ("dataset", "part-{}.parquet"),
    ):
        (later / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(pipeline[0] / folder / name.format(sample["shard"]), later / folder / name.format(sample["shard"]))
    count = pq.read_metadata(out / "index" / "ids.parquet").num_rows
    grown = index(dask_address, out, later / "embeddings")
    assert grown["count"] > count  # the shard's other samples were added
    urls = pq.read_table(out / "index" / "ids.parquet")["url"].to_pylist()
    assert sample["url"] not in urls
    assert holders(out / "index", {"url": needles["url"], "caption": needles["caption"]}) == []


def test_a_redownload_skips_it(taken, tmp_path):
    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.download.shards import ShardSpec
    from clipcrawl.tasks.download.stage import download_shard

    out, sample, *_ = taken
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": [sample["url"]], "caption": [sample["caption"]]}), pairs)
    again = tmp_path / "again"
    shutil.copytree(out / "takedown", again / "takedown")
    stats = download_shard(ShardSpec(0, ((str(pairs), 0, 1),)), str(again), DownloadSettings(shard_size=10))
    assert stats["status"] == {"taken_down": 1}
    assert holders(again, {"url": sample["url"].encode(), "caption": sample["caption"].encode()}) == []


def test_a_reembed_drops_it(pipeline, taken, tmp_path):
    """The shard as downloaded before the takedown, embedded again under OUT's tombstones."""
    from clipcrawl.tasks.embed.stage import embed_shard

    out, sample, *_ = taken
    again = tmp_path / "again"
    (again / "images").mkdir(parents=True)
    for name in (f"{sample['shard']}.tar", f"{sample['shard']}.parquet", f"{sample['shard']}_stats.json"):
        shutil.copy(pipeline[0] / "images" / name, again / "images" / name)
    shutil.copytree(out / "takedown", again / "takedown")
    stats = embed_shard(str(again / "images" / f"{sample['shard']}.tar"), str(again), tiny_clip.embed_settings())
    assert stats["status"]["taken_down"] >= 1 and stats["embedded"] > 0
    for folder in ("embeddings", "dataset"):
        assert holders(again / folder, {"url": sample["url"].encode(), "caption": sample["caption"].encode()}) == []


def test_a_rerun_of_the_stages_still_works(dask_address, taken):
    from tests.helpers import embed

    out, sample, _, needles, *_ = taken
    state = embed(dask_address, out, batch_size=64)
    assert state.is_completed(), state.message
    assert holders(out / "embeddings", {"url": needles["url"]}) == []


def test_requests_and_lists(tmp_path):
    text = tmp_path / "list.txt"
    text.write_text("# takedowns\nhttps://a.test/x.jpg\n\n 123 \n000000042\n")
    assert read_list(str(text)) == (["https://a.test/x.jpg"], ["123", "000000042"])
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"URL": ["https://b.test/y.png", None], "SAMPLE_ID": [None, 7]}), table)
    assert read_list(str(table)) == (["https://b.test/y.png"], [7])
    csv = tmp_path / "list.csv"
    csv.write_text("url,note\nhttps://c.test/z.webp,x\n")
    wanted = request(["\thttps://d.test/w.jpg "], ["5"], str(csv))
    assert wanted.urls == {"https://d.test/w.jpg", "https://c.test/z.webp"} and wanted.ids == {"5"}
    assert request(["HTTPS://D.Test:443/w.jpg#top"]).urls == {"https://d.test/w.jpg"}
    for line in ("https://a.test/x.jpg, copyright", "https://a.test/x.jpg\x00", "12 34"):
        (tmp_path / "bad.txt").write_text("# ok\nhttps://a.test/y.jpg\n" + line + "\n")
        with pytest.raises(InputError, match="line 3 of"):
            read_list(str(tmp_path / "bad.txt"))
    (tmp_path / "bad.csv").write_text("name\nx\n")
    for bad in ({"urls": ["ftp://e.test/a.jpg"]}, {"list_uri": str(tmp_path / "bad.csv")}, {}):
        with pytest.raises(InputError):
            request(**bad)


def test_an_ivf_index_renumbers_and_an_hnsw_one_cannot_remove():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # normalised, as CLIP embeddings: each finds itself
    gone = np.array([3, 100, 399])
    keep = np.ones(400, bool)
    keep[gone] = False
    new_id = np.cumsum(keep) - 1
    ivf = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    assert remove_vectors(ivf, gone, new_id) and ivf.ntotal == 397
    faiss.extract_index_ivf(ivf).nprobe = 4
    _, found = ivf.search(vectors[keep], 1)
    assert (found[:, 0] == np.arange(397)).all()  # each vector is found under its new id
    hnsw = faiss.index_factory(16, "HNSW8", faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    assert not remove_vectors(hnsw, gone, new_id)


def test_the_command_runs_the_flow(taken, capsys):
    from clipcrawl.flows.cli import main

    out, sample, *_ = taken
    with pytest.raises(SystemExit) as exit_info:
        main(["takedown", "--out", str(out)])
    assert "give --url URL, --sample-id ID or --list FILE" in str(exit_info.value.code)
    main(["takedown", "--out", str(out), "--sample-id", str(sample["SAMPLE_ID"]), "--reason", "again"])
    assert json.loads(capsys.readouterr().out)["noop"] is True
    assert os.path.exists(out / "takedown" / "log.jsonl")


def test_pairs_rows_keep_their_places(pipeline, taken):
    """Blanked, not dropped: the download's shard slices and keys over pairs/ stay those of the run."""
    from clipcrawl.tasks.download.shards import plan_download

    out, sample, *_ = taken
    for path in sorted((out / "pairs").rglob("*.parquet")):
        assert pq.read_metadata(path).num_rows == pq.read_metadata(pipeline[0] / path.relative_to(out)).num_rows
    before = plan_download(str(pipeline[0] / "pairs"), 10_000)[1]
    after = plan_download(str(out / "pairs"), 10_000)[1]
    assert [[(s[1], s[2]) for s in spec.slices] for spec in after] == [
        [(s[1], s[2]) for s in spec.slices] for spec in before
    ]
    rows = [r for p in sorted((out / "pairs").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sum(r["url"] is None for r in rows) >= 1 and all(r["uid"] is None for r in rows if r["url"] is None)


def test_stats_and_summaries_add_up(taken):
    out = taken[0]
    images = [json.loads(p.read_text()) for p in (out / "images").glob("*_stats.json")]
    summary = json.loads((out / "images" / "_summary.json").read_text())
    assert (
        summary["count"]
        == sum(s["count"] for s in images)
        == sum(pq.read_metadata(p).num_rows for p in (out / "images").glob("*.parquet"))
    )
    assert summary["status"]["taken_down"] == sum(s["status"].get("taken_down", 0) for s in images) >= 1
    parts = [json.loads(p.read_text()) for p in (out / "dataset").glob("*_stats.json")]
    dataset = json.loads((out / "dataset" / "_summary.json").read_text())
    assert (
        dataset["kept"]
        == sum(p["kept"] for p in parts)
        == sum(pq.read_metadata(p).num_rows for p in (out / "dataset").glob("*.parquet"))
    )
    pairs = json.loads((out / "pairs" / "_summary.json").read_text())
    assert pairs["kept"] == sum(json.loads(p.read_text())["kept"] for p in (out / "pairs").glob("*.stats.json"))


def test_a_blank_row_is_taken_down_without_a_request(tmp_path):
    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.download.shards import ShardSpec
    from clipcrawl.tasks.download.stage import download_shard

    pairs = tmp_path / "pairs.parquet"
    # a blanked row, then a row whose address the SSRF guard refuses (no request either)
    pq.write_table(pa.table({"url": [None, "http://127.0.0.1:9/a.jpg"], "caption": [None, "a cat"]}), pairs)
    stats = download_shard(ShardSpec(0, ((str(pairs), 0, 2),)), str(tmp_path / "out"), DownloadSettings(shard_size=10))
    assert stats["status"] == {"taken_down": 1, "blocked_address": 1}
    rows = pq.read_table(tmp_path / "out" / "images" / "00000.parquet").to_pylist()
    assert [(r["key"], r["status"]) for r in rows] == [("000000000", "taken_down"), ("000000001", "blocked_address")]


def test_a_taken_down_image_under_a_new_url_is_refused(tmp_path):
    """The body's sha256 is tombstoned: status taken_down, nothing of it in the shard."""
    import http.server
    import threading

    from PIL import Image

    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.download.shards import ShardSpec
    from clipcrawl.tasks.download.stage import download_shard

    def png(seed):
        buf = __import__("io").BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 255, (128, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "PNG")
        return buf.getvalue()

    bodies = {"/new-name.png": png(0), "/other.png": png(1)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = bodies.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    log.append(str(out), {"image_sha256": [log.digest(hashlib.sha256(bodies["/new-name.png"]).hexdigest())]})
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": [base + "/new-name.png", base + "/other.png"], "caption": ["a", "b"]}), pairs)
    settings = DownloadSettings(shard_size=10, allow_addresses=["127.0.0.0/8"])
    try:
        stats = download_shard(ShardSpec(0, ((str(pairs), 0, 2),)), str(out), settings)
    finally:
        server.shutdown()
    assert stats["status"] == {"taken_down": 1, "success": 1}
    row = pq.read_table(out / "images" / "00000.parquet").to_pylist()[0]
    assert row["status"] == "taken_down" and row["sha256"] is None and row["bytes"] is None
    with tarfile.open(out / "images" / "00000.tar") as tar:
        assert {n.split(".")[0] for n in tar.getnames()} == {"000000001"}
    assert log.tombstones(str(out)).holds_image(hashlib.sha256(bodies["/new-name.png"]).hexdigest())


def test_unknown_ids_and_a_folder_that_is_no_output(taken, tmp_path, capsys):
    from clipcrawl.flows.cli import main

    out = taken[0]
    main(["takedown", "--out", str(out), "--url", "https://Nowhere.test:443/x.jpg#f", "--sample-id", "424242"])
    result = json.loads(capsys.readouterr().out)
    assert not result["held"] and not result["noop"] and result["files"] == 0
    entry = log.read_log(str(out))[-1]
    assert entry["matched"] == {"urls": 0, "samples": 0, "images": 0} and entry["files"] == {}
    gone = log.tombstones(str(out))
    assert gone.holds("https://nowhere.test/x.jpg") and gone.holds(None, 424242)  # later runs never bring them in
    empty = tmp_path / "not-an-output"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["takedown", "--out", str(empty), "--url", "https://a.test/x.jpg"])
    assert "is not a clipcrawl output" in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)
    assert list(empty.iterdir()) == []


def copy_out(pristine, out, first):
    """A copy of OUT as it was before the takedown, its index naming the copy's folders (not the first OUT's)."""
    shutil.copytree(pristine, out, symlinks=True)
    infos = out / "index" / "index_infos.json"
    infos.write_text(infos.read_text().replace(json.dumps(str(first))[1:-1], json.dumps(str(out))[1:-1]))
    return out


STEPS = ["rewrite_shards", "_rewrite_npy", "write_ids", "rewrite_parquets", "remake_report"]


@pytest.mark.parametrize("step", STEPS)
def test_an_interrupted_takedown_finishes_when_run_again(taken, tmp_path, monkeypatch, step):
    """Killed after a step (the first npy file, ids.parquet written but not index_infos.json, ...): the pending
    journal holds no text, and the next takedown finishes it."""
    from clipcrawl.tasks.takedown import rewrite, stage

    first, sample, _, needles, _, _, pristine = taken
    out = copy_out(pristine, tmp_path / "out", first)
    module = rewrite if step in ("_rewrite_npy", "write_ids") else stage
    real = getattr(module, step)

    def dies(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError(f"killed after {step}")

    monkeypatch.setattr(module, step, dies)
    with pytest.raises(RuntimeError, match="killed after"):
        stage.takedown(str(out), request([sample["url"]]), "first")
    journal = out / "takedown" / "pending.json"
    assert journal.exists() and not any(n in journal.read_bytes() for n in (needles["url"], needles["caption"]))
    assert log.tombstones(str(out)).holds(sample["url"])  # pending: later runs skip it already
    monkeypatch.undo()
    stage.takedown(str(out), request(["https://unrelated.test/a.jpg"]), "a later one")
    assert not journal.exists() and [e["reason"] for e in log.read_log(str(out))] == ["first", "a later one"]
    assert holders(out, needles) == []
    aligned(out)


def test_an_index_with_relative_paths(taken, tmp_path, monkeypatch):
    """index_infos.json written from OUT's parent with relative paths, the takedown run from elsewhere; a list
    kept under OUT is not an output and is not rewritten; a shard whose metadata is gone fails loudly."""
    from clipcrawl.tasks.takedown import stage

    first, sample, _, needles, _, _, pristine = taken
    out = copy_out(pristine, tmp_path / "base" / "out", first)
    keep = out / "requests" / "list.parquet"
    keep.parent.mkdir()
    pq.write_table(pa.table({"url": [sample["url"]], "caption": [sample["caption"]]}), keep)
    kept = keep.read_bytes()
    infos_uri = out / "index" / "index_infos.json"
    infos = json.loads(infos_uri.read_text())
    for shard in infos["shards"]:
        shard["embeddings"], shard["dataset"] = "out/embeddings", "out/dataset"
    infos_uri.write_text(json.dumps(infos))
    monkeypatch.chdir(tmp_path)
    stage.takedown(str(out), request([sample["url"]]), "relative")
    assert [h for h in holders(out, needles) if not h.startswith(("url in requests", "caption in requests"))] == []
    assert keep.read_bytes() == kept
    aligned(out)
    infos = json.loads(infos_uri.read_text())
    infos["shards"][0]["embeddings"] = "elsewhere/embeddings"
    infos_uri.write_text(json.dumps(infos))
    other = pq.read_table(out / "index" / "ids.parquet")["url"][0].as_py()
    with pytest.raises(InputError, match="is not there"):
        stage.takedown(str(out), request([other]), "missing metadata")


def test_one_takedown_at_a_time(tmp_path):
    """A second process waits for the lock, then gives up saying so."""
    import subprocess
    import sys

    from clipcrawl.tasks.takedown.journal import locked

    out = tmp_path / "out"
    (out / "pairs").mkdir(parents=True)
    code = f"from clipcrawl.tasks.takedown.journal import locked\nwith locked({str(out)!r}, wait=0.3): print('held')"
    with locked(str(out)):
        busy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert busy.returncode != 0 and "another takedown holds" in busy.stderr
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and free.stdout.strip() == "held"


def test_serve_reloads_a_changed_index(taken):
    from clipcrawl.tasks.search.serve import CHECKED, current, make_app

    out, sample, *_ = taken
    searcher = Searcher(str(out / "index"))
    app = make_app(searcher)
    assert asyncio.run(current(app)) is searcher  # checked at most once a second
    app[CHECKED][0] = 0.0
    infos = out / "index" / "index_infos.json"
    os.utime(infos, (infos.stat().st_atime, infos.stat().st_mtime + 5))
    fresh = asyncio.run(current(app))
    assert fresh is not searcher and fresh.count == pq.read_metadata(out / "index" / "ids.parquet").num_rows
