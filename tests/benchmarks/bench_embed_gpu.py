"""Benchmark: ViT-B-32 images/s end to end from tar shards on one GPU, with its parts measured apart.

    python tests/benchmarks/bench_embed_gpu.py [--shards 8] [--shard-size 5000] [--batch-size 512]
        [--loader-threads N] [--model ViT-B-32] [--pretrained TAG] [--repeat 1] [--parts-samples 2000]
        [--work DIR]

Runs on any CUDA machine (exits with a one-line reason without CUDA). Makes (or reuses, with --work)
image shards in the download stage's layout (tests/benchmarks/embed_shards.py: world scenes through
process_image, 256 border jpg + caption), with a process per core. The model has random weights
unless --pretrained names cached ones (same speed either way), fp16 on cuda:0. After a warm-up
shard, it measures:

  end to end     clipcrawl.tasks.embed.stage.embed_shard over every shard (read, decode, preprocess, tokenize, both
                 towers, similarity, NSFW tag, outputs written): images/s, best of --repeat
  decode         PIL open + convert RGB of one shard's jpgs already in memory: 1 thread, N threads
  preprocess     the model's preprocess of those decoded images: 1 thread, N threads
  decode+prep    both, per image in one thread-pool task (what a threaded loader does): 1 and N threads
                 (N threads far under N x 1 thread: the GIL or oversubscribed torch threads)
  stack          torch.stack of one batch of preprocessed images (the consumer thread does it per batch)
  tokenize       the model's tokenizer over the shard's captions, batch by batch, 1 thread
  model image    encode_image on random fp16 batches already on the GPU (cuda.synchronize)
  model text     encode_text on the shard's tokenized captions already on the GPU
  model both     both towers, i.e. the GPU's ceiling for the stage
  encode_images  ClipModel.encode_images as embed_shard calls it: uint8 CPU pixels in (pinned, to the GPU,
                 normalised there), numpy out
  text trimmed   the text tower run only up to the batch's longest caption, as embed_shard runs it
                 (clipcrawl.tasks.embed.clip_model.encode_text_trimmed; the same result with a causal mask and
                 end-token pooling)
  plain loop     the straightforward open_clip loop over one shard (single thread, no overlap)

Parts are measured on --parts-samples samples of shard 0. N = --loader-threads (default: embed_shard's
own, min(16, os.cpu_count())). Prints a table and one JSON
line with every figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from embed_shards import (
    fresh_dir,
    make_shards,
    plain_loop,
    shard_count,
    shard_members,
    work_dir,
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn, count: int, repeat: int) -> tuple[float, float]:
    """(items/s, seconds) of the fastest of `repeat` calls of fn, which handles `count` items."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return count / best, best


def threaded(fn, items: list, threads: int, keep: bool = False) -> list | None:
    """fn over items in a pool of `threads` threads (or this one); the results only when `keep`."""
    if threads == 1:
        results = map(fn, items)
    else:
        pool = concurrent.futures.ThreadPoolExecutor(threads)
        results = pool.map(fn, items, chunksize=16)
    try:
        if keep:
            return list(results)
        for _ in results:
            pass
        return None
    finally:
        if threads != 1:
            pool.shutdown()


def decode(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.load()
    return img


def parts(clip, tar: str, threads: int, batch_size: int, repeat: int, limit: int) -> dict:
    """images/s of each part of the stage, measured alone on (up to `limit` samples of) one shard."""
    import torch

    from clipcrawl.tasks.embed.clip_model import encode_text_trimmed

    samples = shard_members(tar)[:limit]
    blobs, texts = [s[1] for s in samples], [s[2] for s in samples]
    n = len(samples)
    pre = clip.preprocess
    r: dict[str, float] = {"samples": n}

    r["decode_1"], _ = best_rate(lambda: threaded(decode, blobs, 1), n, repeat)
    r["decode_n"], _ = best_rate(lambda: threaded(decode, blobs, threads), n, repeat)
    images = threaded(decode, blobs, threads, keep=True)
    r["preprocess_1"], _ = best_rate(lambda: threaded(pre, images, 1), n, repeat)
    r["preprocess_n"], _ = best_rate(lambda: threaded(pre, images, threads), n, repeat)
    one = [pre(img) for img in images[:batch_size]]
    images = None  # ~200 KB each: free them before the model runs
    r["decode_preprocess_1"], _ = best_rate(lambda: threaded(lambda b: pre(decode(b)), blobs, 1), n, repeat)
    r["decode_preprocess_n"], _ = best_rate(lambda: threaded(lambda b: pre(decode(b)), blobs, threads), n, repeat)
    # what the consumer does with each batch on one thread before the model sees it
    r["stack_1"], _ = best_rate(lambda: torch.stack(one), len(one), repeat)
    batches = [texts[i : i + batch_size] for i in range(0, n, batch_size)]
    r["tokenize_1"], _ = best_rate(lambda: [clip.tokenizer(b) for b in batches], n, repeat)

    device, dtype = clip.device, clip.dtype
    model = clip.model
    steps = max(4, -(-n // batch_size))
    gen = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randn((batch_size, *one[0].shape), generator=gen, device=device).to(dtype)
    tokens = clip.tokenizer((texts * (batch_size // max(1, len(texts)) + 1))[:batch_size]).to(device)

    def run(image: bool, text: bool, encode_text=model.encode_text):
        with torch.inference_mode():
            for _ in range(steps):
                if image:
                    model.encode_image(pixels)
                if text:
                    encode_text(tokens)
        sync(device)

    run(True, True)  # warm (kernel selection for this batch shape)
    r["model_image"], _ = best_rate(lambda: run(True, False), steps * batch_size, repeat)
    r["model_text"], _ = best_rate(lambda: run(False, True), steps * batch_size, repeat)
    r["model_both"], _ = best_rate(lambda: run(True, True), steps * batch_size, repeat)

    def trimmed(text):
        return encode_text_trimmed(model, text)

    run(False, True, trimmed)
    r["model_text_trimmed"], _ = best_rate(lambda: run(False, True, trimmed), steps * batch_size, repeat)
    r["text_tokens_used"] = int(tokens.argmax(dim=-1).max()) + 1

    # the model's API as embed_shard calls it: uint8 (n, H, W, 3) CPU pixels in, numpy out (transfers included)
    cpu_pixels = torch.randint(
        0,
        256,
        (batch_size, *one[0].shape[1:], one[0].shape[0]),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.uint8,
    )

    def api():
        for _ in range(steps):
            clip.encode_images(cpu_pixels)
        sync(device)

    api()
    r["encode_images_api"], _ = best_rate(api, steps * batch_size, repeat)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--loader-threads", type=int, default=None, help="EmbedSettings.loader_threads (default: its own)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None, help="open_clip pretrained tag, when its weights are cached")
    ap.add_argument("--checkpoint", default=None, help="local weights instead (e.g. tasks/world/clip)")
    ap.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--repeat", type=int, default=1, help="end-to-end runs over all shards; the best is kept")
    ap.add_argument("--parts-repeat", type=int, default=3, help="runs of each part measurement; the best is kept")
    ap.add_argument("--parts-samples", type=int, default=2000, help="samples of shard 0 the parts are measured on")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain open_clip loop")
    ap.add_argument("--work", help="keep the shards here and reuse them across runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # smoke run of every code path
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit(
            f"bench_embed_gpu: no CUDA device visible to torch {torch.__version__} "
            f"(built for CUDA {torch.version.cuda}; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run it on a machine with a GPU whose driver "
            f"supports that CUDA version"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"

    work, tmp = work_dir(args.work, "clipcrawl-bench-embed-gpu-")
    cores = len(os.sched_getaffinity(0))
    # the pool forks: torch is imported but CUDA is not initialised yet, and the children never touch it
    tars, made = make_shards(os.path.join(work, "shards"), args.shards, args.shard_size, args.seed, workers=cores)
    warm_tar = make_shards(
        os.path.join(work, "warmup"), 1, min(args.shard_size, 2 * args.batch_size + 17), args.seed + 1, workers=cores
    )[0][0]
    n = sum(shard_count(t) for t in tars)
    size = sum(os.path.getsize(t) for t in tars)
    print(
        f"shards: {len(tars)} x {args.shard_size} samples ({n} in all, {size / 1e6:.0f} MB of tar) in "
        f"{os.path.dirname(tars[0])}, {f'made in {made:.0f} s' if made else 'reused'}",
        flush=True,
    )

    from clipcrawl.tasks.core.config import EmbedSettings
    from clipcrawl.tasks.embed.clip_model import worker_model
    from clipcrawl.tasks.embed.stage import embed_shard

    precision = args.precision if device == "cuda" else "fp32"
    settings = EmbedSettings(
        model=args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        device=device,
        precision=precision,
        batch_size=args.batch_size,
        loader_threads=args.loader_threads,
    )
    t = time.perf_counter()
    clip = worker_model(settings)
    load_s = time.perf_counter() - t
    threads = args.loader_threads or min(16, os.cpu_count() or 1)  # embed_shard's default
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (--allow-cpu smoke run)"
    print(
        f"machine: {gpu}, {cores} usable cores (os.cpu_count {os.cpu_count()}), {cpu_model()}; torch {torch.__version__}"
        f" (CUDA {torch.version.cuda}), model {clip.name} {clip.dtype} "
        f"loaded in {load_s:.1f} s; batch {args.batch_size}, loader threads {threads}",
        flush=True,
    )

    runs = os.path.join(work, "runs")
    t = time.perf_counter()
    embed_shard(warm_tar, fresh_dir(os.path.join(runs, "warm")), settings)
    print(f"warm-up embed_shard on {shard_count(warm_tar)} samples: {time.perf_counter() - t:.1f} s", flush=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best, best_stats = float("inf"), []
    for r in range(args.repeat):
        out = fresh_dir(os.path.join(runs, "e2e"))
        stats = []
        t = time.perf_counter()
        for tar in tars:
            stats.append(embed_shard(tar, out, settings))
        wall = time.perf_counter() - t
        print(
            f"end to end run {r + 1}: {n / wall:.0f} images/s ({wall:.1f} s for {n}); per shard "
            + ", ".join(f"{s.get('samples_per_s', 0):.0f}" for s in stats),
            flush=True,
        )
        if wall < best:
            best, best_stats = wall, stats
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    stages: dict[str, float] = {}
    for s in best_stats:
        timings = s.get("timings") if isinstance(s.get("timings"), dict) else {}
        for k, v in timings.items():
            if isinstance(v, (int, float)):
                stages[k] = stages.get(k, 0.0) + v

    p = parts(clip, tars[0], threads, args.batch_size, args.parts_repeat, args.parts_samples)

    plain = None
    if not args.no_plain:
        t = time.perf_counter()
        res = plain_loop(
            tars[0],
            clip.model,
            clip.preprocess,
            clip.tokenizer,
            clip.device,
            clip.dtype,
            args.batch_size,
            os.path.join(runs, "plain"),
        )
        wall = time.perf_counter() - t
        plain = {
            "images_per_s": len(res["keys"]) / wall,
            "seconds": wall,
            "samples": len(res["keys"]),
            "parts_s": res["times"],
        }

    e2e = n / best
    print(f"\n{'measure':<34} {'images/s':>10}")
    print(
        f"{'end to end (embed_shard)':<34} {e2e:>10.0f}   best of {args.repeat}, {n} images, "
        f"peak GPU memory {peak_mem:.1f} GiB"
    )
    if stages:
        print(f"{'  its stages, s summed over shards':<34} " + "  ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    rows = [
        ("decode, 1 thread", "decode_1"),
        (f"decode, {threads} threads", "decode_n"),
        ("preprocess, 1 thread", "preprocess_1"),
        (f"preprocess, {threads} threads", "preprocess_n"),
        ("decode+preprocess, 1 thread", "decode_preprocess_1"),
        (f"decode+preprocess, {threads} threads", "decode_preprocess_n"),
        ("torch.stack of a batch, 1 thread", "stack_1"),
        ("tokenize, 1 thread", "tokenize_1"),
        ("model image tower (GPU tensors)", "model_image"),
        ("model text tower (GPU tensors)", "model_text"),
        ("model both towers (GPU tensors)", "model_both"),
        ("clip.encode_images (CPU in, np out)", "encode_images_api"),
        (f"text tower, {p.get('text_tokens_used')} tokens not 77", "model_text_trimmed"),
    ]
    for label, key in rows:
        if key in p:
            print(f"{label:<34} {p[key]:>10.0f}")
    print(f"  (parts measured on {p['samples']} samples of shard 0; model rows: {args.batch_size} per batch)")
    if plain:
        print(
            f"{'plain open_clip loop, 1 shard':<34} {plain['images_per_s']:>10.0f}   parts (s): "
            + "  ".join(f"{k} {v:.1f}" for k, v in plain["parts_s"].items())
        )
        print(f"ratio end to end / plain loop: {e2e / plain['images_per_s']:.2f}x")
    limit = min(p["decode_preprocess_n"], p["model_both"])
    print(
        f"end to end / min(decode+preprocess, model both): {e2e / limit:.2f} "
        f"(the pipeline's ceiling is {'the CPU side' if p['decode_preprocess_n'] < p['model_both'] else 'the GPU'})"
    )
    print(f"GPU busy (at the measured model-both rate) for {e2e / p['model_both']:.0%} of the end-to-end wall time")
    print(f"target >= 5,000 images/s on one H100: {'met' if e2e >= 5000 else 'NOT met'} ({e2e:.0f}, on {gpu})")
    print(
        json.dumps(
            {
                "bench": "embed_gpu",
                "gpu": gpu,
                "cpu": cpu_model(),
                "cores": cores,
                "model": clip.name,
                "pretrained": args.pretrained,
                "dtype": str(clip.dtype),
                "batch_size": args.batch_size,
                "loader_threads": threads,
                "shards": len(tars),
                "shard_size": args.shard_size,
                "end_to_end_images_per_s": e2e,
                "stages_s": stages,
                "parts_images_per_s": p,
                "plain_loop": plain,
                "peak_gpu_mem_gib": peak_mem,
            }
        )
    )
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
