"""Wrong input fails at once with one line naming what the stage looked for; it is never accepted silently, never
retried, and a sample without a caption is never compared with its image."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clipcrawl.flows.cli import main
from clipcrawl.tasks.core.config import ReportSettings
from clipcrawl.tasks.core.errors import InputError, is_transient
from clipcrawl.tasks.core.status import DownloadStatus, EmbedStatus
from clipcrawl.tasks.download.shards import pairs_files, plan_download, plan_shards, read_shard_rows
from clipcrawl.tasks.download.stage import download_shard
from clipcrawl.tasks.embed.stage import embed_shard
from clipcrawl.tasks.ingest.crawl import crawl_files
from clipcrawl.tasks.ingest.stage import PAIRS_SCHEMA
from clipcrawl.tasks.report.stage import collect
from clipcrawl.tasks.world import ImageServer, tiny_clip

NO_CAPTION = 3  # samples of the img2dataset-layout shard whose caption is null


def first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


# stage: wrong input -> (the planning call that meets it, what its one line must name)
WRONG = {
    "download: a run folder (its pairs are in pairs/)": (
        lambda out, world: pairs_files(str(out)),
        lambda out: ["no pairs in", str(out), "*.parquet", f"{out}/pairs/"],
    ),
    "report: the pairs folder, not the run folder": (
        lambda out, world: collect(str(out / "pairs"), ReportSettings()),
        lambda out: ["no run in", f"{out}/pairs", "pairs/, images/, dataset/ and index/"],
    ),
    "ingest: no segment chosen from the listing": (
        lambda out, world: crawl_files(str(world.root), world.crawl_id, segments=0),
        lambda out: ["no wat files chosen from", "wat.paths.gz", "it lists 2 segments"],
    ),
}


@pytest.mark.parametrize("case", WRONG)
def test_wrong_input_fails_its_planning_with_one_line(pipeline, small_world, case):
    out = pipeline[0]
    call, named = WRONG[case]
    with pytest.raises(InputError) as raised:
        call(out, small_world)
    message = str(raised.value)
    assert "\n" not in message and all(part in message for part in named(out)), message
    assert not is_transient(raised.value)


def test_a_dataset_is_downloaded_again_from_its_dataset_folder(pipeline, small_world, tmp_path):
    out = pipeline[0]
    dataset = pa.concat_tables(pq.read_table(p) for p in sorted((out / "dataset").glob("part-*.parquet")))
    files, specs = plan_download(str(out / "dataset"), 10)  # URL, TEXT: the LAION columns
    assert files == [str(p) for p in sorted((out / "dataset").glob("part-*.parquet"))]
    rows = pa.concat_tables(read_shard_rows(spec) for spec in specs)
    assert rows["url"].to_pylist() == dataset["URL"].to_pylist()
    assert rows["caption"].to_pylist() == dataset["TEXT"].to_pylist()
    with ImageServer(small_world.root) as server:
        stats = download_shard(specs[0], str(tmp_path), server.download_settings(image_threads=1))
    assert stats["count"] == specs[0].num_rows and stats["successes"] > 0, stats


def test_download_of_pairs_files_holding_no_rows_fails_with_one_line(tmp_path):
    # what ingest publishes for a file without a single pair: the pairs schema, no rows
    for name in ("a", "b"):
        pq.write_table(PAIRS_SCHEMA.empty_table(), tmp_path / f"{name}.parquet")
    with pytest.raises(InputError, match=r"no pairs in .*: its 2 file\(s\) hold no rows"):
        plan_download(str(tmp_path), 100)


def test_an_input_error_is_never_transient_whatever_it_was_found_under():
    try:
        try:
            raise ConnectionResetError("reset while listing")
        except ConnectionResetError:
            raise InputError("no pairs in s3://bucket/run") from None
    except InputError as exc:
        assert exc.__context__ is not None and not is_transient(exc)


def test_cli_wrong_input_exits_with_one_line_and_no_retry(dask_address, pipeline, tmp_path, caplog):
    out = pipeline[0]
    links = tmp_path / "links.parquet"  # img2dataset-style input whose URL column has another name
    pq.write_table(pa.table({"link": ["http://127.0.0.1/a.jpg"], "caption": ["a"]}), links)
    runs = [  # (command, its flow, what the line names)
        (["download", "--pairs", str(out)], "download_images", ["no pairs in", "*.parquet"]),
        (["download", "--pairs", str(links)], "download_images", [str(links), "missing column url", "link, caption"]),
        (["index", "--embeddings", str(out / "pairs")], "build_index", ["no embeddings under", f"{out}/pairs"]),
    ]
    for i, (command, flow, named) in enumerate(runs):
        dest = tmp_path / f"out{i}"
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--out", str(dest), "--dask-address", dask_address])
        message = str(exit_info.value.code)
        assert message.startswith(f"clipcrawl: {flow} Failed") and "\n" not in message, message
        assert all(part in message for part in named) and "KeyError" not in message, message
        assert not dest.exists() or not list(dest.rglob("*.tar")), "no work may start from wrong input"
        failed = [r for r in caplog.records if r.name == "prefect.flow_runs" and r.levelno >= logging.ERROR]
        assert failed and all("InputError" in r.getMessage() and not r.exc_info for r in failed), "no traceback"
        caplog.clear()


@pytest.fixture(scope="module")
def img2dataset_shard(pipeline, small_world, tmp_path_factory) -> Path:
    """A shard in img2dataset's layout (its parquet says `caption`), downloaded by the download stage from pairs in
    img2dataset's input shape (url, caption), NO_CAPTION of whose captions are null."""
    out = pipeline[0]
    images = pq.read_table(first(out / "images", "*.parquet"), columns=["uid", "status"])
    ok = images.filter(pc.equal(images["status"], DownloadStatus.SUCCESS.value))["uid"].to_pylist()[:12]
    pairs = pa.concat_tables(pq.read_table(p) for p in sorted((out / "pairs").glob("*.parquet")))
    pairs = pairs.filter(pc.is_in(pairs["uid"], pa.array(ok, pa.uint64())))
    assert pairs.num_rows == len(ok) > NO_CAPTION
    captions = pairs["caption"].to_pylist()
    captions[:NO_CAPTION] = [None] * NO_CAPTION
    pairs = pa.table({"url": pairs["url"], "caption": pa.array(captions, pa.string())})
    tmp = tmp_path_factory.mktemp("img2dataset")
    pq.write_table(pairs, tmp / "input.parquet")

    run = tmp / "run"
    with ImageServer(small_world.root) as server:
        (spec,) = plan_shards(pairs_files(str(tmp / "input.parquet")), 100)
        assert read_shard_rows(spec)["caption"].to_pylist() == captions
        stats = download_shard(spec, str(run), server.download_settings(image_threads=1))
    assert stats["successes"] == len(ok), stats
    return first(run / "images", "*.tar")


def test_embed_reads_img2dataset_captions_and_never_compares_a_missing_one(img2dataset_shard, tmp_path):
    shard = pq.read_table(img2dataset_shard.with_suffix(".parquet"))
    assert "text" not in shard.column_names
    captions = dict(zip(shard["key"].to_pylist(), shard["caption"].to_pylist()))
    missing = {key for key, caption in captions.items() if caption is None}
    assert len(missing) == NO_CAPTION

    stats = embed_shard(str(img2dataset_shard), str(tmp_path), tiny_clip.embed_settings(similarity_threshold=-1.0))
    assert stats["status"][EmbedStatus.NO_CAPTION] == NO_CAPTION
    assert stats["embedded"] == len(captions) - NO_CAPTION
    assert {f["key"] for f in stats["failures"] if f["status"] == EmbedStatus.NO_CAPTION} == missing
    metadata = pq.read_table(first(tmp_path / "embeddings" / "metadata", "*.parquet"))
    assert dict(zip(metadata["key"].to_pylist(), metadata["caption"].to_pylist())) == {
        key: caption for key, caption in captions.items() if key not in missing
    }
    dataset = pq.read_table(first(tmp_path / "dataset", "part-*.parquet"))
    assert dataset.num_rows == len(captions) - NO_CAPTION  # threshold -1 keeps all that were compared, and only them
    assert None not in dataset["TEXT"].to_pylist() and not missing & set(dataset["key"].to_pylist())
