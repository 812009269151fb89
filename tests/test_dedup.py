"""The uid store and the dedup against it: unit tests on synthetic uids, and the ingest steps run in one process
(no Prefect) over the small world, stopped at each step as a crash would stop them."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import FileStatus
from clipcrawl.tasks.core.uri import exists
from clipcrawl.tasks.ingest import dedup, incremental, uidstore
from clipcrawl.tasks.ingest.stage import extract_file, output_names, publish_file, summarize
from tests.helpers import ingest_files

TOP = (1 << 64) - 1  # in the last partition, whose range has no upper bound


def u64(values) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_bucket_bounds_cover_the_uid_space_without_gaps():
    for buckets in (1, 3, 16):
        bounds = [dedup.bucket_bounds(b, buckets) for b in range(buckets)]
        assert bounds[0][0] == 0 and bounds[-1][1] is None
        for (lo, hi), (next_lo, _) in zip(bounds, bounds[1:]):
            assert hi == next_lo and lo < hi


def test_task_ranges_cover_the_partitions_and_scale_with_new_uids():
    for partitions, new, per_task in ((256, 0, 100), (256, 1050, 100), (8, 10**9, 1)):
        ranges = dedup.task_ranges(partitions, new, per_task)
        assert ranges[0][0] == 0 and ranges[-1][1] == partitions
        assert all(a < b and b == c for (a, b), (c, _) in zip(ranges, ranges[1:]))
    assert len(dedup.task_ranges(256, 1050, 100)) == 11
    assert len(dedup.task_ranges(8, 10**9, 1)) == 8  # at most one task a partition


def test_merge_keeps_the_stored_owner_and_the_first_new_file():
    stored_uids, stored_files = u64([5, 7, 9]), u64([100, 100, 200])
    new_uids = [u64([7, 8, 11]), u64([5, 8, 12])]  # file 0 (key 300), file 1 (key 400)
    losers_file, losers_uid, uids, files = dedup.merge_range(
        stored_uids, stored_files, u64([100, 200]), new_uids, u64([300, 400])
    )
    assert list(zip(losers_file.tolist(), losers_uid.tolist())) == [(0, 7), (1, 5), (1, 8)]
    assert uids.tolist() == [5, 7, 8, 9, 11, 12]
    assert files.tolist() == [100, 100, 300, 200, 300, 400]  # 5 and 7 keep their stored owner


def test_a_files_own_rows_and_rows_of_uncommitted_files_do_not_stand():
    # key 300 is ingested again (its rows do not stand: its uids are not its own losers, and 13, which it no
    # longer has, leaves the store); key 500 is not committed (a run stopped before files.parquet)
    stored_uids, stored_files = u64([5, 7, 13, 21]), u64([300, 100, 300, 500])
    losers_file, losers_uid, uids, files = dedup.merge_range(
        stored_uids, stored_files, u64([100]), [u64([5, 7, 21])], u64([300])
    )
    assert losers_uid.tolist() == [7] and losers_file.tolist() == [0]
    assert uids.tolist() == [5, 7, 21] and files.tolist() == [300, 100, 300]


def test_drop_losers_keeps_row_order():
    batch = pa.RecordBatch.from_pydict({"uid": pa.array([3, 1, 2, 1], pa.uint64()), "url": ["a", "b", "c", "d"]})
    kept = dedup.drop_losers(batch, pa.array([1], pa.uint64()))
    assert kept.column("url").to_pylist() == ["a", "c"]


def test_a_store_names_a_pairs_folder_under_its_parent_by_its_relative_path():
    assert uidstore.pairs_name("/x/out/pairs/_uids", "/x/out/pairs/") == ""
    assert uidstore.pairs_name("s3://b/out/_uids", "s3a://b/out/CC-1/pairs") == "CC-1/pairs"
    assert uidstore.pairs_name("/x/out/_uids", "/x/outer/pairs") == "/x/outer/pairs"
    assert uidstore.pairs_name("s3://b/store", "s3://c/pairs") == "s3://c/pairs"


def test_only_settings_that_change_the_pairs_change_the_digest():
    digest = uidstore.settings_digest(SETTINGS)
    assert uidstore.settings_digest(SETTINGS.model_copy(update={"batch_rows": 4096})) == digest
    assert uidstore.settings_digest(SETTINGS.model_copy(update={"min_alt_length": 20})) != digest


def test_a_published_file_that_fails_again_counts_once():
    stats = {"uri": "a", "status": FileStatus.OK, "dropped": {}, "kept": 3}
    summary = summarize([stats, stats | {"uri": "b"}], {"a": "unreadable", "c": "unreadable"})
    assert summary["files"] == 3 and summary["kept"] == 6 and len(summary["failed"]) == 2


def new_run(store, pairs, files: dict[str, list[int]], committed_keys: list[int], partitions=4):
    """A store that lists `committed_keys`, and the run's new files (name -> uids) recorded for the dedup."""
    uidstore.open_store(store, partitions)
    rows = [dict(key=k, pairs=pairs, name=str(k), uri="", rows=0, digest="d") for k in committed_keys]
    uidstore.write_files(store, pa.Table.from_pylist(rows, schema=uidstore.FILES_SCHEMA))
    for name, uids in files.items():
        dedup.write_uids(layout.staged_uids(pairs, name), u64(uids))
    run = incremental.Run(store, pairs, partitions, "d", [("", n) for n in files], [])
    return run, incremental.prepare_dedup(run, run.new, sum(map(len, files.values())), 10**9)


def test_a_dedup_task_reads_only_its_partitions(tmp_path):
    store, pairs = str(tmp_path / "store"), str(tmp_path / "pairs")
    width = 1 << 62  # 4 partitions
    run, _ = new_run(store, pairs, {"a": [1, width + 1, 2 * width + 1], "b": [width + 1, width + 2]}, [100])
    uidstore.write_partition(layout.store_partition(store, 1), u64([width + 2]), u64([100]))
    for p in (0, 2, 3):  # any read of another partition fails
        with open(layout.store_partition(store, p), "wb") as f:
            f.write(b"not parquet")
    losers = str(tmp_path / "losers.parquet")
    result = dedup.dedup_partitions(store, 1, 2, losers)
    assert result["stored"] == 1 and result["new"] == 3 and result["rows"] == 2
    assert dedup.losers_of([losers], 0).to_pylist() == []
    assert sorted(dedup.losers_of([losers], 1).to_pylist()) == [width + 1, width + 2]
    assert not exists(layout.store_next_partition(store, 0))


def test_runs_against_a_store_match_one_plain_set(tmp_path):
    rng = np.random.default_rng(0)
    store, pairs = str(tmp_path / "store"), str(tmp_path / "pairs")
    seen: set[int] = set()
    committed: list[int] = []
    for run_number in range(3):
        files = {
            f"r{run_number}f{i}": sorted({int(v) * (1 << 52) for v in rng.integers(0, 3000, 400)} | {TOP})
            for i in range(3)
        }
        run, tasks = new_run(store, pairs, files, committed)
        for first, last, losers in tasks:
            dedup.dedup_partitions(store, first, last, losers)
        loser_uris = [t[2] for t in tasks]
        for i, (name, uids) in enumerate(files.items()):
            assert set(dedup.losers_of(loser_uris, i).to_pylist()) == set(uids) & seen, (run_number, name)
            seen |= set(uids)
        incremental.commit(run, {name: ("", {"kept": len(uids)}) for name, uids in files.items()})
        committed = uidstore.read_files(store).column("key").to_pylist()
        stored = np.concatenate([uidstore.read_partition(layout.store_partition(store, p))[0] for p in range(4)])
        assert stored.tolist() == sorted(seen)  # sorted and unique, partition after partition
        assert not exists(layout.store_next_dir(store)) and not exists(layout.staging_dir(pairs))


def test_a_store_of_another_format_version_is_refused(tmp_path):
    (tmp_path / "store.json").write_text('{"version": 99, "partitions": 4}')
    with pytest.raises(uidstore.StoreError, match="format version 99"):
        uidstore.open_store(str(tmp_path), 256)


# ---- the ingest steps over the small world, one process


SETTINGS = ExtractSettings(detect_language=False)


def published(out) -> dict[str, list[int]]:
    """{file: its published uids in row order}, and nothing left in staging."""
    pairs = out / "pairs"
    assert not (pairs / "_staging").exists() and not (pairs / "_uids" / "_next").exists()
    return {p.stem: pq.read_table(p).column("uid").to_pylist() for p in sorted(pairs.glob("*.parquet"))}


def store_rows(out) -> list[tuple[int, str | None]]:
    """The store's rows in partition order: (uid, the name of the committed file that won it, else None)."""
    store = layout.uid_store(str(out / "pairs"))
    files = uidstore.read_files(store)
    names = dict(zip(files.column("key").to_pylist(), files.column("name").to_pylist()))
    rows = [uidstore.read_partition(layout.store_partition(store, p)) for p in range(uidstore.partition_count(store))]
    return [(int(u), names.get(int(f))) for uids, keys in rows for u, f in zip(uids, keys)]


@pytest.fixture(scope="module")
def clean(small_world, tmp_path_factory):
    """One uninterrupted run over the world's files."""
    out = tmp_path_factory.mktemp("clean")
    ingest_files(small_world.wat_uris(), str(out), SETTINGS, partitions=8)
    return published(out), store_rows(out)


def stopped_run(uris, out, stop: str, settings: ExtractSettings = SETTINGS):
    """The ingest steps in the flow's order, up to `stop`, as a crash there leaves them."""
    pairs = layout.pairs_dir(str(out))
    run = incremental.plan(layout.uid_store(pairs), pairs, uris, settings, 8)
    kept = sum(extract_file(uri, str(out), name, settings)["kept"] for uri, name in run.new)
    tasks = incremental.prepare_dedup(run, run.new, kept, 10**9)
    for first, last, losers in tasks:
        dedup.dedup_partitions(run.store, first, last, losers)
    if stop == "dedup":
        return
    incremental.before_publish(run)
    stats = {
        name: (uri, publish_file(str(out), name, i, [t[2] for t in tasks])) for i, (uri, name) in enumerate(run.new)
    }
    if stop == "publish":
        return
    for p in range(run.partitions):
        uidstore.commit_partition(run.store, p)
    if stop == "partitions":
        return
    incremental.commit(run, stats)  # files.parquet, then the staging goes


@pytest.mark.parametrize("stop", ["dedup", "publish", "partitions"])
def test_a_run_stopped_at_any_step_is_finished_by_the_next(small_world, clean, tmp_path, stop):
    uris = small_world.wat_uris()
    stopped_run(uris[:2], tmp_path, "commit")  # an earlier run, whole
    stopped_run(uris, tmp_path, stop)
    assert set(ingest_files(uris, str(tmp_path), SETTINGS)) == {n for n in output_names(uris[2:])}
    assert (published(tmp_path), store_rows(tmp_path)) == clean


def test_a_reingest_stopped_after_publishing_is_undone_by_a_run_with_the_first_settings(small_world, clean, tmp_path):
    """Files published again with other settings, then a stop before the commit: a run with the first settings
    must not take them for committed (pairs/ holds the other settings' rows)."""
    uris = small_world.wat_uris()
    stopped_run(uris, tmp_path, "commit")
    stopped_run(uris, tmp_path, "publish", ExtractSettings(detect_language=False, min_alt_length=20))
    assert set(ingest_files(uris, str(tmp_path), SETTINGS)) == set(output_names(uris))
    assert (published(tmp_path), store_rows(tmp_path)) == clean


def test_a_reingest_stopped_in_its_dedup_leaves_the_files_committed(small_world, clean, tmp_path):
    """Nothing of the other settings was published: the files stay committed (a store shared by crawls must not
    take their rows for no one's), and a run with the first settings has nothing to do."""
    uris = small_world.wat_uris()
    stopped_run(uris, tmp_path, "commit")
    stopped_run(uris, tmp_path, "dedup", ExtractSettings(detect_language=False, min_alt_length=20))
    store = layout.uid_store(str(tmp_path / "pairs"))
    assert sorted(uidstore.read_files(store).column("name").to_pylist()) == sorted(output_names(uris))
    assert ingest_files(uris, str(tmp_path), SETTINGS) == {}
    assert (published(tmp_path), store_rows(tmp_path)) == clean


def test_a_rerun_extracts_nothing_and_removes_leftover_staging(small_world, clean, tmp_path):
    uris = small_world.wat_uris()
    ingest_files(uris, str(tmp_path), SETTINGS)
    leftover = layout.staged_uids(str(tmp_path / "pairs"), output_names(uris)[0])
    dedup.write_uids(leftover, u64([1]))  # as a run stopped while removing staging leaves it
    assert ingest_files(uris, str(tmp_path), SETTINGS) == {}
    assert (published(tmp_path), store_rows(tmp_path)) == clean


def test_other_extract_settings_publish_every_file_again(small_world, tmp_path):
    uris = small_world.wat_uris()
    stricter = ExtractSettings(detect_language=False, min_alt_length=20)
    ingest_files(uris, str(tmp_path / "fresh"), stricter, partitions=8)
    ingest_files(uris[:3], str(tmp_path / "again"), SETTINGS, partitions=8)
    again = ingest_files(uris, str(tmp_path / "again"), stricter)
    assert len(again) == len(uris)
    assert published(tmp_path / "again") == published(tmp_path / "fresh")
    assert store_rows(tmp_path / "again") == store_rows(tmp_path / "fresh")


def test_a_cached_extraction_is_used_only_while_its_staging_holds_it(small_world, tmp_path):
    uris = small_world.wat_uris()[:4]
    names = output_names(uris)
    pairs = layout.pairs_dir(str(tmp_path))
    extract_file(uris[0], str(tmp_path), names[0], SETTINGS)
    extract_file(uris[1], str(tmp_path), names[1], ExtractSettings(detect_language=False, min_alt_length=20))
    extract_file(uris[0], str(tmp_path), names[3], SETTINGS)  # a file of the same name from elsewhere
    run = incremental.plan(layout.uid_store(pairs), pairs, uris, SETTINGS, 4)
    # staging: this extraction, other settings, none, another file's
    assert [n for _, n in run.new] == names and run.refresh == set(names[1:])


@pytest.mark.parametrize("shared", [False, True])
def test_an_out_folder_moved_elsewhere_keeps_its_store(small_world, clean, tmp_path, monkeypatch, shared):
    uris = small_world.wat_uris()
    crawl = "CC-MAIN-2099-13" if shared else ""  # a store OUT/_uids shared by crawls, or the crawl's own
    store = (lambda root: str(root / "_uids")) if shared else (lambda root: None)
    ingest_files(uris[:2], str(tmp_path / "a" / crawl), SETTINGS, store(tmp_path / "a"), partitions=8)
    (tmp_path / "a").rename(tmp_path / "b")
    monkeypatch.chdir(tmp_path)  # and named relative to another working directory
    again = ingest_files(uris, str(Path("b") / crawl), SETTINGS, store(Path("b")))
    assert set(again) == set(output_names(uris[2:])), "the files published before are not extracted again"
    if shared:
        assert published(tmp_path / "b" / crawl) == clean[0]
    else:
        assert (published(tmp_path / "b"), store_rows(tmp_path / "b")) == clean


def test_a_published_file_keeps_its_name_when_another_of_that_name_is_listed(small_world, tmp_path):
    """Names are the files' identity in pairs/: a file published as `x` stays `x` when a file named x from another
    folder joins a later run (that one gets a hashed name), and a file named x listed alone from another folder
    is taken for the one published (listed in Run.elsewhere, not ingested again)."""
    uris = small_world.wat_uris()
    other = tmp_path / "elsewhere" / Path(uris[0]).name  # another file, the same name
    other.parent.mkdir()
    shutil.copy(uris[1], other)
    out = tmp_path / "out"
    ingest_files([uris[0]], str(out), SETTINGS, partitions=8)
    [name] = published(out)
    pairs = layout.pairs_dir(str(out))
    alone = incremental.plan(layout.uid_store(pairs), pairs, [str(other)], SETTINGS, 8)
    assert (alone.new, alone.elsewhere) == ([], [(name, uris[0], str(other))])
    again = ingest_files([uris[0], str(other)], str(out), SETTINGS)
    assert list(again) == [output_names([uris[0], str(other)])[1]] and again[list(again)[0]]["kept"] > 0
    assert set(published(out)) == {name, *again}
    both = tmp_path / "both"  # published together: both under hashed names, which they keep when listed alone
    assert len(ingest_files([uris[0], str(other)], str(both), SETTINGS, partitions=8)) == 2
    assert ingest_files([str(other)], str(both), SETTINGS) == {}
    assert ingest_files([uris[0], uris[0]], str(both), SETTINGS) == {}


def test_a_file_whose_publish_fails_is_not_committed(small_world, clean, tmp_path):
    uris = small_world.wat_uris()
    ingest_files(uris[:3], str(tmp_path), SETTINGS, partitions=8)
    stricter = ExtractSettings(detect_language=False, min_alt_length=20)
    pairs = layout.pairs_dir(str(tmp_path))
    run = incremental.plan(layout.uid_store(pairs), pairs, uris[:3], stricter, 8)
    kept = sum(extract_file(uri, str(tmp_path), name, stricter)["kept"] for uri, name in run.new)
    tasks = incremental.prepare_dedup(run, run.new, kept, 10**9)
    for first, last, losers in tasks:
        dedup.dedup_partitions(run.store, first, last, losers)
    losers = [t[2] for t in tasks]
    incremental.before_publish(run)
    failing = run.new[0][1]  # its publish fails: the others are published and committed
    stats = {name: (uri, publish_file(str(tmp_path), name, i, losers)) for i, (uri, name) in enumerate(run.new)}
    incremental.commit(run, {name: s for name, s in stats.items() if name != failing})
    assert failing not in uidstore.read_files(run.store).column("name").to_pylist()
    again = ingest_files(uris, str(tmp_path), SETTINGS)  # the file's old settings: it is redone
    assert failing in again and (published(tmp_path), store_rows(tmp_path)) == clean
