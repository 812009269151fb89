"""Dask task runners and resource placement shared by every flow.

Workers that own a GPU offer the Dask resource GPU=1, CPU workers offer CPU=1 per
slot; embedding is submitted under `gpu_work()`, everything else under `cpu_work()`,
so CPU work never occupies the GPU worker and GPU work never lands on a CPU worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable

import dask
from distributed import Nanny, Scheduler, SpecCluster
from prefect import get_run_logger
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.futures import as_completed
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


def cpu_work():
    """Annotate the submissions inside so they run on CPU workers only."""
    return dask.annotate(resources={"CPU": 1})


def gpu_work():
    """Annotate the submissions inside so they run on GPU-tagged workers only."""
    return dask.annotate(resources={"GPU": 1})


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


def gather(futures: dict, what: str, label: str | None = None) -> tuple[dict, dict]:
    """Wait for every future; split results from failures ({key: error message}). With a run label,
    a progress artifact of stage `what` follows the futures as they finish."""
    logger = get_run_logger()
    progress = Progress(what, label, len(futures)) if label else None
    done, failed = {}, {}
    keys = {id(f): k for k, f in futures.items()}
    for i, future in enumerate(as_completed(list(futures.values())), 1):
        key = keys[id(future)]
        future.wait()
        if future.state.is_completed():
            done[key] = future.result()
        else:
            failed[key] = future.state.message or "failed"
            logger.error("%s %s failed: %s", what, key, failed[key])
        if i % max(1, len(futures) // 20) == 0 or i == len(futures):
            logger.info("%s: %d/%d done, %d failed", what, i, len(futures), len(failed))
        if progress:
            progress.step(i, len(failed))
    return done, failed


def stopwatch() -> Callable[[], float]:
    """Seconds since this call, as the stage summaries record a flow's wall time."""
    started = time.monotonic()
    return lambda: round(time.monotonic() - started, 3)
