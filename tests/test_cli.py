"""The clipcrawl command: flags and config files reach the flow; failures exit with one line."""

import json

import pyarrow.parquet as pq
import pytest

from clipcrawl.flows.cli import main


def test_extract_command_writes_pairs(dask_address, small_world, tmp_path, capsys):
    wat = small_world.wat_uris()[0]
    main(["extract", wat, "--out", str(tmp_path), "--min-alt-length", "12", "--dask-address", dask_address])
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 1 and summary["kept"] > 0
    table = pq.read_table(next((tmp_path / "pairs").glob("*.parquet")))
    assert table.num_rows == summary["kept"]
    assert min(len(t) for t in table.column("text").to_pylist()) >= 12


def test_ingest_command_reads_a_config_file(dask_address, small_world, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("extract:\n  detect_language: false\ningest:\n  files_per_segment: 1\n")
    main(
        [
            "ingest",
            "--crawl",
            small_world.crawl_id,
            "--source",
            str(small_world.root),
            "--segments",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(config),
            "--dask-address",
            dask_address,
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 1
    table = pq.read_table(next((tmp_path / "out" / "pairs").glob("*.parquet")))
    assert set(table.column("language").to_pylist()) == {None}


def test_failure_exits_nonzero_with_one_line_naming_the_file(dask_address, tmp_path):
    missing = str(tmp_path / "nowhere.warc.wat.gz")
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", missing, "--out", str(tmp_path / "out"), "--dask-address", dask_address])
    message = str(exit_info.value.code)
    assert message.startswith("clipcrawl: ingest_crawl Failed") and "nowhere.warc.wat.gz" in message
    assert "\n" not in message


def test_unknown_crawl_exits_with_the_reason(dask_address, small_world, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "ingest",
                "--crawl",
                "CC-MAIN-1999-01",
                "--source",
                str(small_world.root),
                "--out",
                str(tmp_path),
                "--dask-address",
                dask_address,
            ]
        )
    assert "CC-MAIN-1999-01" in str(exit_info.value.code)


def test_embed_command_takes_model_and_filter_flags(dask_address, tmp_path, capsys):
    from clipcrawl.tasks.world import tiny_clip
    from tests.test_embed import make_shard

    make_shard(str(tmp_path), 12)
    main(
        [
            "embed",
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path),
            "--checkpoint",
            str(tiny_clip.TINY_CLIP_DIR),
            "--threshold",
            "-1",
            "--batch-size",
            "5",
            "--dask-address",
            dask_address,
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == summary["kept"] == 11  # one of the 12 failed to download; -1 keeps every pair
    stats = json.loads((tmp_path / "dataset" / "part-00000_stats.json").read_text())
    assert stats["model"] == str(tiny_clip.TINY_CLIP_DIR) and stats["similarity_threshold"] == -1


def test_embed_without_shards_exits_with_the_reason(dask_address, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "--images", str(tmp_path / "empty"), "--out", str(tmp_path), "--dask-address", dask_address])
    message = str(exit_info.value.code)
    assert message.startswith("clipcrawl: embed_and_filter Failed") and "no published image shards" in message


def test_index_then_search_commands(dask_address, pipeline, tmp_path, capsys):
    from tests.test_index_flow import copy_run

    out = copy_run(pipeline, tmp_path)
    main(
        [
            "index",
            "--embeddings",
            str(out / "embeddings"),
            "--out",
            str(out),
            "--near-duplicate-threshold",
            "0.99",
            "--dask-address",
            dask_address,
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["image"]["index_key"] == "Flat" and summary["near_duplicates"]["threshold"] == 0.99
    main(["search", "--index", str(out / "index"), "a photo of red circles", "-k", "3", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3 and {"key", "url", "caption", "similarity"} <= set(results[0])
    assert results[0]["similarity"] >= results[1]["similarity"] >= results[2]["similarity"]
    main(["search", "--index", str(out / "index"), "a photo of red circles", "-k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and results[0]["url"] in lines[0]


def test_search_needs_one_query(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(tmp_path)])
    assert "give a text query or --image PATH" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(tmp_path / "missing"), "red circles"])
    assert str(exit_info.value.code).startswith("clipcrawl search:") and "missing" in str(exit_info.value.code)
