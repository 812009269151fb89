"""Shared by bench_embed.py and bench_embed_gpu.py: image shards as the download stage writes them,
the plain open_clip loop clipcrawl is measured against, and reading back what embed_shard wrote.

Shards: FOLDER/images/{shard:05d}.tar + .parquet + _stats.json (img2dataset layout, written by
clipcrawl.tasks.download.shards.ShardWriter). Each sample is a world scene rendered at one of the world's image sizes,
encoded as the image server would (jpg q90), then passed through the download stage's own
process_image (LAION defaults: 256 border, jpg q95), with a caption that describes it.
Generation is CPU-bound (~5 ms a sample): chunks of samples go to a pool of forked processes and
the parent writes them in order. Call make_shards before torch is imported or CUDA is initialised
(the pool forks).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.layout import shard_name
from clipcrawl.tasks.download.images import process_image
from clipcrawl.tasks.download.shards import ShardWriter, sample_key
from clipcrawl.tasks.ingest.normalize import pair_uid
from clipcrawl.tasks.world.scenes import (
    IMAGE_SIZES,
    describe,
    encode_image,
    random_scene,
    render_scene,
)

CHUNK = 200  # samples per generation job
MARKER = "bench_shards.json"


# ------------------------------------------------------------------------------ shards


def _samples(job: tuple[int, int, int, int, int]) -> list[tuple[dict, object]]:
    seed, shard, start, end, shard_size = job
    settings = DownloadSettings()
    out = []
    for index in range(start, end):
        rng = random.Random(f"bench-embed:{seed}:{shard}:{index}")
        scene = random_scene(rng)
        body = encode_image(render_scene(scene, rng.choice(IMAGE_SIZES)), "jpg")
        image = process_image(body, settings)
        text = describe(scene, rng)
        url = f"http://images.bench.invalid/{shard}/{index}.jpg"
        row = {
            "key": sample_key(shard, index, shard_size),
            "uid": pair_uid(url, text),
            "url": url,
            "caption": text,
            "status": image.status,
            "error_message": image.error_message,
            "http_status": 200,
            "bytes": len(body),
            "language": "en",
        }
        out.append((row, image))
    return out


def make_shards(
    folder: str, shards: int, shard_size: int, seed: int = 0, workers: int | None = None, first: int = 0
) -> tuple[list[str], float]:
    """Write (or reuse) shards first..first+shards-1 under FOLDER/images/; their tar paths and the seconds spent.

    A shard is reused when its _stats.json is there and FOLDER/bench_shards.json says it was made
    with the same seed and shard size.
    """
    images = os.path.join(folder, "images")
    marker = os.path.join(folder, MARKER)
    wanted = list(range(first, first + shards))
    made = {}
    if os.path.exists(marker):
        with open(marker) as f:
            made = json.load(f)
    recipe = {"seed": seed, "shard_size": shard_size}
    todo = [
        s
        for s in wanted
        if made.get(shard_name(s)) != recipe or not os.path.exists(os.path.join(images, f"{shard_name(s)}_stats.json"))
    ]
    tars = [os.path.join(images, f"{shard_name(s)}.tar") for s in wanted]
    if not todo:
        return tars, 0.0

    started = time.perf_counter()
    jobs = [(seed, s, i, min(i + CHUNK, shard_size), shard_size) for s in todo for i in range(0, shard_size, CHUNK)]
    workers = workers or len(os.sched_getaffinity(0))
    settings = DownloadSettings(shard_size=shard_size)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.imap(_samples, jobs)  # in job order: shard by shard, index by index
        for shard in todo:
            with ShardWriter(folder, shard, settings) as writer:
                for _ in range(0, shard_size, CHUNK):
                    for row, image in next(results):
                        writer.add(row, image)
                stats = writer.close()
            if stats["successes"] != shard_size:
                raise SystemExit(
                    f"shard {shard}: {stats['successes']} of {shard_size} samples made it: {stats['status']}"
                )
            made[shard_name(shard)] = recipe
            with open(marker, "w") as f:
                json.dump(made, f)
    return tars, time.perf_counter() - started


def shard_members(tar_path: str) -> list[tuple[str, bytes, str]]:
    """(key, jpg bytes, caption) of every sample of a shard, in tar order."""
    samples: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.rsplit(".", 1)
            if ext in ("jpg", "txt"):
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [(k, v["jpg"], v["txt"].decode()) for k, v in samples.items()]


def shard_count(tar_path: str) -> int:
    """Samples (successes) in a shard, from its stats file."""
    with open(tar_path[: -len(".tar")] + "_stats.json") as f:
        return json.load(f)["successes"]


# ------------------------------------------------------------------------------ the plain loop


def plain_loop(tar_path: str, model, preprocess, tokenizer, device, dtype, batch_size: int, out_dir: str) -> dict:
    """What a user writes with open_clip: read the tar in order, decode and preprocess one image at a
    time, batch, encode images and captions, normalise, save. One thread of Python, no overlap.

    Returns keys, both embeddings (float32, normalised) and the seconds spent in each part (the
    model part includes stacking, tokenizing and the copies to the device and back, which wait
    for the GPU to finish).
    """
    import numpy as np
    import torch
    from PIL import Image

    times = {"read": 0.0, "decode": 0.0, "preprocess": 0.0, "model": 0.0}
    keys, img_out, txt_out = [], [], []
    pixels, texts = [], []

    def flush():
        t = time.perf_counter()
        with torch.no_grad():
            batch = torch.stack(pixels).to(device=device, dtype=dtype)
            img = model.encode_image(batch)
            txt = model.encode_text(tokenizer(texts).to(device))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            img_out.append(img.float().cpu().numpy())
            txt_out.append(txt.float().cpu().numpy())
        times["model"] += time.perf_counter() - t
        pixels.clear()
        texts.clear()

    current, image, text = None, None, None
    t = time.perf_counter()
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.rsplit(".", 1)
            data = tar.extractfile(member).read()
            t1 = time.perf_counter()
            times["read"] += t1 - t
            if key != current:
                current, image, text = key, None, None
            if ext == "jpg":
                image = Image.open(io.BytesIO(data)).convert("RGB")
                t2 = time.perf_counter()
                times["decode"] += t2 - t1
                pixels.append(preprocess(image))
                times["preprocess"] += time.perf_counter() - t2
            elif ext == "txt":
                text = data.decode()
                texts.append(text)
            if image is not None and text is not None:
                keys.append(key)
                image, text = None, None
                if len(keys) % batch_size == 0:
                    flush()
            t = time.perf_counter()
    if pixels:
        flush()
    img_emb, txt_emb = np.concatenate(img_out), np.concatenate(txt_out)
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "img_emb.npy"), img_emb.astype(np.float16))
    np.save(os.path.join(out_dir, "text_emb.npy"), txt_emb.astype(np.float16))
    return {"keys": keys, "img_emb": img_emb, "text_emb": txt_emb, "times": times}


# ------------------------------------------------------------------------------ embed_shard's output


def read_embed_output(out: str) -> dict:
    """Every key and both embeddings embed_shard wrote under OUT/embeddings/, row order = metadata."""
    import numpy as np
    import pyarrow.parquet as pq

    keys, img, txt = [], [], []
    meta_dir = os.path.join(out, "embeddings", "metadata")
    for name in sorted(os.listdir(meta_dir)):
        if not name.endswith(".parquet"):
            continue
        shard = name[len("metadata_") : -len(".parquet")]
        keys += pq.read_table(os.path.join(meta_dir, name), columns=["key"]).column("key").to_pylist()
        img.append(np.load(os.path.join(out, "embeddings", "img_emb", f"img_emb_{shard}.npy")))
        txt.append(np.load(os.path.join(out, "embeddings", "text_emb", f"text_emb_{shard}.npy")))
    return {"keys": keys, "img_emb": np.concatenate(img), "text_emb": np.concatenate(txt)}


def compare(plain: dict, ours: dict) -> dict:
    """Max abs difference of both embeddings over the keys both have (ours are float16)."""
    import numpy as np

    index = {k: i for i, k in enumerate(plain["keys"])}
    common = [(index[k], j) for j, k in enumerate(ours["keys"]) if k in index]
    a, b = np.array([i for i, _ in common], dtype=int), np.array([j for _, j in common], dtype=int)
    diff = {"keys_plain": len(plain["keys"]), "keys_ours": len(ours["keys"]), "common": len(common)}
    for what in ("img_emb", "text_emb"):
        x, y = plain[what][a].astype(np.float32), ours[what][b].astype(np.float32)
        diff[what] = float(np.abs(x - y).max()) if len(common) else float("nan")
        diff[what + "_cos_min"] = float((x * y).sum(axis=1).min()) if len(common) else float("nan")
    return diff


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def work_dir(keep: str | None, prefix: str) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """`keep` (made if missing, reused across runs), else a temporary directory (cleaned up by the caller)."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        return keep, None
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    return tmp.name, tmp
