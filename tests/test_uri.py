import os
from pathlib import Path

import pytest

from clipcrawl.tasks.core.uri import atomic_write, join, listdir, name_of, read_json, write_json


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
