"""Dask task runners and resource placement shared by every flow.

Workers that own a GPU offer the Dask resource GPU=1, CPU workers offer CPU=1 per
slot; embedding is submitted under `work("GPU")` (gather's resource), everything else under
`work("CPU")`, so CPU work never occupies the GPU worker and GPU work never lands on a CPU worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from uuid import UUID

import dask
from distributed import Nanny, Scheduler, SpecCluster
from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, SettingsContext
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect_dask import DaskTaskRunner

from clipcrawl.flows.artifacts import Progress
from clipcrawl.tasks.core.layout import results_dir
from clipcrawl.tasks.core.uri import is_local

GPU_PRELOAD = (
    "clipcrawl.tasks.embed.clip_model",
)  # what `dask worker --preload` imports on GPU workers (infra/ passes the same)
CPU_PRELOAD = ("clipcrawl.tasks.download.stage",)  # what the local cluster's CPU workers import as they start


def local_cluster(cpu_workers: int | None = None, gpu_workers: int = 1, memory_limit: str = "auto") -> SpecCluster:
    """A local cluster built like a real one: CPU workers plus `gpu_workers` workers offering GPU=1.

    Every worker is its own process with one thread (extraction holds the GIL; the download task's
    image threads release it). The GPU worker uses CUDA when present and the CPU otherwise. By
    default the CPU workers take every core the GPU workers leave.
    """
    cpu_workers = cpu_workers or max(1, (os.cpu_count() or 2) - gpu_workers)
    env = {"PREFECT_API_URL": prefect_api_url()}
    # a killed worker is restarted by its nanny; the cluster gives up on (and closes) a worker that is not
    # back within lost-worker-timeout (15 s by default), and a GPU worker importing torch on a loaded
    # machine takes longer: embedding would then wait forever for a GPU worker
    dask.config.set({"distributed.deploy.lost-worker-timeout": "300s"})
    # Dask's statistical profiler walks the task threads' stacks every 10 ms: a share of the download's CPU, for
    # a dashboard page nobody opens on a local run
    dask.config.set({"distributed.worker.profile.enabled": False})
    # the nanny's MALLOC_TRIM_THRESHOLD_ also fixes glibc's mmap threshold, so every body and decoded image
    # (hundreds of KB) is a fresh mmap, page-faulted in and unmapped again (docs/benchmarks.md#download has the
    # cost). glibc's adaptive defaults keep them on the heap, as in any other Python process.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
    logging.getLogger("distributed").setLevel(logging.WARNING)

    def worker(resources: dict, threads: int = 1, preload: tuple[str, ...] = ()) -> dict:
        # Dask starts workers with OMP_NUM_THREADS=1; the GPU worker's model falls back to the CPU
        # when there is no GPU, and should then use the cores as a GPU would
        return {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "resources": resources,
                "host": "127.0.0.1",
                "memory_limit": memory_limit,
                "preload": list(preload),
                "env": env | {"OMP_NUM_THREADS": str(threads)},
                "silence_logs": logging.WARNING,
            },
        }

    # CPU workers import the task modules (and Prefect) while they start, alongside the Prefect API's start,
    # rather than on their first task
    workers = {f"cpu-{i}": worker({"CPU": 1}, preload=CPU_PRELOAD) for i in range(cpu_workers)}
    # GPU workers import torch and open_clip before they join: imported by the first embed task instead, they
    # hold the GIL long enough on a loaded machine that the scheduler drops the worker (it then shuts down)
    workers |= {f"gpu-{i}": worker({"GPU": 1}, os.cpu_count() or 1, GPU_PRELOAD) for i in range(gpu_workers)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="clipcrawl-local")


def prefect_api_url() -> str:
    """The API this process reports to (also when it is a temporary one), for worker processes
    that must report their task runs to the same place rather than start their own."""
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # starts Prefect's own temporary server
        return str(client.api_url)


DASK_ADDRESS_ENV = "CLIPCRAWL_DASK_ADDRESS"


@contextlib.contextmanager
def cluster(dask_address: str | None = None, gpu_workers: int = 1):
    """The scheduler address flows run on: the given one, else $CLIPCRAWL_DASK_ADDRESS (set where a
    cluster serves the machine: infra/ sets it for Prefect workers), else a local cluster for the block
    (with `gpu_workers` GPU-tagged workers: none for the stages that embed nothing)."""
    address = dask_address or os.environ.get(DASK_ADDRESS_ENV)
    if address:
        yield address
        return
    with local_cluster(gpu_workers=gpu_workers) as local:
        yield local.scheduler_address


def task_runner(dask_address: str | None = None) -> DaskTaskRunner:
    """An existing cluster when an address is given (or in $CLIPCRAWL_DASK_ADDRESS), else a fresh local cluster."""
    address = dask_address or os.environ.get(DASK_ADDRESS_ENV)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class=local_cluster)


@contextlib.contextmanager
def work(resource: str) -> Iterator[None]:
    """Annotate the submissions inside so they run only on workers offering `resource` (CPU or GPU); gather and
    wait_result take the same name for their Watchdog. Prefect's settings are serialized once for them all."""
    with dask.annotate(resources={resource: RESOURCE_PER_TASK}), _settings_serialized_once():
        yield


class _Serialized(Mapping):
    """Prefect's serialized settings, with a Dask token computed once (Dask tokenizes each submission's arguments
    to name it: hundreds of settings for every task, otherwise)."""

    def __init__(self, settings: dict):
        self._settings, self._token = settings, dask.base.tokenize(settings)

    def __getitem__(self, key):
        return self._settings[key]

    def __iter__(self):
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def __dask_tokenize__(self) -> str:
        return self._token


class _SettingsSerializedOnce(SettingsContext):
    """The current settings context, serialized once. prefect-dask serializes the settings into every task it
    submits, a model_dump of every Prefect setting (60% of a submission's time, ~60 ms on 2 busy cores: 10,000
    files took 10 minutes to submit), though they are the same for every task of a flow run."""

    def serialize(self, include_secrets: bool = True) -> Mapping:
        cache = self.__dict__.setdefault("_clipcrawl_serialized", {})
        if include_secrets not in cache:
            cache[include_secrets] = _Serialized(super().serialize(include_secrets=include_secrets))
        return cache[include_secrets]


@contextlib.contextmanager
def _settings_serialized_once() -> Iterator[None]:
    current = SettingsContext.get()
    if current is None:
        yield
        return
    with _SettingsSerializedOnce.model_construct(profile=current.profile, settings=current.settings):
        yield


def cpu_work():
    """Annotate the submissions inside so they run on CPU workers only."""
    return work("CPU")


def result_storage(out: str, results: str | None = None):
    """Prefect result storage every worker can reach: `results`, else OUT/_results.

    Prefect wants result storage blocks saved server-side; the block's name is derived
    from its location, so every run writing to the same place shares one block.
    """
    uri = results or results_dir(out)
    if is_local(uri):
        uri = os.path.abspath(uri.removeprefix("file://"))
        block = LocalFileSystem(basepath=uri)
    else:
        block = RemoteFileSystem(basepath=uri)
    block.save(f"clipcrawl-results-{hashlib.sha1(uri.encode()).hexdigest()[:12]}", overwrite=True)
    return block


FAILURES_LISTED = 20  # failed units a stage's error names; the stage's summary and units table list them all


def failure_listing(failed: dict, unit: str = "") -> str:
    """ "<unit><key>: <why>; ..." of the first FAILURES_LISTED failed units (in key order), then how many more: a
    crawl's stage may fail thousands of units, and the error becomes the flow run's state message (in the
    database, the UI and the command's one line)."""
    items = sorted(failed.items())
    text = "; ".join(f"{unit}{key}: {why}" for key, why in items[:FAILURES_LISTED])
    more = len(items) - FAILURES_LISTED
    return text + (f"; and {more} more (each in the stage's _summary.json)" if more > 0 else "")


RESOURCE_PER_TASK = 1  # what a task asks of its Dask resource (CPU or GPU): a worker offering less never takes it
NO_WORKER_TIMEOUT_ENV = "CLIPCRAWL_NO_WORKER_TIMEOUT"
NO_WORKER_TIMEOUT = 600.0  # seconds a stage waits for a live worker offering its resource; 0: forever
WATCH_SECONDS = 5.0  # how often a waiting stage asks the scheduler for its workers


class NoWorkerError(RuntimeError):
    """No live worker has offered the resource a stage's tasks need for the configured time."""


class Watchdog:
    """Fails a stage whose tasks cannot run: no live worker of the cluster offers their Dask resource (GPU or
    CPU) for `timeout` seconds in a row. A task restricted to a resource nobody offers waits in the scheduler
    for ever (Dask's no-worker state); the run fails instead, with one line, and can be retried once a worker
    is back (its finished tasks are cached)."""

    def __init__(self, what: str, resource: str, timeout: float | None = None):
        self.what, self.resource = what, resource
        self.timeout = float(os.environ.get(NO_WORKER_TIMEOUT_ENV, NO_WORKER_TIMEOUT)) if timeout is None else timeout
        self.since: float | None = None  # when the resource was last seen missing, first of a row of checks

    def offered(self) -> bool | None:
        """Whether a live worker offers the resource now, as much as a task asks; None without a Dask client to ask.
        A worker that takes no new task (paused above its memory limit's pause fraction, or retiring) counts only
        while it runs tasks: those may be the stage's own."""
        context = FlowRunContext.get()
        task_runner = context.task_runner if context else None
        if not isinstance(task_runner, DaskTaskRunner):
            return None
        try:
            workers = task_runner.client.scheduler_info(n_workers=-1).get("workers", {})
        except (OSError, TimeoutError) as exc:  # CommClosedError is an OSError: a blip is no answer, not a "no"
            logging.getLogger(__name__).warning("%s: cannot ask the scheduler for its workers: %s", self.what, exc)
            return None
        return any(
            w.get("resources", {}).get(self.resource, 0) >= RESOURCE_PER_TASK
            and (w.get("status") == "running" or w.get("metrics", {}).get("task_counts", {}).get("executing", 0) > 0)
            for w in workers.values()
        )

    def check(self) -> None:
        """Raise NoWorkerError once the resource has been missing for `timeout` seconds in a row."""
        if self.timeout <= 0:
            return
        if self.offered() is not False:
            self.since = None
            return
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        if now - self.since >= self.timeout:
            raise NoWorkerError(
                f"{self.what}: no live Dask worker offers the {self.resource} resource its tasks need "
                f"({self.resource}={RESOURCE_PER_TASK} on a running worker; waited {self.timeout:g} s, "
                f"{NO_WORKER_TIMEOUT_ENV}); start a worker with --resources {self.resource}={RESOURCE_PER_TASK} "
                "and retry the run"
            )


@dataclass(frozen=True)
class Finished:
    """What gather keeps of a finished future: its task run and final state. The future itself is let go, so the
    Dask scheduler forgets the task and the worker frees its result: a held future keeps the task's pickled
    spec (its arguments and Prefect's context, ~100 KB) in the scheduler until the stage ends, gigabytes for the
    tens of thousands of files or shards of a crawl."""

    task_run_id: UUID
    state: State


SUBMIT_WINDOW = 1000  # the most tasks a stage has submitted and unfinished at once, or twice the cluster's threads


def gather(units: dict, what: str, label: str | None = None, resource: str = "CPU") -> tuple[dict, dict]:
    """Run a stage's units: {key: a submission (a call that submits the unit's task, e.g. functools.partial(
    task.submit, ...)) or a future already submitted}. Submissions go out under work(resource) through a window,
    at most SUBMIT_WINDOW (or twice the cluster's threads) unfinished at once, topped up as tasks finish: the Dask
    scheduler holds every submitted task's spec (~80 KB with Prefect's context), 7 GB for a crawl's 90,000 files
    submitted at once. Returns the results and the failures ({key: error message}); each unit in `units` is
    replaced by its Finished record as it finishes. With a run label, a progress artifact of stage `what` follows
    the units; while none finishes, a Watchdog fails the stage if no worker offers `resource`."""
    logger = get_run_logger()
    total = len(units)
    progress = Progress(what, label, total) if label else None
    watchdog = Watchdog(what, resource)
    finished: queue.SimpleQueue = queue.SimpleQueue()
    waiting, keys = iter(list(units)), {}
    done, failed = {}, {}

    def submit(count: int) -> None:
        for key in itertools.islice(waiting, count):
            future = units[key]() if callable(units[key]) else units[key]
            units[key], keys[id(future)] = future, key
            future.add_done_callback(finished.put)

    with work(resource):  # one block for every submission: Prefect's settings serialized once for them all
        submit(_submit_window())
        for i in range(1, total + 1):
            future = _next_finished(finished, watchdog)
            key = keys.pop(id(future))
            future.wait()
            if future.state.is_completed():
                done[key] = future.result()
            else:
                failed[key] = future.state.message or "failed"
                logger.error("%s %s failed: %s", what, key, failed[key])
            units[key] = Finished(future.task_run_id, future.state)
            del future
            submit(1)
            if i % max(1, total // 20) == 0 or i == total:
                logger.info("%s: %d/%d done, %d failed", what, i, total, len(failed))
            if progress:
                progress.step(i, len(failed))
    return done, failed


def _submit_window() -> int:
    """SUBMIT_WINDOW, or twice the threads of the flow's Dask cluster where that is more."""
    context = FlowRunContext.get()
    task_runner = context.task_runner if context else None
    try:
        threads = sum(task_runner.client.nthreads().values()) if isinstance(task_runner, DaskTaskRunner) else 0
    except (OSError, TimeoutError):
        threads = 0
    return max(SUBMIT_WINDOW, 2 * threads)


def wait_result(future, what: str, resource: str = "CPU"):
    """future.result() of one task submitted under `resource`, waited for under a Watchdog as gather waits."""
    finished: queue.SimpleQueue = queue.SimpleQueue()
    future.add_done_callback(finished.put)
    _next_finished(finished, Watchdog(what, resource))
    return future.result()


def _next_finished(finished: queue.SimpleQueue, watchdog: Watchdog):
    """The next future a done callback put in `finished`, the watchdog checked every WATCH_SECONDS while none comes
    (one done callback a future: prefect's as_completed with a timeout would add one a future at every call)."""
    while True:
        try:
            future = finished.get(timeout=WATCH_SECONDS)
        except queue.Empty:
            watchdog.check()
            continue
        watchdog.since = None
        return future


def stopwatch() -> Callable[[], float]:
    """Seconds since this call, as the stage summaries record a flow's wall time."""
    started = time.monotonic()
    return lambda: round(time.monotonic() - started, 3)
