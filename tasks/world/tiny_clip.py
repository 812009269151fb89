"""The tiny CLIP model of the synthetic world (tasks/world/clip/), its held-out samples and evaluation.

    settings = embed_settings()            # EmbedSettings for the embed stage: this model, world prompts
    evaluate(n=1200, seed=1)               # accuracy of `similarity >= 0.3` on held-out pairs, NSFW rates,
                                           # text search precision

A sample is what the embed stage sees end to end: a scene rendered at a size the world serves,
encoded in a format it serves, passed through the download stage's `process_image`, with the
alt text a correct extractor recovers for a case it keeps. Training (tasks/world/train_clip.py)
draws its images and texts the same way, from another rng namespace.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipcrawl.tasks.core.config import DownloadSettings, EmbedSettings
from clipcrawl.tasks.world.captions import ALT_CASES, Alt, make_alt
from clipcrawl.tasks.world.pages import CHARSETS, LATIN1_LANGS
from clipcrawl.tasks.world.scenes import (
    FLAGGED_SHAPES,
    IMAGE_SIZES,
    PLURALS,
    SHAPES,
    Scene,
    encode_image,
    random_scene,
    render_scene,
)

TINY_CLIP_DIR = Path(__file__).parent / "clip"
THRESHOLD = EmbedSettings().similarity_threshold  # LAION-400M: 0.3
# Near-duplicates for this model: the same image served twice has the same embedding, while two scenes that
# differ only in where their shapes sit embed nearly alike too (a 64 px model sees little else), so the 0.96
# meant for ViT-B-32 would join images the world counts as different (figures: docs/benchmarks.md).
NEAR_DUPLICATE_THRESHOLD = 0.998
# Skulls are 2% of the world; held-out and training samples take more so their rates are measurable.
FLAGGED_RATE = 0.1
SERVED_FORMATS = {"jpg": 60, "png": 20, "webp": 12, "gif": 8}  # as scenes.image_spec serves them
# The cases whose text survives extraction (5..4096 chars); missing/empty/short/too_long never reach a model.
KEPT_CASES = {case: w for case, w in ALT_CASES.items() if case not in ("missing", "empty", "short", "too_long")}

# Categories of the NSFW tag for this world: one per ordinary shape; skulls are the flagged concept
# (two prompts, since the tag needs both of an image's top two categories flagged).
NEUTRAL_PROMPTS = tuple(f"a photo of {PLURALS.get(s, s + 's')}" for s in SHAPES)
FLAGGED_PROMPTS = tuple(p for s in FLAGGED_SHAPES for p in (f"a photo of {s}s", f"a drawing of a {s}"))


def search_query(colour: str, shape: str) -> str:
    """The text query for a concept of the world, as the demo asks it."""
    return f"a photo of {colour} {PLURALS.get(shape, shape + 's')}"


def embed_settings(**overrides) -> EmbedSettings:
    """EmbedSettings that use the tiny model and this world's NSFW categories."""
    return EmbedSettings(
        checkpoint=str(TINY_CLIP_DIR),
        pretrained=None,
        neutral_prompts=NEUTRAL_PROMPTS,
        flagged_prompts=FLAGGED_PROMPTS,
        **overrides,
    )


def world_language(rng: random.Random) -> str:
    """A page language drawn as tasks/world/pages.py draws it (charset weights, de/fr for Latin-1)."""
    charset = rng.choices(list(CHARSETS), [w for _, w in CHARSETS.values()])[0]
    return rng.choice(LATIN1_LANGS) if charset == "iso-8859-1" else CHARSETS[charset][0]


def downloaded_image(scene: Scene, rng: random.Random, settings: DownloadSettings | None = None) -> bytes:
    """The bytes the download stage stores for `scene` served at a random size and format."""
    from clipcrawl.tasks.download.images import process_image

    fmt = rng.choices(list(SERVED_FORMATS), list(SERVED_FORMATS.values()))[0]
    body = encode_image(render_scene(scene, rng.choice(IMAGE_SIZES)), fmt)
    result = process_image(body, settings or DownloadSettings())
    if result.data is None:
        raise RuntimeError(f"process_image failed on a {fmt} of {scene}: {result.status} {result.error_message}")
    return result.data


@dataclass(frozen=True)
class Sample:
    scene: Scene
    image: bytes  # the downloaded image (jpg after process_image)
    alt: Alt  # alt.text is the pair's text, alt.matches its label


def held_out_samples(n: int, seed: int = 1) -> Iterator[Sample]:
    """`n` pairs with the kept alt cases at their world weights; training never draws from this namespace."""
    rng = random.Random(f"tiny-clip-held-out:{seed}")
    for _ in range(n):
        scene = random_scene(rng, FLAGGED_RATE)
        case = rng.choices(list(KEPT_CASES), list(KEPT_CASES.values()))[0]
        yield Sample(scene, downloaded_image(scene, rng), make_alt(case, scene, world_language(rng), rng))


def encode(model_dir: Path | str, images: list[bytes], texts: list[str], batch_size: int = 256):
    """L2-normalised image and text embeddings (float32 numpy) as the embed stage computes them
    (clipcrawl.tasks.embed.clip_model on the CPU: the same decode, preprocessing and text tower)."""
    import torch
    from PIL import Image

    from clipcrawl.tasks.embed.clip_model import load_model

    model = load_model(embed_settings(device="cpu").model_copy(update={"checkpoint": str(model_dir)}))
    img = [
        model.encode_images(
            torch.from_numpy(np.stack([model.prepare(Image.open(io.BytesIO(b))) for b in images[i : i + batch_size]]))
        )
        for i in range(0, len(images), batch_size)
    ]
    txt = [model.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(img), np.concatenate(txt)


def _quantiles(x: np.ndarray) -> dict:
    qs = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)
    return {f"q{round(q * 100):02d}": round(float(v), 4) for q, v in zip(qs, np.quantile(x, qs))} if len(x) else {}


def evaluate(model_dir: Path | str = TINY_CLIP_DIR, n: int = 1200, seed: int = 1) -> dict:
    """On held-out samples: accuracy of the similarity filter (`similarity >= 0.3` vs `matches`), NSFW tag
    rates, and text search: for each (colour, shape) concept present, the share of the first
    min(10, n) images that `search_query` ranks first which show it (n: images of the concept)."""
    from clipcrawl.tasks.embed.stage import NSFW, nsfw_tags

    samples = list(held_out_samples(n, seed))
    prompts = NEUTRAL_PROMPTS + FLAGGED_PROMPTS
    concepts = sorted({(s.scene.colour, s.scene.shape) for s in samples})
    img, txt = encode(
        model_dir,
        [s.image for s in samples],
        [s.alt.text for s in samples] + list(prompts) + [search_query(*c) for c in concepts],
    )
    txt, prompt_emb, query_emb = txt[:n], txt[n : n + len(prompts)], txt[n + len(prompts) :]
    sim = (img * txt).sum(axis=1)
    matches = np.array([s.alt.matches for s in samples])
    correct = (sim >= THRESHOLD) == matches
    cases = np.array([s.alt.case for s in samples])
    tags = nsfw_tags(img, prompt_emb, np.array([p in FLAGGED_PROMPTS for p in prompts]))
    flagged = np.array([s.scene.flagged for s in samples])
    concept_of = np.array([concepts.index((s.scene.colour, s.scene.shape)) for s in samples])
    ranked = np.argsort(-(query_emb @ img.T), axis=1, kind="stable")
    precision = []
    for q in range(len(concepts)):
        k = min(10, int((concept_of == q).sum()))
        precision.append(float((concept_of[ranked[q, :k]] == q).mean()))
    return {
        "n": n,
        "seed": seed,
        "accuracy": round(float(correct.mean()), 4),
        "cases": {
            c: {"n": int((cases == c).sum()), "accuracy": round(float(correct[cases == c].mean()), 4)}
            for c in KEPT_CASES
            if (cases == c).any()
        },
        "similarity": {"matched": _quantiles(sim[matches]), "mismatched": _quantiles(sim[~matches])},
        "nsfw": {
            "flagged_images": int(flagged.sum()),
            "flagged_tagged_nsfw": round(float((tags[flagged] == NSFW).mean()), 4),
            "other_images": int((~flagged).sum()),
            "other_tagged_nsfw": round(float((tags[~flagged] == NSFW).mean()), 4),
        },
        "search": {
            "concepts": len(concepts),
            "mean_precision": round(float(np.mean(precision)), 4),
            "min_precision": round(float(np.min(precision)), 4),
        },
    }
