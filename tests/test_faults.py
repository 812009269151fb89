"""Faults on a tiny synthetic world: a Dask worker killed in the middle of a stage, the pipeline's own process
killed and run again, a task killed while it writes. Nothing finished is lost or duplicated, nothing half-written
is taken for finished, and a rerun redoes only what had not finished.

The module has a cluster of its own (its workers get killed) and compares every faulty run with one clean run
of `clipcrawl run` on the same world and settings."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from distributed import Client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
)

from clipcrawl.flows.download import download_images
from clipcrawl.flows.embed import embed_and_filter
from clipcrawl.flows.runner import local_cluster, prefect_api_url, task_runner
from clipcrawl.tasks.core.config import (
    DownloadSettings,
    EmbedSettings,
    ExtractSettings,
    IndexSettings,
    QualityGates,
    ReportSettings,
    load_config,
)
from clipcrawl.tasks.core.layout import published_shards, shard_stem
from clipcrawl.tasks.core.uri import listdir
from clipcrawl.tasks.download.shards import plan_shards, tar_members
from clipcrawl.tasks.download.stage import download_shard, download_shard_task
from clipcrawl.tasks.embed.stage import embed_shard, embed_shard_task
from clipcrawl.tasks.index.stage import find_shards
from clipcrawl.tasks.ingest.stage import extract_file, publish_file
from clipcrawl.tasks.report.stage import report_shards
from clipcrawl.tasks.world import ImageServer, WorldSpec, generate_world, tiny_clip
from clipcrawl.tasks.world.groundtruth import compare_downloads

ROOT = Path(__file__).resolve().parents[1]
SHARD_SIZE = 30  # ~216 pairs: 8 shards, so that a kill finds some finished and some in flight
RUN_TIMEOUT_S = 420
pytestmark = pytest.mark.timeout(900)

# Runs one shard's work in a process of its own, to be killed: argv[1] is JSON with the stage, its arguments, and
# optionally `stall`: the file name ending at which every atomic write stops after writing, before publishing
# (creating `marker` first), as a process killed at that moment would leave it.
WORKER = r"""
import contextlib, importlib, json, sys, time

import clipcrawl.tasks.core.uri

args = json.loads(sys.argv[1])
real = clipcrawl.tasks.core.uri.atomic_write

@contextlib.contextmanager
def stalling(uri, mode="wb"):
    with real(uri, mode) as f:
        yield f
        if args.get("stall") and uri.endswith(args["stall"]):
            f.flush()
            open(args["marker"], "w").close()
            time.sleep(3600)

module = importlib.import_module({"download": "clipcrawl.tasks.download.shards", "embed": "clipcrawl.tasks.embed.stage", "publish": "clipcrawl.tasks.ingest.stage"}[
    args["stage"]])
clipcrawl.tasks.core.uri.atomic_write = module.atomic_write = stalling
if args["stage"] == "download":
    from clipcrawl.tasks.core.config import DownloadSettings
    from clipcrawl.tasks.download.stage import download_shard, download_shard_task
    from clipcrawl.tasks.download.shards import ShardSpec
    spec = ShardSpec(args["shard"], tuple(tuple(s) for s in args["slices"]))
    download_shard(spec, args["out"], DownloadSettings(**args["settings"]))
elif args["stage"] == "embed":
    from clipcrawl.tasks.core.config import EmbedSettings
    clipcrawl.tasks.embed.stage.embed_shard(args["tar"], args["out"], EmbedSettings(**args["settings"]))
else:
    clipcrawl.tasks.ingest.stage.publish_file(args["out"], args["name"], 0, [])
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = WorldSpec(seed=7, segments=1, files_per_segment=2, pages_per_file=12, images=120, warc=False)
    return generate_world(tmp_path_factory.mktemp("faults-world"), spec)


@pytest.fixture(scope="module")
def cluster(prefect_api):
    """Two CPU workers and one GPU=1 worker, each under a nanny that restarts it when it is killed."""
    cluster = local_cluster(cpu_workers=2, gpu_workers=1, memory_limit="4GiB")
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def server(world):
    with ImageServer(world.root) as server:
        yield server


@pytest.fixture(scope="module")
def config(server, tmp_path_factory) -> Path:
    """The settings of every run here, as `clipcrawl run --config` reads them (gates only warn: a tiny world)."""
    gates = {name: {"threshold": gate.threshold, "action": "warn"} for name, gate in QualityGates()}
    settings = {
        "download": server.download_settings(shard_size=SHARD_SIZE, image_threads=1).model_dump(
            mode="json", exclude={"consent"}
        ),
        "embed": tiny_clip.embed_settings(batch_size=64).model_dump(mode="json"),
        "index": IndexSettings(near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD).model_dump(mode="json"),
        "report": ReportSettings(gates=gates).model_dump(mode="json"),
    }
    path = tmp_path_factory.mktemp("faults-config") / "clipcrawl.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def clean(cluster, world, config, tmp_path_factory) -> Path:
    """OUT of a clean `clipcrawl run` (no fault) with this module's settings."""
    out = tmp_path_factory.mktemp("faults-clean")
    proc = start_run(cluster, world, config, out)
    assert finish(proc, out) == 0, log_tail(out)
    return out


def start_run(cluster, world, config: Path, out: Path) -> subprocess.Popen:
    """`clipcrawl run` on the world into OUT, in a process of its own, on the module's cluster and API."""
    env = os.environ | {"PREFECT_API_URL": prefect_api_url(), "CLIPCRAWL_DASK_ADDRESS": cluster.scheduler_address}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from clipcrawl.flows.cli import main; main(sys.argv[1:])",
        "run",
        "--crawl",
        world.crawl_id,
        "--source",
        str(world.root),
        "--out",
        str(out),
        "--config",
        str(config),
        "--dask-address",
        cluster.scheduler_address,
    ]
    with open(f"{out}.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, out: Path, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"clipcrawl run not done after {timeout} s: {log_tail(out)}") from None


def log_tail(out: Path) -> str:
    path = Path(f"{out}.log")
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def settings(config: Path, stage: str, model):
    return model(**load_config(config)[stage])


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = RUN_TIMEOUT_S):
    """Poll `condition` until it returns something true; fail if `proc` ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout} s")


def stems(folder: Path, pattern: str, suffix: str) -> set[str]:
    return {p.name.removesuffix(suffix) for p in folder.glob(pattern)}


def shards_in_flight(images: Path) -> set[str] | None:
    """The shards being written (a temporary tar, no stats yet), once at least one shard is finished."""
    finished = stems(images, "*_stats.json", "_stats.json")
    writing = {p.name.split(".")[0] for p in images.glob("*.tar.tmp-*")} - finished
    return writing if finished and writing else None


def leftovers(out: Path) -> list[Path]:
    return sorted(out.rglob("*.tmp-*"))


def mtime(folder: Path, name: str) -> int | None:
    path = folder / name
    return path.stat().st_mtime_ns if path.exists() else None


def persisted(out: Path, keys: dict[str, str]) -> set[str]:
    """The names whose task result (at its cache key) is whole in OUT/_results: a rerun of them is a cache hit."""
    done = set()
    for name, key in keys.items():
        try:
            json.loads((out / "_results" / key).read_bytes())
        except (OSError, ValueError):
            continue
        done.add(name)
    return done


class WorkerKiller:
    """A thread that SIGKILLs the workers offering `resource` that are executing a task, once `when()` returns
    something true (kept as `.when`: what the outputs looked like then); `.killed` holds {worker address: pid}."""

    def __init__(self, client: Client, resource: str, when):
        self.client, self.resource, self.condition = client, resource, when
        self.when, self.killed, self.error = None, {}, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-killer", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self.killed:
                if found := self.condition():
                    ours = [
                        a for a, w in self.client.scheduler_info()["workers"].items() if self.resource in w["resources"]
                    ]
                    executing = self.client.run(lambda dask_worker: len(dask_worker.state.executing), workers=ours)
                    if targets := [a for a, n in executing.items() if n]:
                        self.when = found
                        self.killed = self.client.run(os.getpid, workers=targets)
                        for pid in self.killed.values():
                            os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def snapshot(out: Path, stages=("pairs", "images", "embeddings", "dataset", "index")) -> dict:
    """What a run published, by file: the pairs' uids, each image shard's (key, url, status) rows and tar members,
    each embedded shard's keys in row order and vector counts, the dataset's keys, the index's size."""
    snap: dict[str, object] = {}
    if "pairs" in stages:
        for p in sorted((out / "pairs").glob("*.parquet")):
            snap[f"pairs/{p.name}"] = sorted(pq.read_table(p, columns=["uid"]).column("uid").to_pylist())
    if "images" in stages:
        for p in sorted((out / "images").glob("*.parquet")):
            rows = pq.read_table(p, columns=["key", "url", "status"]).to_pylist()
            snap[f"images/{p.name}"] = [(r["key"], r["url"], r["status"]) for r in rows]
            with tarfile.open(p.with_suffix(".tar")) as tar:
                snap[f"images/{p.stem}.tar"] = sorted(tar.getnames())
    if "embeddings" in stages:
        emb = out / "embeddings"
        for p in sorted((emb / "metadata").glob("*.parquet")):
            stem = p.stem.removeprefix("metadata_")
            snap[f"embeddings/{stem}"] = (
                pq.read_table(p, columns=["key"]).column("key").to_pylist(),
                len(np.load(emb / "img_emb" / f"img_emb_{stem}.npy")),
                len(np.load(emb / "text_emb" / f"text_emb_{stem}.npy")),
            )
    if "dataset" in stages:
        for p in sorted((out / "dataset").glob("part-*.parquet")):
            snap[f"dataset/{p.name}"] = sorted(pq.read_table(p, columns=["key"]).column("key").to_pylist())
    if "index" in stages:
        snap["index/ids.parquet"] = pq.read_metadata(out / "index" / "ids.parquet").num_rows
    return snap


def assert_no_duplicates(out: Path, embedded: bool = True) -> None:
    """Every sample key once in images/ and once in embeddings/; a success's three members once in its tar."""
    keys = Counter(
        k
        for p in (out / "images").glob("*.parquet")
        for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()
    )
    assert keys and max(keys.values()) == 1
    if embedded:
        rows = Counter(
            k
            for p in (out / "embeddings" / "metadata").glob("*.parquet")
            for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()
        )
        assert rows and max(rows.values()) == 1 and set(rows) <= set(keys)
    for tar_path in (out / "images").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            names = Counter(tar.getnames())
        assert not names or max(names.values()) == 1


def stage_task_states(out: Path, since: dt.datetime) -> dict[str, str]:
    """{task run name: state name} of every flow run started after `since` on OUT (the pipeline's stage subflows)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)), limit=200
        )
        ids = [r.id for r in runs if r.parameters.get("out") == str(out)]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200)
    return {t.name: t.state.name for t in tasks}


@pytest.mark.slow
def test_a_worker_killed_mid_download_loses_and_duplicates_nothing(cluster, world, config, clean, tmp_path):
    out = tmp_path / "out"
    address = cluster.scheduler_address
    download = settings(config, "download", DownloadSettings)
    specs = plan_shards(listdir(str(clean / "pairs"), ".parquet"), download.shard_size)
    results = {
        f"{s.shard:05d}": download_shard_task.cache_key_fn(None, {"spec": s, "out": str(out), "settings": download})
        for s in specs
    }

    def downloading():  # some shards' results persisted (a rerun is a cache hit), others being written
        done, writing = persisted(out, results), shards_in_flight(out / "images")
        if done and writing:
            return {
                "writing": writing,
                "finished": {f"{n}_stats.json": mtime(out / "images", f"{n}_stats.json") for n in done},
            }
        return None

    with Client(address) as client, WorkerKiller(client, "CPU", downloading) as killer:
        state = download_images.with_options(task_runner=task_runner(address))(
            pairs=str(clean / "pairs"), out=str(out), settings=download, return_state=True
        )
    assert killer.error is None and killer.killed, killer.error or "no CPU worker was killed mid-download"
    assert state.is_completed(), state.message
    assert state.result()["shards"] == len(specs) and not state.result()["failed"]

    # what had finished before the kill was not written again (a finished task's result that the killed worker
    # held is computed again by Dask, and the persistent cache answers it); what was being written was, in full
    before = killer.when["finished"]
    assert {name: mtime(out / "images", name) for name in before} == before
    assert killer.when["writing"] <= stems(out / "images", "*_stats.json", "_stats.json")
    assert snapshot(out, ("images",)) == snapshot(clean, ("images",))
    assert compare_downloads(world, str(out))["equal"]
    assert_no_duplicates(out, embedded=False)
    # the killed writers' temporary tars may be left; no listing takes them for shards
    assert {p.name.split(".")[0] for p in (out / "images").glob("*.tmp-*")} <= killer.when["writing"]
    assert len(published_shards(str(out / "images"))) == len(specs)


@pytest.mark.slow
def test_pipeline_killed_mid_run_resumes_from_cache_to_the_clean_outputs(cluster, world, config, clean, tmp_path):
    out = tmp_path / "out"
    first = start_run(cluster, world, config, out)

    def mid_download():  # the shards and pair files finished while some shards are being written
        if writing := shards_in_flight(out / "images"):
            return (
                stems(out / "images", "*_stats.json", "_stats.json") - writing,
                stems(out / "pairs", "*.stats.json", ".stats.json"),
            )
        return None

    try:
        shards, pairs = wait_for(mid_download, "download shards in flight", first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert shards and pairs
    assert not (out / "embeddings").exists()  # killed in the download stage

    since = dt.datetime.now(dt.UTC)
    second = start_run(cluster, world, config, out)
    assert finish(second, out) == 0, log_tail(out)

    states = stage_task_states(out, since)
    cached = {name for name, state in states.items() if state == "Cached"}
    assert {f"download-{s}" for s in shards} <= cached, states
    assert not {f"extract-{name}" for name in pairs} & set(states), states  # in the uid store: no task run
    assert not {name for name in cached if name.startswith("embed-")}  # never run before the kill
    assert snapshot(out) == snapshot(clean)
    assert compare_downloads(world, str(out))["equal"]
    assert_no_duplicates(out)


def run_killed(tmp_path: Path, args: dict, published) -> Path:
    """Run WORKER with ARGS in a process of its own and SIGKILL it once `published()` says it is mid-write;
    returns the marker's path."""
    marker = tmp_path / "stalled"
    args = args | {"marker": str(marker)}
    with open(tmp_path / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(args)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(published if not args.get("stall") else marker.exists, "the write to kill", proc, timeout=180)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {(tmp_path / 'worker.log').read_text()[-2000:]}") from None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return marker


@pytest.mark.parametrize("stall", [None, "_stats.json"], ids=["mid-tar", "before-stats"])
def test_a_download_killed_while_writing_leaves_nothing_taken_for_a_shard(clean, config, tmp_path, stall):
    out = tmp_path / "out"
    images = out / "images"
    download = settings(config, "download", DownloadSettings)
    specs = plan_shards(listdir(str(clean / "pairs"), ".parquet"), download.shard_size)
    # a shard with an image that hangs until the timeout: its tar is open for seconds
    spec = next(
        s
        for s in specs
        if "timeout"
        in pq.read_table(clean / "images" / f"{s.shard:05d}.parquet", columns=["status"]).column("status").to_pylist()
    )
    name = f"{spec.shard:05d}"
    args = {
        "stage": "download",
        "shard": spec.shard,
        "slices": spec.slices,
        "out": str(out),
        "settings": download.model_dump(mode="json"),
        "stall": stall,
    }
    run_killed(tmp_path, args, lambda: any(p.stat().st_size for p in images.glob(f"{name}.tar.tmp-*")))

    assert leftovers(out), "killed before it wrote anything"
    published = {p.name for p in images.iterdir() if ".tmp-" not in p.name}
    assert published == ({f"{name}.tar", f"{name}.parquet"} if stall else set())
    # what the next stages and the report list as finished shards
    assert published_shards(str(images)) == [] and report_shards(str(out)) == []

    stats = download_shard(spec, str(out), download)  # the rerun, beside the leftovers
    assert stats["count"] == spec.num_rows
    assert published_shards(str(images)) == [str(images / f"{name}.tar")] and report_shards(str(out)) == [name]
    assert snapshot(out, ("images",)) == {
        k: v for k, v in snapshot(clean, ("images",)).items() if k.startswith(f"images/{name}.")
    }
    assert set(tar_members(str(images / f"{name}.tar"))) == {
        k for k, _, status in snapshot(out, ("images",))[f"images/{name}.parquet"] if status == "success"
    }


@pytest.mark.parametrize("stall", ["metadata_00000.parquet", "part-00000.parquet"], ids=["metadata", "dataset"])
def test_an_embedding_killed_while_writing_leaves_nothing_taken_for_a_shard(clean, config, tmp_path, stall):
    out = tmp_path / "out"
    tar = clean / "images" / "00000.tar"
    embed = settings(config, "embed", EmbedSettings)
    run_killed(
        tmp_path,
        {"stage": "embed", "tar": str(tar), "out": str(out), "settings": embed.model_dump(mode="json"), "stall": stall},
        None,
    )

    assert [p.name.split(".tmp-")[0] for p in leftovers(out)] == [stall]
    assert not (out / "dataset" / "part-00000_stats.json").exists()
    # the index takes a shard whose metadata, vectors and dataset part are all published: not this one
    assert find_shards(str(out / "embeddings"), str(out / "dataset"), 0, 0, set()) == []

    embed_shard(str(tar), str(out), embed)  # the rerun, beside the leftover
    [shard] = find_shards(str(out / "embeddings"), str(out / "dataset"), 0, 0, set())
    assert shard.stem == "00000" and shard.count == len(pq.read_table(out / "dataset" / "part-00000.parquet"))
    stages = ("embeddings", "dataset")
    assert snapshot(out, stages) == {k: v for k, v in snapshot(clean, stages).items() if "00000" in k}
    for folder in ("img_emb", "text_emb"):
        name = f"{folder}_00000.npy"
        np.testing.assert_allclose(
            np.load(out / "embeddings" / folder / name).astype(np.float32),
            np.load(clean / "embeddings" / folder / name).astype(np.float32),
            atol=2e-3,
        )


@pytest.mark.parametrize("stall", [".parquet", ".stats.json"], ids=["mid-parquet", "before-stats"])
def test_a_pairs_file_killed_while_publishing_leaves_nothing_taken_for_pairs(clean, tmp_path, stall):
    out = tmp_path / "out"
    pairs = out / "pairs"
    first = min((clean / "pairs").glob("*.parquet"))  # the run's first file: it loses no cross-file duplicates
    name = first.stem
    clean_pairs = {f"pairs/{name}.parquet": snapshot(clean, ("pairs",))[f"pairs/{name}.parquet"]}
    source = pq.read_table(first, columns=["source"]).column("source")[0].as_py()
    extract_file(source, str(out), name, ExtractSettings())  # the staging area that publishing starts from
    run_killed(tmp_path, {"stage": "publish", "out": str(out), "name": name, "stall": name + stall}, None)

    assert [p.name.split(".tmp-")[0] for p in leftovers(out)] == [name + stall]
    listed = listdir(str(pairs), ".parquet")  # what the download stage reads
    if stall == ".parquet":
        assert listed == [] and plan_shards(listed, SHARD_SIZE) == []
    else:  # the pairs file is whole; only the completion marker (which the report lists) is missing
        assert listed == [str(pairs / f"{name}.parquet")] and not (pairs / f"{name}.stats.json").exists()
        assert snapshot(out, ("pairs",)) == clean_pairs

    publish_file(str(out), name, 0, [])  # the rerun, beside the leftover
    assert listdir(str(pairs), ".parquet") == [str(pairs / f"{name}.parquet")]
    assert (pairs / f"{name}.stats.json").exists()
    assert snapshot(out, ("pairs",)) == clean_pairs


# Last in the module: a GPU worker that does not come back leaves the embed tasks of every later run waiting.
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_gpu_worker_killed_mid_embedding_loses_and_duplicates_nothing(cluster, config, clean, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean / "images", out / "images")
    address = cluster.scheduler_address
    embed = settings(config, "embed", EmbedSettings)
    tars = published_shards(str(out / "images"))
    results = {
        shard_stem(t): embed_shard_task.cache_key_fn(None, {"tar_uri": t, "out": str(out), "settings": embed})
        for t in tars
    }

    def embedding():  # some shards embedded (a rerun is a cache hit), not all: the GPU worker is on the next ones
        if 0 < len(done := persisted(out, results)) < len(tars):
            return {"finished": {f"part-{n}_stats.json": mtime(out / "dataset", f"part-{n}_stats.json") for n in done}}
        return None

    with Client(address) as client:
        with WorkerKiller(client, "GPU", embedding) as killer:
            state = embed_and_filter.with_options(task_runner=task_runner(address))(
                images=str(out / "images"), out=str(out), settings=embed, return_state=True
            )
        assert killer.error is None and killer.killed, killer.error or "the GPU worker was not killed"
        assert state.is_completed(), state.message
        assert state.result()["shards"] == len(tars) and not state.result()["failed"]
        # the nanny brought the GPU worker back, with its resource
        assert any("GPU" in w["resources"] for w in client.scheduler_info()["workers"].values())

    before = killer.when["finished"]
    assert {name: mtime(out / "dataset", name) for name in before} == before
    stages = ("embeddings", "dataset")
    assert snapshot(out, stages) == snapshot(clean, stages)
    assert_no_duplicates(out)
