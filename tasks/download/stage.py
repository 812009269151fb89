"""One shard of pairs -> OUT/images/{shard:05d}.tar/.parquet/_stats.json.

Network I/O runs on an asyncio loop (tasks/download/fetch.py); decoding and resizing are
CPU-bound and run in a process pool kept per worker process, overlapped with the
downloads. Memory is bounded: at most `concurrency` bodies wait for the pool.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time

from prefect import task

from clipcrawl.tasks.core.cache import cache_key
from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.download.fetch import Fetcher
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shards import ShardSpec, ShardWriter, read_shard_rows, sample_key
from clipcrawl.tasks.ingest.normalize import pair_uid

logger = logging.getLogger(__name__)
_POOLS: dict[int, concurrent.futures.Executor] = {}


def _exit_with_parent(parent: int) -> None:
    """Pool worker initializer: exit when the process that made the pool is gone.

    A Dask nanny kills a worker that is slow to close; its image workers, blocked on the pool's
    queue, would otherwise live on as orphans forever (holding the worker's stdout open).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="clipcrawl-parent-watch", daemon=True).start()


def image_pool(processes: int | None) -> concurrent.futures.Executor:
    """A pool of image workers for this process, made once and reused by every shard.

    Daemonic processes (Dask's default for workers) may not have children: there the
    pool falls back to threads, which still overlap since Pillow releases the GIL
    while decoding, resizing and encoding.
    """
    size = processes or os.cpu_count() or 1
    if size not in _POOLS:
        if multiprocessing.current_process().daemon:
            logger.warning(
                "daemonic worker process: image work runs in %d threads, not processes "
                "(start Dask workers with distributed.worker.daemon=False)",
                size,
            )
            pool = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="clipcrawl-image")
        else:
            pool = concurrent.futures.ProcessPoolExecutor(
                size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
        _POOLS[size] = pool
    return _POOLS[size]


async def _download(rows: list[dict], settings: DownloadSettings, writer: ShardWriter) -> None:
    loop = asyncio.get_running_loop()
    pool = image_pool(settings.processes)
    fetching = asyncio.Semaphore(settings.concurrency)
    processing = asyncio.Semaphore(2 * (settings.processes or os.cpu_count() or 1))

    async def one(row: dict) -> None:
        async with fetching:
            result = await fetcher.fetch(row["url"])
            await processing.acquire()  # hold the fetch slot until the body has a place in the pool
        try:
            image = None
            if result.status == DownloadStatus.SUCCESS:
                image = await loop.run_in_executor(pool, process_image, result.body, settings)
        finally:
            processing.release()
        status = image.status if image else result.status
        error = image.error_message if image else result.error_message
        writer.add(
            row
            | {
                "status": status,
                "error_message": error,
                "http_status": result.http_status,
                "bytes": len(result.body) if result.body is not None else None,
                "final_url": result.final_url,
                "attempts": result.attempts,
            },
            image if status == DownloadStatus.SUCCESS else None,
        )

    async with Fetcher(settings) as fetcher:
        await asyncio.gather(*(one(row) for row in rows))


async def download_shard_async(spec: ShardSpec, out: str, settings: DownloadSettings) -> dict:
    """Download, check, resize and write one shard; returns its stats (also in _stats.json).

    Cancelled (the task's timeout), it stops its requests and publishes nothing."""
    table = read_shard_rows(spec)
    rows = [
        row
        | {
            "key": sample_key(spec.shard, i, settings.shard_size),
            "uid": row.get("uid") or pair_uid(row["url"], row["text"]),
        }  # any parquet with url, text
        for i, row in enumerate(table.to_pylist())
    ]
    with ShardWriter(out, spec.shard, settings) as writer:
        await _download(rows, settings, writer)
        return writer.close()


def download_shard(spec: ShardSpec, out: str, settings: DownloadSettings) -> dict:
    """download_shard_async, from synchronous code (benchmarks, tests)."""
    return asyncio.run(download_shard_async(spec, out, settings))


def summarize(shards: list[dict], failed: dict) -> dict:
    """Run totals over the published shards' stats, and the failed shards with their reasons."""
    status: dict[str, int] = {}
    for stats in shards:
        for name, n in stats["status"].items():
            status[name] = status.get(name, 0) + n
    return {
        "shards": len(shards) + len(failed),
        "count": sum(s["count"] for s in shards),
        "successes": sum(s["successes"] for s in shards),
        "status": status,
        "failed": [{"shard": k, "error": v} for k, v in sorted(failed.items())],
    }


# an async task: its timeout cancels the shard's requests (a sync task's timeout can only interrupt Python code)
download_shard_task = task(
    download_shard_async,
    name="download_shard",
    task_run_name="download-{spec.shard:05d}",
    tags=["clipcrawl", "download"],
    cache_key_fn=lambda ctx, p: cache_key("download", p["spec"].slices, p["spec"].shard, p["out"], p["settings"]),
    persist_result=True,
)
