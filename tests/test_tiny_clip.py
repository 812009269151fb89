"""The committed tiny CLIP model separates true from false captions of held-out world pairs at the
filter's threshold, its NSFW tag finds the world's flagged concept (skulls), and a text query for a
concept ranks that concept's images first."""

from __future__ import annotations

import json

import pytest

from clipcrawl.tasks.world.tiny_clip import (
    FLAGGED_PROMPTS,
    KEPT_CASES,
    NEUTRAL_PROMPTS,
    TINY_CLIP_DIR,
    embed_settings,
    evaluate,
)

HELD_OUT_SEED = 1  # training draws from another namespace (tiny-clip-train:*) and seed 0


@pytest.fixture(scope="module")
def report():
    return evaluate(TINY_CLIP_DIR, n=1200, seed=HELD_OUT_SEED)


def test_committed_model_is_small_and_offline():
    weights = TINY_CLIP_DIR / "open_clip_model.safetensors"
    assert weights.stat().st_size <= 10_000_000  # a few MB
    assert json.loads((TINY_CLIP_DIR / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] > 0
    settings = embed_settings(batch_size=32)
    assert settings.checkpoint == str(TINY_CLIP_DIR) and settings.pretrained is None
    assert settings.neutral_prompts == NEUTRAL_PROMPTS and len(settings.flagged_prompts) >= 2


def test_similarity_threshold_separates_held_out_pairs(report):
    details = json.dumps(report, indent=1)
    assert set(report["cases"]) == set(KEPT_CASES), details
    assert report["accuracy"] >= 0.95, details


def test_nsfw_tag_finds_skulls(report):
    nsfw = report["nsfw"]
    assert nsfw["flagged_images"] >= 80, nsfw  # enough skulls for the rate to mean something
    assert nsfw["flagged_tagged_nsfw"] >= 0.95, nsfw
    assert nsfw["other_tagged_nsfw"] <= 0.02, nsfw
    assert set(FLAGGED_PROMPTS).isdisjoint(NEUTRAL_PROMPTS)


def test_text_query_ranks_the_concept_first(report):
    search = report["search"]
    # chance is ~1% (one concept of the world's 108); the demo's and the index tests' queries are of this form
    assert search["concepts"] >= 100 and search["mean_precision"] >= 0.85, search
