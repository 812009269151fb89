import numpy as np
import pyarrow as pa

from clipcrawl.tasks.ingest import dedup


def _write(tmp_path, name, uids):
    uri = str(tmp_path / f"{name}.uids.parquet")
    dedup.write_uids(uri, np.array(uids, dtype=np.uint64))
    return uri


def test_bucket_bounds_cover_the_uid_space_without_gaps():
    for buckets in (1, 3, 16):
        bounds = [dedup.bucket_bounds(b, buckets) for b in range(buckets)]
        assert bounds[0][0] == 0 and bounds[-1][1] is None
        for (lo, hi), (next_lo, _) in zip(bounds, bounds[1:]):
            assert hi == next_lo and lo < hi


def test_bucket_count_scales_with_rows():
    assert dedup.bucket_count(0, 1000) == 1
    assert dedup.bucket_count(10_500, 1000) == 11
    assert dedup.bucket_count(10**12, 1000) == 4096


def test_first_file_keeps_a_pair_seen_in_several_files(tmp_path):
    top = (1 << 64) - 1  # in the last bucket, whose range has no upper bound
    uris = [_write(tmp_path, "a", [5, 7, top]), _write(tmp_path, "b", [7, 9, top]), _write(tmp_path, "c", [5, 9, 11])]
    buckets = 3
    losers_uris = []
    total = 0
    for b in range(buckets):
        out = str(tmp_path / f"bucket-{b}.parquet")
        total += dedup.find_losers(uris, b, buckets, out)["duplicates"]
        losers_uris.append(out)
    assert total == 4
    assert sorted(dedup.losers_of(losers_uris, 0).to_pylist()) == []
    assert sorted(dedup.losers_of(losers_uris, 1).to_pylist()) == [7, top]
    assert sorted(dedup.losers_of(losers_uris, 2).to_pylist()) == [5, 9]


def test_drop_losers_keeps_row_order():
    batch = pa.RecordBatch.from_pydict({"uid": pa.array([3, 1, 2, 1], pa.uint64()), "url": ["a", "b", "c", "d"]})
    kept = dedup.drop_losers(batch, pa.array([1], pa.uint64()))
    assert kept.column("url").to_pylist() == ["a", "c"]


def test_many_files_random_uids_match_a_plain_set(tmp_path):
    rng = np.random.default_rng(0)
    files = [rng.integers(0, 2**63, size=500, dtype=np.uint64) % np.uint64(2000) * np.uint64(2**52) for _ in range(6)]
    uris = [_write(tmp_path, str(i), f) for i, f in enumerate(files)]
    loser_uris = [str(tmp_path / f"l{b}.parquet") for b in range(4)]
    for b, out in enumerate(loser_uris):
        dedup.find_losers(uris, b, 4, out)
    seen: set[int] = set()
    for i, f in enumerate(files):
        mine = set(int(u) for u in f)
        assert set(dedup.losers_of(loser_uris, i).to_pylist()) == mine & seen
        seen |= mine
