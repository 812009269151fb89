"""Benchmark: the embedding stage (embed_shard) against a plain open_clip loop, on this machine.

    python tests/benchmarks/bench_embed.py [--shards 2] [--shard-size 1000] [--shard-size-large 128]
        [--models tiny,vit-b-32] [--batch-size 256] [--loader-threads N] [--repeat 2] [--work DIR] [--device cpu]

Makes (or reuses, with --work) image shards in the download stage's layout (tests/benchmarks/
embed_shards.py: world scenes at world sizes through process_image, 256 border jpg, a caption each),
then for each model, in one process, with the model loaded once (outside the timing, the same
object for both) and both paths warmed up once on a small separate shard:

  plain loop   the code a user writes with open_clip: tarfile in order, PIL open + convert RGB,
               preprocess, batches of --batch-size, model.encode_image / encode_text(tokenizer(..))
               under no_grad, normalise, np.save. Single-threaded Python, no overlap.
  clipcrawl    clipcrawl.tasks.embed.stage.embed_shard(tar, out, settings) for each shard: embeddings, similarity,
               NSFW tag, metadata and dataset parquet, stats.

Models: tiny = tasks/world/clip/ (the world's trained tiny CLIP) or, until it exists, a random-init
model of its config (tasks/world/train_clip.py CONFIG: 64 px ModifiedResNet, 2-layer text); vit-b-32 = ViT-B-32 with random weights
(same speed as trained ones); any other open_clip model name works too.

The runs alternate in order (plain, clipcrawl, then clipcrawl, plain, ...) and the best of --repeat
is kept for each: the machine is shared, ratios matter more than absolute figures. samples/s =
samples embedded / wall seconds over all shards; CPU s = process CPU time (all threads). Both
outputs are compared sample by sample (max abs difference of the embeddings, clipcrawl's are float16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from embed_shards import (
    compare,
    fresh_dir,
    make_shards,
    plain_loop,
    read_embed_output,
    shard_count,
    work_dir,
)

TINY_DIR = os.path.join(ROOT, "tasks", "world", "clip")


def model_settings(name: str, args, work: str):
    """EmbedSettings for a --models entry, and a line saying what it is."""
    from clipcrawl.tasks.core.config import EmbedSettings

    common = {
        "batch_size": args.batch_size,
        "loader_threads": args.loader_threads,
        "device": args.device,
        "precision": args.precision,
        "pretrained": None,
    }
    if name == "tiny":
        return EmbedSettings(checkpoint=TINY_DIR, **common), f"tiny: the world's trained model {TINY_DIR}"
    model = "ViT-B-32" if name == "vit-b-32" else name
    return EmbedSettings(model=model, **common), f"{model}: open_clip, random weights"


def run_plain(clip, tars: list[str], batch_size: int, out: str) -> dict:
    results = []
    t, c = time.perf_counter(), time.process_time()
    for tar in tars:
        results.append(
            plain_loop(
                tar,
                clip.model,
                clip.preprocess,
                clip.tokenizer,
                clip.device,
                clip.dtype,
                batch_size,
                os.path.join(out, os.path.basename(tar)[:-4]),
            )
        )
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    import numpy as np

    merged = {
        "keys": [k for r in results for k in r["keys"]],
        "img_emb": np.concatenate([r["img_emb"] for r in results]),
        "text_emb": np.concatenate([r["text_emb"] for r in results]),
    }
    times = {k: sum(r["times"][k] for r in results) for k in results[0]["times"]}
    return {"wall": wall, "cpu": cpu, "times": times, "output": merged}


def run_ours(tars: list[str], settings, out: str) -> dict:
    from clipcrawl.tasks.embed.stage import embed_shard

    fresh_dir(out)
    stats = []
    t, c = time.perf_counter(), time.process_time()
    for tar in tars:
        stats.append(embed_shard(tar, out, settings))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"wall": wall, "cpu": cpu, "stats": stats, "out": out}


def stage_times(stats: list[dict]) -> dict:
    """Sum over shards of the stats' timing figures (a `timings` dict, or top-level *_s / *seconds keys)."""
    total: dict[str, float] = {}
    for s in stats:
        timings = (
            s.get("timings")
            if isinstance(s.get("timings"), dict)
            else {
                k: v
                for k, v in s.items()
                if k.endswith(("_s", "seconds", "_time")) and k not in ("start_time", "end_time")
            }
        )
        for k, v in timings.items():
            if isinstance(v, (int, float)):
                total[k] = total.get(k, 0.0) + v
    return total


def bench_model(name: str, args, work: str, tars: list[str], warm_tar: str, n: int) -> dict:
    import torch

    from clipcrawl.tasks.embed.clip_model import worker_model

    settings, what = model_settings(name, args, work)
    t = time.perf_counter()
    clip = worker_model(settings)
    print(
        f"\n== {what}\n   loaded in {time.perf_counter() - t:.1f} s on {clip.device} ({clip.dtype}), "
        f"batch {settings.batch_size}, loader_threads {settings.loader_threads or 'default'}, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    scratch = os.path.join(work, "runs")
    t = time.perf_counter()
    run_plain(clip, [warm_tar], settings.batch_size, os.path.join(scratch, "warm-plain"))
    run_ours([warm_tar], settings, os.path.join(scratch, "warm-ours"))
    print(f"   warm-up on {shard_count(warm_tar)} samples: {time.perf_counter() - t:.1f} s", flush=True)

    best: dict[str, dict] = {}
    for r in range(args.repeat):
        order = ("plain", "clipcrawl") if r % 2 == 0 else ("clipcrawl", "plain")
        for which in order:
            threads = torch.get_num_threads()
            if which == "plain":
                m = run_plain(clip, tars, settings.batch_size, os.path.join(scratch, "plain"))
            else:
                m = run_ours(tars, settings, os.path.join(scratch, "ours"))
            note = (
                f" (torch threads {threads} -> {torch.get_num_threads()})" if torch.get_num_threads() != threads else ""
            )
            print(
                f"   run {r + 1} {which:<9}: {n / m['wall']:8.1f} samples/s  {m['wall']:6.1f} s wall  "
                f"{m['cpu']:6.1f} s CPU{note}",
                flush=True,
            )
            if which not in best or m["wall"] < best[which]["wall"]:
                best[which] = m
    plain, ours = best["plain"], best["clipcrawl"]

    print(f"   best of {args.repeat}:")
    print(
        f"     plain loop : {n / plain['wall']:8.1f} samples/s  {n / plain['cpu']:8.1f} samples/CPU-s   parts (s): "
        + "  ".join(f"{k} {v:.2f}" for k, v in plain["times"].items())
    )
    print(f"     clipcrawl  : {n / ours['wall']:8.1f} samples/s  {n / ours['cpu']:8.1f} samples/CPU-s")
    stages = stage_times(ours["stats"])
    if stages:
        print("     clipcrawl stages (s, summed over shards): " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    rates = [s.get("samples_per_s") for s in ours["stats"] if s.get("samples_per_s")]
    if rates:
        print("     clipcrawl stats samples_per_s per shard: " + ", ".join(f"{r:.1f}" for r in rates))
    print(
        f"     ratio clipcrawl / plain: {plain['wall'] / ours['wall']:.2f}x wall   "
        f"{plain['cpu'] / ours['cpu']:.2f}x per CPU-s   (target >= 1.5x wall)"
    )

    diff = compare(plain["output"], read_embed_output(ours["out"]))
    same = diff["common"] == n and diff["img_emb"] < 1e-2 and diff["text_emb"] < 1e-2
    print(
        f"   same embeddings: {'yes' if same else 'NO'} - {diff['common']} of {n} samples in both, "
        f"max abs diff image {diff['img_emb']:.1e} text {diff['text_emb']:.1e}, "
        f"min cosine image {diff['img_emb_cos_min']:.5f} text {diff['text_emb_cos_min']:.5f}"
    )
    print(f"   first shard's stats: {json.dumps(ours['stats'][0], default=str)[:1500]}")
    return {
        "model": name,
        "samples": n,
        "plain_samples_per_s": n / plain["wall"],
        "clipcrawl_samples_per_s": n / ours["wall"],
        "ratio": plain["wall"] / ours["wall"],
        "ratio_cpu": plain["cpu"] / ours["cpu"],
        "stages": stages,
        "same": same,
        "max_abs_diff": [diff["img_emb"], diff["text_emb"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument(
        "--shard-size-large",
        type=int,
        default=128,
        help="shard size for the models other than tiny (ViT-B-32 embeds ~10 samples/s on 2 busy "
        "cores); 0: --shard-size",
    )
    ap.add_argument("--models", default="tiny,vit-b-32", help="comma-separated: tiny, vit-b-32, or open_clip names")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--loader-threads", type=int, default=None, help="EmbedSettings.loader_threads (default: its own)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="EmbedSettings.precision, for both paths (auto: fp32 on the CPU)",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for both paths (default: torch's own, the cores)",
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs of each path; the best is kept")
    ap.add_argument("--work", help="keep shards (and the stand-in tiny model) here and reuse them across runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    work, tmp = work_dir(args.work, "clipcrawl-bench-embed-")

    cores = len(os.sched_getaffinity(0))
    models = [m.strip() for m in args.models.split(",")]
    sizes = {m: args.shard_size if m == "tiny" else args.shard_size_large or args.shard_size for m in models}
    # all shards before torch is imported: the generator forks
    sets = {}
    for size in sorted(set(sizes.values())):
        tars, made = make_shards(os.path.join(work, f"shards-{size}"), args.shards, size, args.seed)
        warm = make_shards(os.path.join(work, f"warmup-{size}"), 1, min(size, 2 * args.batch_size + 17), args.seed + 1)[
            0
        ][0]
        n = sum(shard_count(t) for t in tars)
        mb = sum(os.path.getsize(t) for t in tars) / 1e6
        print(
            f"shards: {len(tars)} x {size} samples ({n} in all, {mb:.0f} MB of tar) in "
            f"{os.path.dirname(tars[0])}, {f'made in {made:.0f} s' if made else 'reused'}; for "
            + ", ".join(m for m in models if sizes[m] == size)
        )
        sets[size] = (tars, warm, n)
    print(f"machine: {cores} usable cores, load average {os.getloadavg()[0]:.1f} (shared: figures are noisy)")

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    results = [bench_model(m, args, work, *sets[sizes[m]]) for m in models]

    print(
        f"\n{'model':<12} {'samples':>7} {'plain samples/s':>15} {'clipcrawl samples/s':>19} {'ratio':>6} {'per CPU-s':>9} {'same':>5}"
    )
    for r in results:
        print(
            f"{r['model']:<12} {r['samples']:>7} {r['plain_samples_per_s']:>15.1f} {r['clipcrawl_samples_per_s']:>19.1f} "
            f"{r['ratio']:>5.2f}x {r['ratio_cpu']:>8.2f}x {'yes' if r['same'] else 'NO':>5}"
        )
    print(
        json.dumps(
            {
                "bench": "embed",
                "cores": cores,
                "shards": len(tars),
                "shard_size": args.shard_size,
                "batch_size": args.batch_size,
                "results": results,
            }
        )
    )
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
