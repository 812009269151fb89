import json
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipcrawl.tasks.core.config import EmbedSettings
from clipcrawl.tasks.embed.clip_model import ModelUnavailable, load_model, resolve_device, worker_model

# A CLIP small enough to build, save and run in a fraction of a second on one CPU core.
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_model(directory, seed: int = 0) -> str:
    """A random-init CLIP in open_clip's local-dir layout (open_clip_config.json + safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    return str(directory)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))


def test_local_dir_checkpoint_loads_and_embeds_normalised(tiny_dir):
    model = load_model(EmbedSettings(checkpoint=tiny_dir, pretrained=None, device="auto"))
    assert model.name == tiny_dir
    assert model.device == torch.device("cpu") and model.dtype == torch.float32  # auto on a CPU-only machine
    pixels = torch.from_numpy(
        np.stack([model.prepare(Image.new("RGB", (50, 40), c)) for c in ("red", "blue", "white")])
    )
    assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == torch.uint8
    images = model.encode_images(pixels)
    texts = model.encode_texts(["a red square", "two blue circles " * 20, ""])  # long text is cut, not an error
    for emb in (images, texts):
        assert emb.dtype == np.float32 and emb.shape == (3, 16)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_batched_preprocessing_and_cut_text_tower_match_open_clip(tiny_dir):
    """Our split of open_clip's preprocessing and the text tower cut at the last end-of-text token
    give open_clip's own embeddings."""
    model = load_model(EmbedSettings(checkpoint=tiny_dir, pretrained=None, device="cpu"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 50), (64, 32))]
    ours = model.encode_images(torch.from_numpy(np.stack([model.prepare(i) for i in images])))
    texts = ["a red square", "two large blue circles on a grey background", "x " * 40]
    with torch.inference_mode():
        theirs = model.model.encode_image(torch.stack([model.preprocess(i) for i in images]), normalize=True)
        theirs_text = model.model.encode_text(model.tokenizer(texts), normalize=True)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(texts[:2]), theirs_text[:2].numpy(), atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(texts), theirs_text.numpy(), atol=1e-5)


def test_jpeg_decodes_at_the_smallest_scale_the_input_size_allows(tiny_dir):
    """A JPEG at least twice the model's input (32 px here) is decoded by libjpeg at 1/2, 1/4 or 1/8
    scale, keeping both sides >= 32; the pixels the model gets stay those of a full decode, nearly."""
    import io

    model = load_model(EmbedSettings(checkpoint=tiny_dir, pretrained=None, device="cpu"))
    assert model.input_size == (32, 32)
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((32, 32, 1))).astype(np.uint8)  # 192 x 256, 32 px blocks
    for (w, h), decoded in (((256, 192), (64, 48)), ((100, 70), (50, 35)), ((60, 40), (60, 40))):
        buf = io.BytesIO()
        Image.fromarray(smooth).resize((w, h)).save(buf, "JPEG", quality=95)
        drafted = Image.open(io.BytesIO(buf.getvalue()))
        ours = model.prepare(drafted)
        assert drafted.size == decoded  # what libjpeg decoded
        full = Image.open(io.BytesIO(buf.getvalue()))
        full.load()
        theirs = np.asarray(model.resize(full).convert("RGB"))
        assert ours.shape == theirs.shape == (32, 32, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 6, (w, h)  # of 255, on hard block edges
    png = io.BytesIO()
    Image.fromarray(smooth).save(png, "PNG")
    image = Image.open(io.BytesIO(png.getvalue()))
    model.prepare(image)
    assert image.size == (256, 192)  # only JPEG has reduced-scale decoding


def test_weights_fingerprint_changes_with_the_local_weights(tmp_path):
    from clipcrawl.tasks.embed.clip_model import weights_fingerprint

    directory = write_tiny_model(tmp_path / "model")
    settings = EmbedSettings(checkpoint=directory, pretrained=None)
    before = weights_fingerprint(settings)
    assert sorted(name for name, _, _ in before) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert weights_fingerprint(settings) == before
    time.sleep(0.01)
    write_tiny_model(tmp_path / "model", seed=1)  # retrained in place
    assert weights_fingerprint(settings) != before
    single = EmbedSettings(model="ViT-B-32", checkpoint=f"{directory}/open_clip_model.safetensors", pretrained=None)
    assert [name for name, _, _ in weights_fingerprint(single)] == ["open_clip_model.safetensors"]
    assert weights_fingerprint(EmbedSettings()) is None  # ViT-B-32/openai: the tag names the weights


def test_weights_file_with_model_name_loads_the_same_weights(tiny_dir, monkeypatch):
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "clipcrawl-tiny", TINY_CFG)
    from_file = load_model(
        EmbedSettings(
            model="clipcrawl-tiny", checkpoint=f"{tiny_dir}/open_clip_model.safetensors", pretrained=None, device="cpu"
        )
    )
    from_dir = load_model(EmbedSettings(checkpoint=tiny_dir, pretrained=None, device="cpu"))
    texts = ["a green triangle", "a yellow star"]
    np.testing.assert_allclose(from_file.encode_texts(texts), from_dir.encode_texts(texts), atol=1e-6)


def test_random_weights_without_pretrained(monkeypatch):
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "clipcrawl-tiny", TINY_CFG)
    model = load_model(EmbedSettings(model="clipcrawl-tiny", pretrained=None, device="cpu"))
    assert model.name == "clipcrawl-tiny/random"
    assert model.encode_texts(["x"]).shape == (1, 16)


def test_worker_model_loads_once_per_process(tiny_dir, monkeypatch):
    calls = []
    monkeypatch.setattr("clipcrawl.tasks.embed.clip_model.load_model", lambda s: calls.append(s) or object())
    monkeypatch.setattr("clipcrawl.tasks.embed.clip_model._MODELS", {})
    settings = EmbedSettings(checkpoint=tiny_dir, pretrained=None)
    first = worker_model(settings)
    assert worker_model(EmbedSettings(checkpoint=tiny_dir, pretrained=None)) is first
    assert worker_model(settings.model_copy(update={"batch_size": 7})) is first  # batching does not matter
    assert worker_model(settings.model_copy(update={"precision": "bf16"})) is not first
    assert len(calls) == 2


def test_offline_without_cached_weights_fails_fast_with_instructions(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # open_clip fetches ViT-B-32/openai from the HF hub (timm/vit_base_patch32_clip_224.openai); offline mode
    # makes that fail at once instead of after the hub's retries, whatever the machine's network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "empty-cache"
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        load_model(EmbedSettings(model="ViT-B-32", pretrained="openai", cache_dir=str(cache), device="cpu"))
    assert time.monotonic() - started < 30
    message = str(err.value)
    for part in ("ViT-B-32", "'openai'", str(cache), "create_model_and_transforms", "--checkpoint"):
        assert part in message


def test_unknown_names_and_missing_checkpoints_say_what(tmp_path):
    with pytest.raises(ModelUnavailable, match="ViT-Nope-1"):
        load_model(EmbedSettings(model="ViT-Nope-1", device="cpu"))
    with pytest.raises(ModelUnavailable, match="no-such-tag.*known tags:.*openai"):
        load_model(EmbedSettings(model="ViT-B-32", pretrained="no-such-tag", device="cpu"))
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(ModelUnavailable, match=str(missing)):
        load_model(EmbedSettings(checkpoint=str(missing), device="cpu"))
    with pytest.raises(ModelUnavailable, match="open_clip_config.json"):
        load_model(EmbedSettings(checkpoint=str(tmp_path), device="cpu"))


def test_device_and_precision_defaults(monkeypatch):
    assert resolve_device(EmbedSettings(device="cpu")) == (torch.device("cpu"), "fp32")
    assert resolve_device(EmbedSettings(device="cpu", precision="bf16")) == (torch.device("cpu"), "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(EmbedSettings()) == (torch.device("cuda"), "fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(EmbedSettings()) == (torch.device("cpu"), "fp32")
    with pytest.raises(ModelUnavailable, match="cuda"):
        resolve_device(EmbedSettings(device="cuda"))


def test_openai_tag_builds_quickgelu_from_the_cache(monkeypatch):
    # OpenAI's CLIP was trained with QuickGELU; open_clip's ViT-B-32 config says GELU.
    seen = {}

    def create(name, **kwargs):
        seen.update(kwargs, name=name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, cache_dir=None: "/cache/ViT-B-32.pt")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    with pytest.raises(ModelUnavailable, match="ViT-B-32/openai: stop here"):
        load_model(EmbedSettings(device="cpu", cache_dir="/models"))
    assert seen == {
        "name": "ViT-B-32",
        "pretrained": "openai",
        "force_quick_gelu": True,
        "cache_dir": "/models",
        "precision": "fp32",
        "device": torch.device("cpu"),
    }
