"""One shard of pairs -> OUT/images/{shard:05d}.tar/.parquet/_stats.json.

Network I/O runs on an asyncio loop (tasks/download/fetch.py); decoding, resizing and encoding run
in a pool of threads of the same process, overlapped with the downloads: Pillow releases the GIL
while it decodes and resizes (the bulk of the work; its JPEG encoder holds it), so the threads use
every core without copying a body to another process. Memory is bounded: at most `concurrency`
bodies in flight, and 2 per image thread waiting for one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os

from prefect import task

from clipcrawl.tasks.core.cache import cache_key
from clipcrawl.tasks.core.caption import CAPTION
from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.download.fetch import Fetcher
from clipcrawl.tasks.download.images import ImageResult, process_image
from clipcrawl.tasks.download.shards import ShardSpec, ShardWriter, img2dataset_counts, read_shard_rows, sample_key
from clipcrawl.tasks.ingest.normalize import pair_uid
from clipcrawl.tasks.takedown.log import TAKEN_DOWN, tombstones


def image_threads(settings: DownloadSettings) -> int:
    return settings.image_threads or os.cpu_count() or 1


async def _download(rows: list[dict], settings: DownloadSettings, writer: ShardWriter, gone=None) -> None:
    loop = asyncio.get_running_loop()
    threads = image_threads(settings)
    fetching = asyncio.Semaphore(settings.concurrency)
    processing = asyncio.Semaphore(2 * threads)

    async def one(row: dict) -> None:
        async with fetching:
            result = await fetcher.fetch(row["url"], row.get("page_url"))  # the page's tdmrep.json may reserve it
            await processing.acquire()  # hold the fetch slot until the body has a place in the pool
        try:
            image = None
            if result.status == DownloadStatus.SUCCESS:
                image = await loop.run_in_executor(pool, check, result.body, settings)
                if gone and image.status == DownloadStatus.SUCCESS and gone.holds_image(image.sha256):
                    image = ImageResult(DownloadStatus.TAKEN_DOWN, TAKEN_DOWN, withheld=True)  # the image, new URL
        finally:
            processing.release()
        status = image.status if image else result.status
        error = image.error_message if image else result.error_message
        listed = status == DownloadStatus.BLOCKLISTED
        withheld = listed or (image is not None and image.withheld)  # nothing of a listed (or unchecked) image
        writer.add(
            row
            | {
                "status": status,
                "error_message": error,
                "http_status": result.http_status,
                "bytes": len(result.body) if result.body is not None and not withheld else None,
                "final_url": result.final_url,
                "attempts": result.attempts,
                "blocklist": (image.blocklist if image else result.blocklist) if listed else None,
            },
            image if status == DownloadStatus.SUCCESS else None,
        )

    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="clipcrawl-image")
    try:
        async with Fetcher(settings) as fetcher:
            check = functools.partial(process_image, lists=fetcher.blocklists)  # the lists the fetches use
            await asyncio.gather(*(one(row) for row in rows))
    finally:  # cancelled (the task's timeout): queued images are dropped, running ones end within milliseconds
        pool.shutdown(wait=True, cancel_futures=True)


async def download_shard_async(spec: ShardSpec, out: str, settings: DownloadSettings) -> dict:
    """Download, check, resize and write one shard; returns its stats (also in _stats.json).

    Cancelled (the task's timeout), it stops its requests and publishes nothing."""
    table = read_shard_rows(spec, settings=settings)
    rows = [
        row
        | {
            "key": sample_key(spec.shard, i, settings.shard_size),
            "uid": row.get("uid") or (pair_uid(row["url"], row[CAPTION] or "") if row.get("url") is not None else None),
        }  # any input with URLs (captions may be none); a row a takedown blanked (no url) keeps its place, and its key
        for i, row in enumerate(table.to_pylist())
    ]
    gone = tombstones(out)  # samples a takedown removed: never fetched again, nothing of them kept
    with ShardWriter(out, spec.shard, settings) as writer:
        down = [r["url"] is None or (bool(gone) and gone.holds(r["url"], r["uid"])) for r in rows]
        for row in [r for r, d in zip(rows, down) if d]:
            writer.add({"key": row["key"], "status": DownloadStatus.TAKEN_DOWN, "error_message": TAKEN_DOWN}, None)
        rows = [r for r, d in zip(rows, down) if not d]
        await _download(rows, settings, writer, gone)
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
        **img2dataset_counts(status),
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
