import os
from pathlib import Path

import pytest

from clipcrawl.tasks.core.uri import atomic_write, join, listdir, name_of, open_uri, read_json, write_json


def test_atomic_write_publishes_whole_files_only(tmp_path):
    target = str(tmp_path / "sub" / "a.bin")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("killed while writing")
    assert not os.path.exists(target)
    assert os.listdir(tmp_path / "sub") == []
    with atomic_write(target) as f:
        f.write(b"whole")
    assert Path(target).read_bytes() == b"whole"


def test_json_roundtrip_and_listing(tmp_path):
    write_json(str(tmp_path / "x.stats.json"), {"a": 1})
    assert read_json(str(tmp_path / "x.stats.json")) == {"a": 1}
    assert listdir(str(tmp_path), ".json") == [str(tmp_path / "x.stats.json")]
    assert listdir(str(tmp_path / "missing")) == []


def test_join_and_name_keep_schemes():
    assert join("s3://bucket/out", "pairs", "a.parquet") == "s3://bucket/out/pairs/a.parquet"
    assert name_of("https://data.commoncrawl.org/x/y.warc.wat.gz?z=1") == "y.warc.wat.gz"


def test_open_uri_reads_a_local_file_by_path_uri_or_home(tmp_path, monkeypatch):
    """A plain path is opened by Python itself; file://, file: and ~ (expanded, as fsspec expands it) read the same."""
    (tmp_path / "a.txt").write_bytes(b"local bytes")
    monkeypatch.setenv("HOME", str(tmp_path))
    for uri in (str(tmp_path / "a.txt"), f"file://{tmp_path}/a.txt", f"file:{tmp_path}/a.txt", "~/a.txt"):
        with open_uri(uri) as f:
            assert f.read() == b"local bytes", uri
    with open_uri(str(tmp_path / "a.txt"), "r") as f:
        assert f.read() == "local bytes"
