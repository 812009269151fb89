"""No silent waits: a stage whose tasks need a Dask resource no live worker offers fails with one line naming it,
after CLIPCRAWL_NO_WORKER_TIMEOUT seconds, instead of waiting in the scheduler's no-worker state for ever."""

from __future__ import annotations

import queue
import threading
import time

import pytest
from prefect import flow

from clipcrawl.flows import runner
from clipcrawl.flows.runner import NoWorkerError, Watchdog, local_cluster, task_runner
from tests.helpers import embed


def test_watchdog_fails_only_after_the_resource_is_missing_for_its_timeout(monkeypatch):
    seen = iter([False, True, False, False, True])
    monkeypatch.setattr(Watchdog, "offered", lambda self: next(seen))
    dog = Watchdog("embed", "GPU", timeout=0.2)
    dog.check()  # missing since now
    dog.check()  # a worker offers it: the count starts again
    assert dog.since is None
    time.sleep(0.25)
    dog.check()  # missing again, since now: 0.25 s after the first miss, but not in a row
    time.sleep(0.25)
    with pytest.raises(NoWorkerError, match=r"^embed: no live Dask worker offers the GPU resource"):
        dog.check()  # missing 0.25 s in a row
    dog.check()  # back
    assert dog.since is None


def test_watchdog_reads_its_timeout_from_the_environment_and_zero_waits_for_ever(monkeypatch):
    monkeypatch.setenv(runner.NO_WORKER_TIMEOUT_ENV, "0")
    monkeypatch.setattr(Watchdog, "offered", lambda self: False)
    dog = Watchdog("embed", "GPU")
    assert dog.timeout == 0
    dog.check()
    monkeypatch.delenv(runner.NO_WORKER_TIMEOUT_ENV)
    assert Watchdog("embed", "GPU").timeout == runner.NO_WORKER_TIMEOUT == 600


def test_embed_on_a_cluster_without_a_gpu_worker_fails_naming_the_resource(monkeypatch, prefect_api, tmp_path):
    """One published shard, embedded on a cluster of one CPU worker: its embed task can never run."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "00000.tar").write_bytes(b"")  # never read: no worker may take the task
    (images / "00000_stats.json").write_text("{}")
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.5)
    monkeypatch.setenv(runner.NO_WORKER_TIMEOUT_ENV, "3")
    with local_cluster(cpu_workers=1, gpu_workers=0, memory_limit="1GiB") as cluster:
        started = time.monotonic()
        state = embed(cluster.scheduler_address, tmp_path)
        waited = time.monotonic() - started
    assert state.is_failed()
    with pytest.raises(NoWorkerError, match=r"embed: no live Dask worker offers the GPU resource .*waited 3 s"):
        state.result()
    assert 3 <= waited < 60, waited


class _Future:
    """A future that finishes `after` seconds from now, on a thread of its own (as Dask calls done callbacks)."""

    def __init__(self, name: str, after: float):
        self.name, self.after = name, after

    def add_done_callback(self, fn):
        threading.Timer(self.after, fn, args=(self,)).start()


def test_a_slow_stage_with_its_workers_passes_and_every_future_comes_once(monkeypatch):
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.05)
    asked = []
    monkeypatch.setattr(Watchdog, "offered", lambda self: asked.append(1) or True)
    futures = [_Future(str(i), 0.1 + 0.1 * i) for i in range(5)]
    dog = Watchdog("download", "CPU", timeout=0.01)  # far below the stage's 0.5 s: the workers are there
    finished = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    got = [runner._next_finished(finished, dog).name for _ in futures]
    assert got == ["0", "1", "2", "3", "4"]
    assert asked  # the watchdog asked while nothing finished


def test_a_scheduler_that_cannot_answer_is_no_missing_resource(monkeypatch):
    class Runner(runner.DaskTaskRunner):
        @property
        def client(self):
            raise OSError("Timed out trying to connect to tcp://127.0.0.1:8786")

    class Context:
        task_runner = Runner()

    monkeypatch.setattr(runner.FlowRunContext, "get", staticmethod(lambda: Context))
    dog = Watchdog("embed", "GPU", timeout=0.01)
    assert dog.offered() is None
    time.sleep(0.02)
    dog.check()  # no failure: unknown is not "missing"


@pytest.mark.parametrize(
    "worker, offered",
    [
        ({"resources": {"GPU": 1}, "status": "running"}, True),
        ({"resources": {"GPU": 0.5}, "status": "running"}, False),  # less than a task asks: never takes one
        ({"resources": {"CPU": 1}, "status": "running"}, False),
        ({"resources": {"GPU": 1}, "status": "paused", "metrics": {"task_counts": {}}}, False),  # takes no task
        ({"resources": {"GPU": 1}, "status": "paused", "metrics": {"task_counts": {"executing": 1}}}, True),
        ({"resources": {"GPU": 2}, "status": "closing_gracefully"}, False),
    ],
)
def test_only_a_running_worker_with_a_tasks_share_offers_the_resource(monkeypatch, worker, offered):
    class Client:
        def scheduler_info(self, n_workers):
            return {"workers": {"tcp://127.0.0.1:1": worker}}

    class Runner(runner.DaskTaskRunner):
        client = Client()

    class Context:
        task_runner = Runner()

    monkeypatch.setattr(runner.FlowRunContext, "get", staticmethod(lambda: Context))
    assert Watchdog("embed", "GPU").offered() is offered


def test_the_watchdog_reads_the_cluster_of_the_flow_it_runs_in(dask_address):
    @flow(task_runner=task_runner(dask_address))
    def ask() -> dict:
        return {resource: Watchdog("ask", resource).offered() for resource in ("CPU", "GPU", "TPU")}

    assert ask() == {"CPU": True, "GPU": True, "TPU": False}
    assert Watchdog("ask", "CPU").offered() is None  # outside a flow: nobody to ask
