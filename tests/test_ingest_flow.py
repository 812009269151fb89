"""The ingest_crawl flow on the synthetic world, through a real multi-process Dask cluster."""

from __future__ import annotations

import gzip
import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.core.status import FileStatus, PairStatus
from clipcrawl.tasks.core.uri import read_json
from clipcrawl.tasks.world.groundtruth import compare_pairs
from tests.helpers import ingest_files, run, task_states


def test_crawl_extraction_equals_ground_truth_and_reruns_from_cache(dask_address, small_world, tmp_path):
    out = tmp_path / "out"
    state = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root))
    assert state.is_completed(), state.message
    summary = state.result()
    written = read_json(str(out / "pairs" / "_summary.json"))
    report = compare_pairs(small_world, str(out))
    assert report["equal"], report
    assert summary["kept"] == len(small_world.expected_pairs())

    # the stats add up to the manifest: every img link is kept or dropped with its reason
    manifest = small_world.manifest_pairs().to_pylist()
    expected_dropped = {}
    for row in manifest:
        if row["status"] != PairStatus.KEPT:
            expected_dropped[row["status"]] = expected_dropped.get(row["status"], 0) + 1
    kept_rows = sum(r["status"] == PairStatus.KEPT for r in manifest)
    assert summary["dropped"].pop(PairStatus.DUPLICATE) == kept_rows - summary["kept"]
    assert {k: v for k, v in summary["dropped"].items() if v} == expected_dropped
    assert summary["img_links"] == len(manifest)

    # one parquet + stats per input file, with the contract's columns
    wats = small_world.wat_uris()
    for name in (p.name for p in (out / "pairs").glob("*.parquet")):
        assert (out / "pairs" / name.replace(".parquet", ".stats.json")).exists()
    assert len(list((out / "pairs").glob("*.parquet"))) == len(wats)
    table = pq.read_table(next((out / "pairs").glob("*.parquet")))
    assert {"uid", "url", "caption", "page_url", "source", "language"} <= set(table.column_names)
    assert set(table.column("source").to_pylist()) <= set(wats)

    # published files are committed to the crawl's uid store and their staging is gone
    assert sorted(p.name for p in (out / "pairs").iterdir() if p.name.startswith("_")) == ["_summary.json", "_uids"]

    # a rerun finds every file in the uid store: no task runs, the same summary
    again = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root))
    assert again.is_completed(), again.message
    assert task_states(again) == {}
    assert {k: v for k, v in again.result().items() if k not in ("wall_seconds", "new_files")} == {
        k: v for k, v in written.items() if k not in ("wall_seconds", "new_files")
    }

    # the store's listing lost: every file is ingested again, not from the cache (its staging is gone)
    (out / "pairs" / "_uids" / "files.parquet").unlink()
    lost = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root))
    assert lost.is_completed(), lost.message
    extract_states = [s for name, s in task_states(lost).items() if name.startswith("extract-")]
    assert len(extract_states) == len(wats) and set(extract_states) == {"Completed"}
    assert compare_pairs(small_world, str(out))["equal"] and lost.result()["kept"] == summary["kept"]


def test_warc_files_give_the_same_pairs_as_wat(dask_address, small_world, tmp_path):
    state = run(
        dask_address, tmp_path, crawl=small_world.crawl_id, source=str(small_world.root), kind="warc", segments=1
    )
    assert state.is_completed(), state.message
    wat = run(dask_address, tmp_path / "wat", crawl=small_world.crawl_id, source=str(small_world.root), segments=1)
    from clipcrawl.tasks.world.groundtruth import read_pair_set

    assert read_pair_set(str(tmp_path))[0] == read_pair_set(str(tmp_path / "wat"))[0]
    assert wat.result()["kept"] == state.result()["kept"] > 0


def test_a_file_listed_twice_is_ingested_once(dask_address, small_world, tmp_path):
    uri = small_world.wat_uris()[0]
    once = run(dask_address, tmp_path / "once", inputs=[uri], extract=ExtractSettings(detect_language=False))
    twice = run(dask_address, tmp_path / "twice", inputs=[uri, uri], extract=ExtractSettings(detect_language=False))
    assert twice.is_completed(), twice.message
    assert twice.result()["kept"] == once.result()["kept"] > 0
    [published] = (tmp_path / "twice" / "pairs").glob("*.parquet")
    assert pq.read_table(published).num_rows == once.result()["kept"]


def test_bad_files_fail_alone_and_are_listed(dask_address, small_world, tmp_path):
    good, other = small_world.wat_uris()[:2]
    truncated = tmp_path / "truncated.warc.wat.gz"
    data = Path(other).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_warc = tmp_path / "notes.warc.wat.gz"
    not_warc.write_bytes(gzip.compress(b"this is not a WARC file\n" * 100))
    missing = str(tmp_path / "missing.warc.wat.gz")
    out = tmp_path / "out"

    state = run(dask_address, out, inputs=[good, str(truncated), str(not_warc), missing], retries=0)
    assert state.is_failed()
    assert "2 of 4 files failed" in state.message
    assert "notes.warc.wat.gz" in state.message and "missing.warc.wat.gz" in state.message
    summary = json.loads((out / "pairs" / "_summary.json").read_text())
    assert {f["uri"] for f in summary["failed"]} == {str(not_warc), missing}
    stats = json.loads((out / "pairs" / "truncated.stats.json").read_text())
    assert stats["status"] == FileStatus.PARTIAL and "truncated" in stats["uri"] and stats["error"]
    assert stats["kept"] > 0
    assert pq.read_table(out / "pairs" / "truncated.parquet").num_rows == stats["kept"]
    assert pq.read_table(out / "pairs" / f"{good.rsplit('/', 1)[1].removesuffix('.warc.wat.gz')}.parquet").num_rows > 0


class Flaky(http.server.SimpleHTTPRequestHandler):
    """Answers 503 Slow Down to the first requests, then serves files."""

    failures_left = 2

    def do_GET(self):
        if Flaky.failures_left > 0:
            Flaky.failures_left -= 1
            self.send_error(503, "Slow Down")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_transient_errors_are_retried_with_backoff(dask_address, small_world, tmp_path):
    wat = small_world.wat_uris()[0]
    shutil.copy(wat, tmp_path / "a.warc.wat.gz")
    handler = lambda *a, **k: Flaky(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/a.warc.wat.gz"
        state = run(
            dask_address,
            tmp_path / "out",
            inputs=[url],
            retries=3,
            retry_delay=0.2,
            extract=ExtractSettings(detect_language=False),
        )
    finally:
        server.shutdown()
    assert state.is_completed(), state.message
    assert Flaky.failures_left == 0
    assert state.result()["kept"] > 0


def test_scheduled_ingestion_takes_new_segments_of_new_crawls_per_run(dask_address, small_world, tmp_path):
    from clipcrawl.flows.ingest import ingest_new_crawls
    from clipcrawl.tasks.core.config import IngestSettings
    from clipcrawl.tasks.core.uri import read_json
    from clipcrawl.tasks.world import WorldSpec, generate_world

    newer = generate_world(
        tmp_path / "newer",
        WorldSpec(seed=3, crawl_id="CC-MAIN-2099-20", segments=2, files_per_segment=1, pages_per_file=10, warc=False),
    )
    source = tmp_path / "source"
    (source / "crawl-data").mkdir(parents=True)
    for world in (newer, small_world):
        (source / "crawl-data" / world.crawl_id).symlink_to(f"{world.root}/crawl-data/{world.crawl_id}")
    collinfo = source / "collinfo.json"
    collinfo.write_text(json.dumps([{"id": c} for c in ("CC-MAIN-2099-20", "CC-MAIN-2099-13", "CC-MAIN-2098-01")]))
    out = tmp_path / "crawls"

    def scheduled_run():
        state = ingest_new_crawls(
            out=str(out),
            settings=IngestSettings(source=str(source)),
            collinfo=str(collinfo),
            max_segments=3,
            oldest="CC-MAIN-2099-01",
            dask_address=dask_address,
            return_state=True,
        )
        assert state.is_completed(), state.message
        return state.result()

    def segments(crawl):
        return read_json(str(out / crawl / "pairs" / "_summary.json"))["segments"]

    first = scheduled_run()  # the newer crawl whole (2 segments), then 1 of the older crawl's 2
    older = small_world.crawl_id
    assert {c: r["new_segments"] for c, r in first.items()} == {
        "CC-MAIN-2099-20": segments("CC-MAIN-2099-20"),
        older: segments(older),
    }
    assert len(segments("CC-MAIN-2099-20")) == 2 and len(segments(older)) == 1
    assert compare_pairs(newer, str(out / "CC-MAIN-2099-20"))["equal"]

    second = scheduled_run()  # the older crawl's last segment, deduplicated against its first
    assert list(second) == [older] and len(second[older]["segments"]) == 2
    assert compare_pairs(small_world, str(out / older))["equal"]
    assert not (out / "CC-MAIN-2098-01").exists(), "crawls older than `oldest` are left alone"
    assert scheduled_run() == {}


class Drip(http.server.BaseHTTPRequestHandler):
    """Serves the first bytes of a file, then one byte every 0.2 s, for longer than any test waits."""

    path_on_disk = ""

    def do_GET(self):
        data = Path(Drip.path_on_disk).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:4096])
        for byte in data[4096 : 4096 + 600]:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.2)

    def log_message(self, *args):
        pass


def test_a_file_that_drips_forever_times_out_alone(dask_address, small_world, tmp_path):
    good, slow = small_world.wat_uris()[:2]
    Drip.path_on_disk = slow
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{slow.rsplit('/', 1)[1]}"
    out = tmp_path / "out"
    started = time.monotonic()
    try:
        state = run(
            dask_address,
            out,
            inputs=[good, url],
            retries=0,
            file_timeout=5,
            extract=ExtractSettings(detect_language=False),
        )
    finally:
        server.shutdown()
    assert time.monotonic() - started < 100, "the dripping file held the run past its timeout"
    assert state.is_failed() and "1 of 2 files failed" in state.message
    summary = json.loads((out / "pairs" / "_summary.json").read_text())
    assert [f["uri"] for f in summary["failed"]] == [url]
    assert "exceeded timeout of 5.0 second" in summary["failed"][0]["error"]
    assert summary["kept"] > 0 and summary["files"] == 2


def test_switching_cross_crawl_for_an_ingested_out_fails_with_the_reason(dask_address, small_world, tmp_path):
    """A crawl published against its own store cannot go on against the shared one, nor the other way round:
    its files would be extracted and published again (and a crawl dedup against a store that lacks them)."""
    from clipcrawl.flows.ingest import ingest_new_crawls
    from clipcrawl.tasks.core.config import IngestSettings

    source, collinfo = crawl_source(tmp_path, small_world)
    settings = IngestSettings(source=str(source), extract=ExtractSettings(detect_language=False))
    for first, then in [(False, True), (True, False)]:
        out = tmp_path / f"crawls-{first}"
        listing = out / "_uids" if first else out / small_world.crawl_id / "pairs" / "_uids"  # the store used first
        why = f"published against the uid store {listing}, not "
        scheduled(out, source, collinfo, dask_address, max_segments=1, cross_crawl=first)
        before = sorted(p.name for p in out.rglob("*") if p.is_file())
        state = ingest_new_crawls(
            out=str(out),
            settings=settings,
            collinfo=str(collinfo),
            dask_address=dask_address,
            max_segments=1,
            cross_crawl=then,
            return_state=True,
        )
        assert state.is_failed() and small_world.crawl_id in state.message and why in state.message, state.message
        assert sorted(p.name for p in out.rglob("*") if p.is_file()) == before, "nothing published or stored"


def scheduled(out, source, collinfo, dask_address, **options) -> tuple[dict, list[str]]:
    """One ingest_new_crawls run: its result, and the names of the extract task runs of its crawls' runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from clipcrawl.flows.ingest import ingest_new_crawls
    from clipcrawl.tasks.core.config import IngestSettings

    state = ingest_new_crawls(
        out=str(out),
        settings=IngestSettings(source=str(source), extract=ExtractSettings(detect_language=False)),
        collinfo=str(collinfo),
        dask_address=dask_address,
        return_state=True,
        **options,
    )
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        parent = FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=parent))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    return state.result(), sorted(t.name for t in tasks if t.name.startswith("extract-"))


def crawl_source(tmp_path, *worlds) -> tuple[Path, Path]:
    """A source holding the worlds' crawls, and a collinfo.json listing them in the given order."""
    source = tmp_path / "source"
    (source / "crawl-data").mkdir(parents=True)
    for world in worlds:
        (source / "crawl-data" / world.crawl_id).symlink_to(f"{world.root}/crawl-data/{world.crawl_id}")
    collinfo = source / "collinfo.json"
    collinfo.write_text(json.dumps([{"id": w.crawl_id} for w in worlds]))
    return source, collinfo


def rows_by_file(pairs: Path) -> dict[str, list[dict]]:
    return {p.stem: sorted(pq.read_table(p).to_pylist(), key=lambda r: r["uid"]) for p in pairs.glob("*.parquet")}


def test_scheduled_runs_over_a_growing_crawl_equal_one_run_over_the_whole(dask_address, tmp_path):
    from clipcrawl.tasks.ingest.stage import output_names
    from clipcrawl.tasks.world import WorldSpec, generate_world

    spec = WorldSpec(seed=5, crawl_id="CC-MAIN-2099-30", segments=3, files_per_segment=1, pages_per_file=12, warc=False)
    world = generate_world(tmp_path / "world", spec)
    source, collinfo = crawl_source(tmp_path, world)
    settings = {"crawl": world.crawl_id, "source": str(source), "extract": ExtractSettings(detect_language=False)}
    whole = run(dask_address, tmp_path / "whole", **settings)
    assert whole.is_completed(), whole.message
    names = output_names(world.wat_uris())  # one file a segment, in segment order

    pairs = tmp_path / "crawls" / world.crawl_id / "pairs"
    for n in range(3):  # a segment a run, as the crawl grows
        result, extracted = scheduled(tmp_path / "crawls", source, collinfo, dask_address, max_segments=1)
        assert extracted == [f"extract-{names[n]}"], "only the new segment's file is extracted"
        assert len(result[world.crawl_id]["segments"]) == n + 1
        assert sorted(p.name for p in pairs.iterdir() if p.name.startswith("_")) == ["_summary.json", "_uids"]
        assert not list(pairs.glob("**/_next")) and not list(pairs.glob("**/*.tmp-*"))
    assert scheduled(tmp_path / "crawls", source, collinfo, dask_address, max_segments=1) == ({}, [])

    ours, theirs = rows_by_file(pairs), rows_by_file(tmp_path / "whole" / "pairs")
    assert ours == theirs
    assert (
        sum(len(r) for r in ours.values()) == whole.result()["kept"] == read_json(str(pairs / "_summary.json"))["kept"]
    )
    assert any(json.loads((pairs / f"{n}.stats.json").read_text())["duplicates_across_files"] for n in names[1:])


def test_crawls_sharing_a_uid_store_drop_the_pairs_an_earlier_crawl_published(dask_address, small_world, tmp_path):
    from clipcrawl.tasks.world import WorldSpec, generate_world

    spec = WorldSpec(seed=3, crawl_id="CC-MAIN-2099-40", segments=1, files_per_segment=1, pages_per_file=10, warc=False)
    newer = generate_world(tmp_path / "newer", spec)
    source, collinfo = crawl_source(tmp_path, newer, small_world)
    # the newer crawl also lists the older crawl's first segment: its pairs are published with the newer crawl
    listing = source / "crawl-data" / newer.crawl_id
    listing.unlink()
    listing.mkdir()
    (listing / "segments").symlink_to(f"{newer.root}/crawl-data/{newer.crawl_id}/segments")
    paths = [u.removeprefix(f"{w.root}/") for w in (newer, small_world) for u in w.wat_uris()][:3]
    (listing / "wat.paths.gz").write_bytes(gzip.compress("\n".join(paths).encode()))

    result, _ = scheduled(tmp_path / "crawls", source, collinfo, dask_address, max_segments=10, cross_crawl=True)
    assert list(result) == [newer.crawl_id, small_world.crawl_id]
    crawls = tmp_path / "crawls"
    assert (crawls / "_uids" / "files.parquet").exists() and not (crawls / newer.crawl_id / "pairs" / "_uids").exists()
    first = rows_by_file(crawls / newer.crawl_id / "pairs")
    taken = {r["uid"] for rows in first.values() for r in rows}

    alone = tmp_path / "alone"  # the older crawl ingested on its own
    uris = [str(source / u.removeprefix(f"{small_world.root}/")) for u in small_world.wat_uris()]
    ingest_files(uris, str(alone), ExtractSettings(detect_language=False))
    expected = {
        name: [r for r in rows if r["uid"] not in taken] for name, rows in rows_by_file(alone / "pairs").items()
    }
    assert rows_by_file(crawls / small_world.crawl_id / "pairs") == expected
    assert sum(map(len, expected.values())) < sum(map(len, rows_by_file(alone / "pairs").values()))
