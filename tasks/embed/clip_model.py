"""The CLIP model of the embed stage: open_clip weights chosen by EmbedSettings, loaded once per worker process.

Three sources of weights: an open_clip name + pretrained tag (fetched into `cache_dir` on first use),
a local checkpoint (a weights file for `settings.model`, or a directory in open_clip's local-dir
layout: open_clip_config.json + weights), or none (`pretrained=None`: random weights, for speed figures).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transformer import text_global_pool
from PIL.JpegImagePlugin import JpegImageFile
from torchvision.transforms import CenterCrop, Compose, Normalize, ToTensor

from clipcrawl.tasks.core.config import EmbedSettings

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelUnavailable(RuntimeError):
    """The settings name a model this process cannot load: unknown name or tag, missing checkpoint,
    weights neither cached nor fetchable."""


@dataclass(eq=False)  # compared and hashed by identity: one per process, a key of per-model caches
class ClipModel:
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> (3, H, W) float tensor (open_clip's val transform)
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    name: str

    def __post_init__(self) -> None:
        # open_clip's val transform is PIL steps (resize, crop, mode), then ToTensor and Normalize. The PIL
        # steps run in loader threads (Pillow releases the GIL); ToTensor and Normalize run once per batch
        # on the model's device, so a batch crosses to the GPU as uint8, a quarter of the bytes.
        steps = list(getattr(self.preprocess, "transforms", []))
        cut = next((i for i, t in enumerate(steps) if isinstance(t, ToTensor)), None)
        if cut is None or len(steps) != cut + 2 or not isinstance(steps[-1], Normalize):
            raise ModelUnavailable(
                f"{self.name}: unexpected preprocessing {self.preprocess} (want PIL steps, ToTensor, Normalize)"
            )
        self.resize = Compose(steps[:cut])
        crop = next((t.size for t in steps[:cut] if isinstance(t, CenterCrop)), None)
        self.input_size = tuple(crop) if crop else None  # (H, W) the model sees
        self._mean = torch.tensor(steps[-1].mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(steps[-1].std, device=self.device).view(1, -1, 1, 1)

    def prepare(self, image: Any) -> np.ndarray:
        """PIL image -> (H, W, 3) uint8 at the model's input size: the per-image part of preprocessing.

        A JPEG not yet loaded is decoded at the smallest of libjpeg's scales (1/2, 1/4, 1/8) that keeps
        both sides at least the model's input size (Pillow's draft, as its thumbnail() does): the
        resize that follows shrinks it anyway, and decoding fewer pixels is faster (docs/benchmarks.md).
        Larger inputs (ViT-B-32's 224) keep the full decode of the download stage's 256 px images.
        """
        if self.input_size and isinstance(image, JpegImageFile):  # MPO (camera JPEGs) included
            image.draft("RGB", self.input_size[::-1])
        image.load()  # truncated data fails here, not half-grey later
        return np.asarray(self.resize(image).convert("RGB"))

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, H, W, 3) uint8 from `prepare` -> float32 (n, d), L2-normalised."""
        with torch.inference_mode():
            if self.device.type == "cuda":
                pixels = pixels.pin_memory()
            x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            features = self.model.encode_image(((x - self._mean) / self._std).to(self.dtype))
            return _normalised(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> float32 (n, d), L2-normalised. Longer captions are cut at the context length."""
        with torch.inference_mode():
            features = encode_text_trimmed(self.model, self.tokenizer(list(texts)).to(self.device, non_blocking=True))
            return _normalised(features)


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text, run only up to the batch's last end-of-text token.

    CLIP's text tower attends causally and pools at the end-of-text token, so the padding after it
    cannot change the result; captions are ~15 tokens of the 77, and the tower's cost is per token.
    Other text towers run whole.
    """
    pool = getattr(model, "text_pool_type", None)
    if not isinstance(model, open_clip.CLIP) or model.attn_mask is None or pool not in ("argmax", "eos"):
        return model.encode_text(tokens)
    ends = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(ends.max()) + 1
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, pool, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


def _normalised(features: torch.Tensor) -> np.ndarray:
    # In fp32: fp16 norms of 512-d vectors lose the digits the similarity threshold looks at.
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def resolve_device(settings: EmbedSettings) -> tuple[torch.device, str]:
    """The device and open_clip precision ('fp32', 'fp16', 'bf16') the settings ask for."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("device=cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    precision = settings.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    return device, precision


def _check_model_name(model: str) -> None:
    if ":" in model:  # hf-hub: / local-dir: carry their own config
        return
    if model.replace("/", "-") not in open_clip.list_models():
        raise ModelUnavailable(
            f"unknown open_clip model {model!r} (open_clip.list_models() lists the names, "
            "or give hf-hub:ORG/REPO, or --checkpoint DIR with open_clip_config.json)"
        )


def _fetch_pretrained(settings: EmbedSettings) -> dict:
    """Make sure the tag's weights are in the cache (download them when needed); returns the tag's config."""
    model, tag = settings.model, settings.pretrained
    cfg = open_clip.get_pretrained_cfg(model.replace("/", "-"), tag)
    if not cfg:
        raise ModelUnavailable(
            f"unknown pretrained tag {tag!r} for {model}; known tags: "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}"
        )
    cache = settings.cache_dir or "open_clip's default cache (~/.cache/huggingface/hub or ~/.cache/clip)"
    try:
        open_clip.download_pretrained(cfg, cache_dir=settings.cache_dir)
    except Exception as exc:  # any failure to fetch means the same to the user
        raise ModelUnavailable(
            f"weights of {model} pretrained={tag!r} are not in {cache} and could not be fetched ({exc}). "
            'Fetch them ahead of time on a machine with internet: python -c "import open_clip; '
            f"open_clip.create_model_and_transforms('{model}', pretrained='{tag}', cache_dir='DIR')\" and copy DIR "
            "to this machine (settings cache_dir=DIR), or pass --checkpoint PATH (a weights file, or a directory "
            "with open_clip_config.json). Without internet, set HF_HUB_OFFLINE=1 to fail at once instead of "
            "after the Hub's retries."
        ) from exc
    return cfg


def _source(settings: EmbedSettings) -> tuple[str, str | None, str, dict]:
    """(open_clip model name, pretrained argument, our name for the model, extra create_model kwargs)."""
    if settings.checkpoint:
        path = os.path.expanduser(settings.checkpoint)
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
                raise ModelUnavailable(f"checkpoint directory {path} has no open_clip_config.json")
            return f"local-dir:{path}", None, path, {}
        if not os.path.isfile(path):
            raise ModelUnavailable(f"checkpoint {path} does not exist")
        _check_model_name(settings.model)
        return settings.model, path, path, {}
    _check_model_name(settings.model)
    if ":" in settings.model:  # hf-hub: / local-dir: name their weights themselves
        return settings.model, None, settings.model, {}
    if settings.pretrained is None:
        return settings.model, None, f"{settings.model}/random", {}
    if os.path.isfile(settings.pretrained):  # open_clip also takes a weights path as `pretrained`
        return settings.model, settings.pretrained, settings.pretrained, {}
    cfg = _fetch_pretrained(settings)
    # OpenAI's CLIP uses QuickGELU, the built-in configs GELU: match the weights, as open_clip's
    # '-quickgelu' names do; otherwise ViT-B-32/openai embeds slightly differently from OpenAI's model.
    return (
        settings.model,
        settings.pretrained,
        f"{settings.model}/{settings.pretrained}",
        {"force_quick_gelu": bool(cfg.get("quick_gelu"))},
    )


def load_model(settings: EmbedSettings) -> ClipModel:
    """Build the model the settings name, on their device and precision, ready for inference."""
    device, precision = resolve_device(settings)
    model_name, pretrained, name, kwargs = _source(settings)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            cache_dir=settings.cache_dir,
            **kwargs,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=settings.cache_dir)
    except Exception as exc:  # name the model whatever open_clip raised
        raise ModelUnavailable(f"cannot load CLIP model {name}: {exc}") from exc
    model.eval().requires_grad_(False)
    return ClipModel(model, preprocess, tokenizer, device, _PRECISIONS[precision], name)


def weights_fingerprint(settings: EmbedSettings) -> list | None:
    """(name, size, mtime) of the local weights the settings name, for cache keys: retrained weights at the same
    path are other weights. None for weights named by a pretrained tag (the tag names them)."""
    paths = [
        settings.checkpoint,
        settings.pretrained if settings.pretrained and os.path.isfile(settings.pretrained) else None,
    ]
    found = []
    for path in filter(None, paths):
        path = os.path.expanduser(path)
        files = sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
        for f in files:
            with contextlib.suppress(OSError):  # a missing checkpoint fails in load_model, with its reason
                st = os.stat(f)
                found.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return found or None


_MODELS: dict[tuple, ClipModel] = {}
_LOCK = threading.Lock()  # a Dask worker may start two embed tasks at once: load the model once


def worker_model(settings: EmbedSettings) -> ClipModel:
    """The model for these settings, loaded on first use in this process and kept."""
    key = (
        settings.model,
        settings.pretrained,
        settings.checkpoint,
        settings.cache_dir,
        settings.device,
        settings.precision,
    )
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(settings)
        return _MODELS[key]
