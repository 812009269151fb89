"""One image shard -> CLIP embeddings (clip-retrieval layout) and the filtered dataset part.

The samples and their captions come from the parquet beside IMAGES/{stem}.tar, or from the tar's {key}.txt
(and {key}.json) members where the parquet has no caption column or is absent, as in img2dataset's folders;
the same for the other output formats (a folder IMAGES/{stem}/ of files, or IMAGES/{stem}.parquet holding the
image bytes: tasks/download/shard_reader.py). The shard is read as a stream; a thread pool decodes and preprocesses images a bounded
number of batches ahead of the model, so decoding overlaps model compute and memory stays flat
whatever the tar's size. Outputs, each published atomically, the stats (completion marker) last:
OUT/embeddings/{img_emb,text_emb}/..._{stem}.npy, OUT/embeddings/metadata/metadata_{stem}.parquet,
OUT/dataset/part-{stem}.parquet and part-{stem}_stats.json.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from prefect import task

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.cache import cache_key
from clipcrawl.tasks.core.caption import CAPTION, caption_column, with_caption
from clipcrawl.tasks.core.config import EmbedSettings
from clipcrawl.tasks.core.errors import InputError, pick_columns
from clipcrawl.tasks.core.status import NSFW, UNLIKELY, UNSURE, DownloadStatus, EmbedStatus
from clipcrawl.tasks.core.uri import atomic_write, exists, open_uri, write_json
from clipcrawl.tasks.download.images import WEB_FORMATS
from clipcrawl.tasks.download.shard_reader import captions_and_fields, shard_images
from clipcrawl.tasks.embed.clip_model import ClipModel, weights_fingerprint, worker_model
from clipcrawl.tasks.takedown.log import TAKEN_DOWN, tombstones

# In the embed task's cache key: raise it when the same images and weights would embed otherwise
# (2: JPEGs decoded at reduced scale; 3: img2dataset's `caption` read, a sample without a caption not embedded).
EMBEDDING_CODE = 3
BATCHES_AHEAD = 2  # decoded batches waiting for the model: enough to hide decode jitter, bounded memory
PASSTHROUGH = {
    "page_url": pa.string(),
    "language": pa.string(),
    "sha256": pa.string(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
    "license": pa.string(),
}
METADATA_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.uint64()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("similarity", pa.float32()),
        ("NSFW", pa.string()),
        *PASSTHROUGH.items(),
    ]
)
DATASET_SCHEMA = pa.schema(
    [
        ("SAMPLE_ID", pa.uint64()),
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("HEIGHT", pa.int32()),
        ("WIDTH", pa.int32()),
        ("LICENSE", pa.string()),
        ("NSFW", pa.string()),
        ("similarity", pa.float32()),
        ("key", pa.string()),
        ("language", pa.string()),
        ("sha256", pa.string()),
        ("page_url", pa.string()),
    ]
)
# dataset column <- metadata column
_DATASET_FROM = {
    "SAMPLE_ID": "uid",
    "URL": "url",
    "TEXT": "caption",
    "HEIGHT": "original_height",
    "WIDTH": "original_width",
    "LICENSE": "license",
}


def nsfw_tags(image_emb: np.ndarray, prompt_emb: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """LAION-400M's NSFW tag: the two categories most similar to each image decide.

    `image_emb` (n, d) and `prompt_emb` (m, d) are L2-normalised; `flagged` (m,) marks the
    flagged categories. Both of the top two flagged: NSFW; one: UNSURE; none: UNLIKELY.
    """
    if len(image_emb) == 0:
        return np.empty(0, dtype=object)
    sims = image_emb.astype(np.float32) @ prompt_emb.astype(np.float32).T
    top2 = np.argsort(-sims, axis=1, kind="stable")[:, :2]
    hits = np.asarray(flagged, dtype=bool)[top2].sum(axis=1)
    return np.array([UNLIKELY, UNSURE, NSFW], dtype=object)[hits]


@functools.lru_cache(maxsize=8)  # per worker process and model: the prompts are the same for every shard
def prompt_embeddings(model: ClipModel, prompts: tuple[str, ...]) -> np.ndarray:
    emb = model.encode_texts(prompts)
    emb.flags.writeable = False
    return emb


def read_samples(parquet_uri: str) -> tuple[dict[str, dict], bool]:
    """The shard's downloaded samples ({key: row}, parquet order): rows with status success, and whether the parquet
    has a caption column (caption; text in shards of earlier versions); a shard without key, url or status raises
    InputError."""
    with open_uri(parquet_uri) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        pick_columns(parquet_uri, names, "key", "url", "status")
        caption = caption_column(names)
        wanted = ["key", "uid", "url", caption, "status", *PASSTHROUGH]
        table = with_caption(pf.read(columns=[c for c in wanted if c in names]))
    table = table.filter(pc.equal(table["status"], DownloadStatus.SUCCESS.value))
    return {row["key"]: row for row in table.to_pylist()}, caption is not None


def shard_samples(tar_uri: str) -> dict[str, dict]:
    """The samples to embed, their caption in `caption`: from the parquet beside the tar (its caption column),
    else from the tar's {key}.txt members. Without a parquet every image member of the tar is a sample,
    its url and other fields from {key}.json. A shard with no caption anywhere raises InputError."""
    parquet = layout.shard_parquet_of(tar_uri)
    if exists(parquet):
        samples, captioned = read_samples(parquet)
        if captioned:
            return samples
        texts, _ = captions_and_fields(tar_uri)
        where = f"{parquet} has no caption column, and the shard"
    else:
        texts, fields = captions_and_fields(tar_uri)
        samples = {
            key: {name: meta.get(name) for name in ("url", *PASSTHROUGH)}
            | {"key": key, "status": DownloadStatus.SUCCESS.value}
            for key, meta in fields.items()
        }
        where = f"no parquet beside it ({parquet}), and the shard"
    if samples and not texts.keys() & samples.keys():
        raise InputError(f"{tar_uri}: no captions: {where} has no {{key}}.txt member for its samples")
    return {key: row | {CAPTION: texts.get(key)} for key, row in samples.items()}


def _pixels(data: bytes, prepare) -> tuple[np.ndarray, float]:
    """Decode and resize one image (in a loader thread); returns uint8 pixels and the seconds it took."""
    started = time.perf_counter()
    with Image.open(io.BytesIO(data), formats=WEB_FORMATS) as img:  # web formats only: never EPS/PDF
        pixels = prepare(img)  # decodes, at a reduced scale where the model's input allows
    return pixels, time.perf_counter() - started


def _prefetch(
    tar_uri: str, keys: set[str], pool: ThreadPoolExecutor, prepare, window: int
) -> Iterator[tuple[str, Future]]:
    """(key, future pixels) in tar order. A thread reads the tar and submits decodes at most
    `window` samples ahead of the consumer, so tar I/O and decoding overlap the model."""
    ahead: queue.Queue = queue.Queue(window)
    stop = threading.Event()

    def produce() -> None:
        try:
            for key, data in shard_images(tar_uri, keys):  # any output format, streaming
                if stop.is_set():
                    return
                ahead.put((key, pool.submit(_pixels, data, prepare)))
            ahead.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            ahead.put(exc)

    reader = threading.Thread(target=produce, name="clipcrawl-embed-tar", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.1)


@dataclass
class _Embedded:
    keys: list[str] = field(default_factory=list)
    image: list[np.ndarray] = field(default_factory=list)
    text: list[np.ndarray] = field(default_factory=list)
    failures: dict[str, tuple[EmbedStatus, str]] = field(default_factory=dict)
    decode_s: float = 0.0  # summed over loader threads
    loader_wait_s: float = 0.0  # the model waiting for decoded images: near 0 when the overlap works
    model_s: float = 0.0


def embed_samples(model: ClipModel, tar_uri: str, samples: dict[str, dict], settings: EmbedSettings) -> _Embedded:
    """Embed the images of `samples` found in the tar, and their captions, batch by batch."""
    done = _Embedded()
    threads = settings.loader_threads or min(16, os.cpu_count() or 1)
    window = BATCHES_AHEAD * settings.batch_size
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="clipcrawl-embed") as pool,
        contextlib.closing(_prefetch(tar_uri, set(samples), pool, model.prepare, window)) as items,
    ):
        while True:
            started = time.perf_counter()
            batch = list(itertools.islice(items, settings.batch_size))
            if not batch:
                break
            keys, pixels = [], []
            for key, future in batch:
                try:
                    tensor, seconds = future.result()
                except Exception as exc:  # noqa: BLE001 - one bad image is recorded, the shard goes on
                    done.failures[key] = (EmbedStatus.DECODE_ERROR, f"{type(exc).__name__}: {exc}")
                    continue
                keys.append(key)
                pixels.append(tensor)
                done.decode_s += seconds
            done.loader_wait_s += time.perf_counter() - started
            if keys:
                started = time.perf_counter()
                done.image.append(model.encode_images(torch.from_numpy(np.stack(pixels))))
                done.text.append(model.encode_texts([samples[k][CAPTION] for k in keys]))
                done.model_s += time.perf_counter() - started
                done.keys += keys
    for key in samples.keys() - set(done.keys) - done.failures.keys():
        done.failures[key] = (EmbedStatus.MISSING_IMAGE, f"no image member for {key} in {tar_uri}")
    return done


def _similarity_summary(similarity: np.ndarray) -> dict:
    counts, edges = np.histogram(similarity, bins=20, range=(-1.0, 1.0))
    summary = {"histogram": {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}}
    if len(similarity):
        qs = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
        summary["quantiles"] = {f"p{round(q * 100)}": float(v) for q, v in zip(qs, np.quantile(similarity, qs))}
        summary["mean"] = float(similarity.mean())
    return summary


def _write_npy(uri: str, emb: np.ndarray) -> None:
    with atomic_write(uri) as f:
        np.save(f, emb.astype(np.float16))


def _write_parquet(uri: str, table: pa.Table) -> None:
    with atomic_write(uri) as f:
        pq.write_table(table, f, compression="zstd")


def embed_shard(tar_uri: str, out: str, settings: EmbedSettings) -> dict:
    """Embed one shard, tag NSFW, filter on similarity; publish embeddings/ and dataset/ parts. Returns the stats."""
    started = time.perf_counter()
    stem = layout.shard_stem(tar_uri)
    samples = shard_samples(tar_uri)
    model = worker_model(settings)
    prompts = settings.neutral_prompts + settings.flagged_prompts
    prompt_emb = prompt_embeddings(model, prompts)
    # a similarity with a missing caption would be a similarity with the empty text: such a sample is not embedded
    captioned = {key: row for key, row in samples.items() if (row[CAPTION] or "").strip()}
    gone = tombstones(out)  # samples a takedown removed: not embedded, not kept
    gone_keys = (
        {key for key, row in captioned.items() if gone.holds(row["url"], row.get("uid"), row.get("sha256"))}
        if gone
        else set()
    )
    captioned = {key: row for key, row in captioned.items() if key not in gone_keys}
    done = embed_samples(model, tar_uri, captioned, settings)
    for key in gone_keys:
        done.failures[key] = (EmbedStatus.TAKEN_DOWN, TAKEN_DOWN)
    for key in samples.keys() - captioned.keys() - gone_keys:
        done.failures[key] = (EmbedStatus.NO_CAPTION, f"{key} has no caption in shard {stem}")

    # rows in the parquet's (key) order, whatever order the tar's members came in
    position = {key: i for i, key in enumerate(done.keys)}
    keys = [key for key in samples if key in position]
    order = np.array([position[k] for k in keys], dtype=np.int64)
    dim = prompt_emb.shape[1]
    image_emb = np.concatenate(done.image)[order] if keys else np.zeros((0, dim), np.float32)
    text_emb = np.concatenate(done.text)[order] if keys else np.zeros((0, dim), np.float32)
    similarity = np.einsum("ij,ij->i", image_emb, text_emb).astype(np.float32)
    nsfw = nsfw_tags(image_emb, prompt_emb, np.arange(len(prompts)) >= len(settings.neutral_prompts))

    rows = [samples[k] for k in keys]
    columns = {name: [r.get(name) for r in rows] for name in METADATA_SCHEMA.names}
    columns.update(similarity=similarity, NSFW=nsfw.tolist())
    metadata = pa.table({f.name: pa.array(columns[f.name], f.type) for f in METADATA_SCHEMA}, schema=METADATA_SCHEMA)

    similar = similarity >= settings.similarity_threshold
    flagged = (nsfw == NSFW) if settings.drop_nsfw else np.zeros(len(keys), bool)
    keep = similar & ~flagged
    kept = metadata.filter(pa.array(keep, pa.bool_()))
    dataset = pa.table({name: kept[_DATASET_FROM.get(name, name)] for name in DATASET_SCHEMA.names})
    dataset = dataset.set_column(
        DATASET_SCHEMA.get_field_index("LICENSE"), "LICENSE", pc.fill_null(dataset["LICENSE"], "?")
    ).cast(DATASET_SCHEMA)

    embeddings, parts = layout.embeddings_dir(out), layout.dataset_dir(out)
    _write_npy(layout.embedding_npy(embeddings, "image", stem), image_emb)
    _write_npy(layout.embedding_npy(embeddings, "text", stem), text_emb)
    _write_parquet(layout.metadata_file(embeddings, stem), metadata)
    _write_parquet(layout.dataset_part(parts, stem), dataset)

    total = time.perf_counter() - started
    status = {s.value: 0 for s in EmbedStatus} | {EmbedStatus.EMBEDDED.value: len(keys)}
    for failed, _ in done.failures.values():
        status[failed.value] += 1
    stats = {
        "shard": stem,
        "tar": tar_uri,
        "model": model.name,
        "clip": settings.model_dump(include={"model", "pretrained", "checkpoint"}),  # what encodes queries later
        "samples": len(samples),
        "embedded": len(keys),
        "kept": int(keep.sum()),
        "dropped_similarity": int((~similar).sum()),
        "dropped_nsfw": int((similar & flagged).sum()),  # counted only among rows the similarity kept
        "status": status,
        "nsfw": {tag: int((nsfw == tag).sum()) for tag in (UNLIKELY, UNSURE, NSFW)},
        "similarity_threshold": settings.similarity_threshold,
        "drop_nsfw": settings.drop_nsfw,
        "similarity": _similarity_summary(similarity),
        "timings": {
            "decode_s": done.decode_s,
            "loader_wait_s": done.loader_wait_s,
            "model_s": done.model_s,
            "total_s": total,
        },
        "samples_per_s": len(keys) / total if total > 0 else 0.0,
        "failures": [{"key": k, "status": s.value, "error": e} for k, (s, e) in sorted(done.failures.items())],
    }
    write_json(layout.dataset_stats(parts, stem), stats)
    return stats


def summarize(shards: list[dict], failed: dict) -> dict:
    """Run totals over the published shards' stats, and the failed shards with their reasons."""

    def total(field: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stats in shards:
            for name, n in stats[field].items():
                counts[name] = counts.get(name, 0) + n
        return counts

    return {
        "shards": len(shards) + len(failed),
        **{k: sum(s[k] for s in shards) for k in ("samples", "embedded", "kept", "dropped_similarity", "dropped_nsfw")},
        "status": total("status"),
        "nsfw": total("nsfw"),
        "failed": [{"shard": k, "error": v} for k, v in sorted(failed.items())],
    }


embed_shard_task = task(
    embed_shard,
    name="embed_shard",
    task_run_name=lambda parameters: f"embed-{layout.shard_stem(parameters['tar_uri'])}",
    tags=["clipcrawl", "embed", "gpu"],
    cache_key_fn=lambda ctx, p: cache_key(
        "embed", p["tar_uri"], p["out"], p["settings"], EMBEDDING_CODE, weights_fingerprint(p["settings"])
    ),
    persist_result=True,
)
