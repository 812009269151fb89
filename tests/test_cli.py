"""The clipcrawl command: flags and config files reach the flow; failures exit with one line."""

import json

import pyarrow.parquet as pq
import pytest

from flows.cli import main


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
    main(["ingest", "--crawl", small_world.crawl_id, "--source", str(small_world.root), "--segments", "1",
          "--out", str(tmp_path / "out"), "--config", str(config), "--dask-address", dask_address])
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
        main(["ingest", "--crawl", "CC-MAIN-1999-01", "--source", str(small_world.root), "--out", str(tmp_path),
              "--dask-address", dask_address])
    assert "CC-MAIN-1999-01" in str(exit_info.value.code)
