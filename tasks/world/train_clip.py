"""Train the tiny CLIP model of the synthetic world.

    python -m clipcrawl.tasks.world.train_clip [--out DIR] [--steps N] [--seed S]

Writes DIR/open_clip_config.json and DIR/open_clip_model.safetensors (fp16, open_clip's local-dir
layout; default DIR: tasks/world/clip/) and prints the held-out evaluation. Deterministic by seed.
The committed weights are the defaults' (2000 steps, a pool of 10,000 images, seed 0): 32 minutes on
one core of a 2-core machine running another training beside it.

Images go through the pipeline the embed stage sees (render, serve-format encode, the download
stage's process_image, the model's val preprocess), precomputed once; decoded whole, where the
embed stage decodes these 256 px JPEGs at half scale (evaluate() measures through the stage's path). Texts are drawn fresh per
step: a true caption in one of the kept alt cases, and a negative (the world's mismatched caption,
a hard negative one attribute away, or junk). The loss is CLIP's InfoNCE (with the negatives as
extra columns) plus a hinge on the absolute cosine similarity, because the filter keeps pairs by a
fixed threshold (0.3), not by rank. A third term teaches the concepts alone: each image against
captions naming only a shape (the NSFW tag's category prompts are of this kind) and against
captions naming a colour and a shape (what a search query says), one per concept of the world.
Without it the model told colours apart well and shapes barely: 42% of held-out skulls were
tagged NSFW and a search for "a photo of pink rings" returned 6 rings in its first 10.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import tempfile
import time
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcrawl.tasks.embed.clip_model import encode_text_trimmed
from clipcrawl.tasks.world.captions import make_alt
from clipcrawl.tasks.world.scenes import COLOURS, FLAGGED_SHAPES, PLURALS, SHAPES, Scene, describe, random_scene
from clipcrawl.tasks.world.tiny_clip import (
    FLAGGED_RATE,
    KEPT_CASES,
    THRESHOLD,
    TINY_CLIP_DIR,
    downloaded_image,
    evaluate,
    world_language,
)

CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        # A small CLIP ResNet (RN50's design at width 12): on CPU it learns shapes in a few hundred steps
        # where a ViT of the same cost stays near chance.
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 12, "head_width": 64},
        # 64 tokens: the longest foreign caption (Russian, byte-level BPE) takes ~54
        "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2, "mlp_ratio": 2.0},
    },
    "preprocess_cfg": {
        "size": 64,
        "mode": "RGB",
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}
POSITIVE_CASES = {
    c: max(w, 10) for c, w in KEPT_CASES.items() if c not in ("caption_mismatch", "junk")
}  # rare ones floored
MARGIN_POS, MARGIN_NEG = THRESHOLD + 0.15, THRESHOLD - 0.15  # hinge targets around the filter threshold
CAL_WEIGHT = 10.0
# Captions naming the shape alone: the world's captions always name a colour, but the NSFW tag's
# category prompts do not, so the model must also learn what a shape word means on its own.
SHAPE_TEMPLATES = (
    "a photo of {plural}",
    "a drawing of a {shape}",
    "{plural}",
    "an image of {plural}",
    "a picture of a {shape}",
)
SHAPE_ONLY_RATE = 0.25
CONCEPT_TEMPLATES = (
    "a photo of {colour} {plural}",
    "{colour} {plural}",
    "a picture of a {colour} {shape}",
    "an image of {colour} {plural}",
    "a drawing of a {colour} {shape}",
)
CONCEPT_WEIGHT = 1.0
ALL_SHAPES = SHAPES + FLAGGED_SHAPES
GROUP = 4
_PREPROCESS = None  # the val transform, set before the pool workers fork


def _make_pool(args):
    seed, indices = args
    out = []
    for i in indices:
        rng = random.Random(f"tiny-clip-train:{seed}:{i}")  # per image: the pool is the same however it is split
        scene = random_scene(rng, FLAGGED_RATE)
        out.append((scene, _PREPROCESS(_open(downloaded_image(scene, rng))).half()))
    return out


def _open(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data))


def image_pool(n: int, seed: int, preprocess, processes: int = 2) -> tuple[list[Scene], torch.Tensor]:
    global _PREPROCESS
    _PREPROCESS = preprocess  # inherited by the forked workers
    chunks = [(seed, range(i, min(i + 500, n))) for i in range(0, n, 500)]
    with get_context("fork").Pool(processes) as pool:
        items = [item for part in pool.imap(_make_pool, chunks) for item in part]
    return [s for s, _ in items], torch.stack([x for _, x in items])


def positive_text(scene: Scene, rng: random.Random) -> tuple[str, str | None]:
    """A true text and the colour it names (None: it names the shape alone)."""
    if rng.random() < SHAPE_ONLY_RATE:
        plural = PLURALS.get(scene.shape, scene.shape + "s")
        return rng.choice(SHAPE_TEMPLATES).format(shape=scene.shape, plural=plural), None
    case = rng.choices(list(POSITIVE_CASES), list(POSITIVE_CASES.values()))[0]
    return make_alt(case, scene, world_language(rng), rng).text, scene.colour


def hard_negative(scene: Scene, rng: random.Random) -> Scene:
    """The scene one attribute away: another shape, or another colour (the background's colour swaps them)."""
    if rng.random() < 0.6:
        return replace(scene, shape=rng.choice([s for s in SHAPES + FLAGGED_SHAPES if s != scene.shape]))
    colour = rng.choice([c for c in COLOURS if c != scene.colour])
    background = scene.colour if colour == scene.background else scene.background
    return replace(scene, colour=colour, background=background)


def negative_text(scene: Scene, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        return make_alt("caption_mismatch", scene, "en", rng).text
    if r < 0.9:
        return describe(hard_negative(scene, rng), rng)
    return make_alt("junk", scene, "en", rng).text


def concept_texts(rng: random.Random) -> tuple[list[str], list[str]]:
    """One caption per shape and one per (colour, shape), each set in a template drawn for the step."""

    def plural(shape: str) -> str:
        return PLURALS.get(shape, shape + "s")

    shape_template, concept_template = rng.choice(SHAPE_TEMPLATES), rng.choice(CONCEPT_TEMPLATES)
    return (
        [shape_template.format(shape=s, plural=plural(s)) for s in ALL_SHAPES],
        [concept_template.format(colour=c, shape=s, plural=plural(s)) for c in COLOURS for s in ALL_SHAPES],
    )


def concept_loss(img, shape_emb, concept_emb, scenes: list[Scene], logit_scale):
    """Cross-entropy of each image over the shape captions and over the (colour, shape) captions."""
    shapes = torch.tensor([ALL_SHAPES.index(s.shape) for s in scenes])
    concepts = torch.tensor(
        [list(COLOURS).index(s.colour) * len(ALL_SHAPES) + ALL_SHAPES.index(s.shape) for s in scenes]
    )
    return (
        F.cross_entropy(img @ shape_emb.T * logit_scale, shapes)
        + F.cross_entropy(img @ concept_emb.T * logit_scale, concepts)
    ) / 2


def batch_indices(groups: list[list[int]], batch: int, gen: torch.Generator) -> list[int]:
    """`batch` images in groups of GROUP that share colour and background, so that in-batch
    negatives cannot be told apart by colours alone and the shape has to be learnt."""
    keys = torch.randperm(len(groups), generator=gen)[: batch // GROUP].tolist()
    return [groups[k][j] for k in keys for j in torch.randint(len(groups[k]), (GROUP,), generator=gen).tolist()]


def clip_loss(img, pos, neg, related, logit_scale):
    """InfoNCE over images x (true captions + negatives) and captions x images, plus hinges on the
    absolute similarity of true pairs, negatives and shuffled pairs. `related[i, j]`: caption j
    also describes image i (same shape, and same colour where it names one); never a negative."""
    s_pos, s_neg = img @ pos.T, (img * neg).sum(1)
    logits = (s_pos * logit_scale).masked_fill(related.clone().fill_diagonal_(False), -1e4)
    labels = torch.arange(len(img))
    i2t = torch.cat([logits, (img @ neg.T) * logit_scale], dim=1)
    nce = (F.cross_entropy(i2t, labels) + F.cross_entropy(logits.T, labels)) / 2
    cal = (
        F.relu(MARGIN_POS - s_pos.diagonal()).mean()
        + F.relu(s_neg - MARGIN_NEG).mean()
        + F.relu(s_pos - MARGIN_NEG)[~related].mean()
    )
    return nce + CAL_WEIGHT * cal, nce, cal


def train(
    out: Path,
    steps: int,
    seed: int,
    images: int,
    batch: int,
    lr: float,
    threads: int = 1,
    vision_width: int | None = None,
) -> dict:
    import open_clip
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    config = json.loads(json.dumps(CONFIG))
    if vision_width:
        config["model_cfg"]["vision_cfg"]["width"] = vision_width
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "open_clip_config.json").write_text(json.dumps(config))
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp}", load_weights=False)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp}")
    scenes, pixels = image_pool(images, seed, preprocess)
    print(f"image pool: {images} images in {time.perf_counter() - t0:.0f} s", flush=True)

    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(scenes):
        groups.setdefault((s.colour, s.background), []).append(i)
    groups = [groups[k] for k in sorted(groups)]
    rng = random.Random(f"tiny-clip-train-texts:{seed}")
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    model.train()
    for step in range(steps):
        idx = batch_indices(groups, batch, gen)
        x = pixels[idx].float()
        flip = torch.rand(batch, generator=gen) < 0.5  # mirror images: every world shape is left-right symmetric
        x[flip] = x[flip].flip(-1)
        batch_scenes = [scenes[i] for i in idx]
        positives = [positive_text(s, rng) for s in batch_scenes]
        related = torch.tensor(
            [
                [s.shape == t.shape and colour in (None, s.colour) for t, (_, colour) in zip(batch_scenes, positives)]
                for s in batch_scenes
            ]
        )
        shape_texts, concepts = concept_texts(rng)
        texts = [t for t, _ in positives] + [negative_text(s, rng) for s in batch_scenes] + shape_texts + concepts
        img = model.encode_image(x, normalize=True)
        txt = F.normalize(encode_text_trimmed(model, tokenizer(texts)), dim=-1)
        scale = model.logit_scale.exp()
        loss, nce, cal = clip_loss(img, txt[:batch], txt[batch : 2 * batch], related, scale)
        con = concept_loss(
            img, txt[2 * batch : 2 * batch + len(shape_texts)], txt[2 * batch + len(shape_texts) :], batch_scenes, scale
        )
        loss = loss + CONCEPT_WEIGHT * con
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.3f}  nce {nce.item():.3f}  cal {cal.item():.4f}  "
                f"concepts {con.item():.3f}  "
                f"scale {model.logit_scale.exp().item():.1f}  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "open_clip_model.safetensors"
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights) + ".tmp")
    os.chmod(str(weights) + ".tmp", 0o644)  # safetensors writes 0600; the file is committed
    os.replace(str(weights) + ".tmp", weights)
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {out} ({weights.stat().st_size / 1e6:.1f} MB) after {time.perf_counter() - t0:.0f} s", flush=True)
    return evaluate(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=TINY_CLIP_DIR)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=10000, help="Size of the precomputed image pool.")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Torch threads (on a shared machine fewer can be faster: docs/benchmarks.md).",
    )
    parser.add_argument("--vision-width", type=int, help="Width of the image tower's ResNet (CONFIG's when not given).")
    args = parser.parse_args(argv)
    print(
        json.dumps(
            train(args.out, args.steps, args.seed, args.images, args.batch, args.lr, args.threads, args.vision_width),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
