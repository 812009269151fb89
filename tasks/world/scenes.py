"""Scenes: the content of the world's images, simple enough for a tiny CLIP model to learn.

A scene is `count` shapes of one colour and size on a plain background. Rendering is
deterministic (no antialiasing randomness, positions from the scene's own layout seed),
so the image server can re-render any image from its id alone.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from clipcrawl.tasks.world.behaviours import BEHAVIOURS, FIXED_SIZES, behaviour_of

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon")
# The stand-in concept a later NSFW-tag stage detects; rare on purpose.
FLAGGED_SHAPES = ("skull",)
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "pink": (250, 140, 190),
    "brown": (130, 80, 30),
    "grey": (128, 128, 128),
    "cyan": (40, 210, 220),
}
SIZES = ("small", "large")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {"cross": "crosses"}
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    count: int
    background: str
    size: str
    layout_seed: int = 0

    @property
    def flagged(self) -> bool:
        return self.shape in FLAGGED_SHAPES

    def to_dict(self) -> dict:
        return asdict(self)


def random_scene(rng: random.Random, flagged_rate: float = 0.02) -> Scene:
    shape = FLAGGED_SHAPES[0] if rng.random() < flagged_rate else rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(shape, colour, rng.randint(1, 4), background, rng.choice(SIZES), rng.getrandbits(32))


def _polygon(cx: float, cy: float, r: float, points: int, start: float = -math.pi / 2, inner: float = 1.0):
    step = math.pi / points if inner != 1.0 else 2 * math.pi / points
    n = points * 2 if inner != 1.0 else points
    return [
        (
            cx + (r if i % 2 == 0 else r * inner) * math.cos(start + i * step),
            cy + (r if i % 2 == 0 else r * inner) * math.sin(start + i * step),
        )
        for i in range(n)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, bg) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, inner=0.45), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)], fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        draw.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=bg)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, start=0), fill=fill)
    elif shape == "skull":
        draw.ellipse((cx - r * 0.8, cy - r, cx + r * 0.8, cy + r * 0.5), fill=fill)
        draw.rectangle((cx - r * 0.45, cy + r * 0.2, cx + r * 0.45, cy + r), fill=fill)
        for ex in (-0.35, 0.35):
            draw.ellipse((cx + r * (ex - 0.2), cy - r * 0.45, cx + r * (ex + 0.2), cy - r * 0.05), fill=bg)
        for tx in (-0.25, 0, 0.25):
            draw.line((cx + r * tx, cy + r * 0.55, cx + r * tx, cy + r), fill=bg, width=max(1, int(r * 0.08)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """Draw `scene` at `size`; shapes sit in a grid cell each, jittered by the layout seed, plus grain."""
    w, h = size
    bg = COLOURS[scene.background]
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    rng = random.Random(scene.layout_seed)
    cols = 1 if scene.count == 1 else 2
    rows = 1 if scene.count <= 2 else 2
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    rng.shuffle(cells)
    cw, ch = w / cols, h / rows
    scale = 0.42 if scene.size == "large" else 0.2
    for c, r in cells[: scene.count]:
        radius = min(cw, ch) * scale
        slack_x, slack_y = cw / 2 - radius, ch / 2 - radius
        cx = cw * (c + 0.5) + rng.uniform(-slack_x, slack_x) * 0.6
        cy = ch * (r + 0.5) + rng.uniform(-slack_y, slack_y) * 0.6
        _draw_shape(draw, scene.shape, cx, cy, radius, COLOURS[scene.colour], bg)
    return _grain(img, scene.layout_seed)


GRAIN = 8  # +-levels of luma noise: like a photo's grain, so every served image is over the 5 KB floor


def _grain(img: Image.Image, seed: int) -> Image.Image:
    """Add deterministic sensor-like noise (random.Random bytes: the same on every platform)."""
    w, h = img.size
    noise = np.frombuffer(random.Random(f"grain:{seed}").randbytes(w * h), dtype=np.uint8).reshape(h, w, 1)
    noise = (noise % (2 * GRAIN + 1)).astype(np.int16) - GRAIN
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8), "RGB")


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """Encode for serving; `fmt` is a file extension (jpg, png, webp, gif)."""
    buf = io.BytesIO()
    kind = FORMATS[fmt]
    img.save(buf, kind, **({"quality": 90} if kind in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def _plural(scene: Scene) -> str:
    return scene.shape if scene.count == 1 else PLURALS.get(scene.shape, scene.shape + "s")


def describe(scene: Scene, rng: random.Random) -> str:
    """A varied English caption that truly describes `scene` (always >= 5 chars)."""
    n = scene.count
    number = rng.choice([NUMBER_WORDS[n], str(n)]) if n > 1 else rng.choice(["a", "one", "a single"])
    size = f"{scene.size} " if rng.random() < 0.6 else ""
    thing = f"{number} {size}{scene.colour} {_plural(scene)}"
    bg = f"{scene.background} background"
    template = rng.choice(
        [
            "{thing} on a {bg}",
            "a photo of {thing} on a {bg}",
            "{thing} against a {bg}",
            "an image of {thing}, {bg}",
            "{Thing} on {bg}",
            "picture showing {thing} over a {bg}",
            "{thing}",
            "a drawing of {thing} on a plain {bg}",
        ]
    )
    return template.format(thing=thing, Thing=thing[0].upper() + thing[1:], bg=bg)


def scene_for_image(world_seed: int, image_id: int) -> Scene:
    """The scene of image `image_id`, derived from the world seed alone (the server needs nothing else)."""
    return random_scene(random.Random(f"scene:{world_seed}:{image_id}"))


def sample_training_pairs(n: int, seed: int = 0, size: tuple[int, int] = (64, 64)) -> Iterator[tuple[Image.Image, str]]:
    """`n` (image, true caption) pairs of fresh random scenes, for training a tiny CLIP model."""
    rng = random.Random(f"train:{seed}")
    for _ in range(n):
        scene = random_scene(rng)
        yield render_scene(scene, size), describe(scene, rng)


IMAGE_SIZES = ((256, 256), (320, 240), (240, 320), (400, 300), (200, 200), (512, 384), (300, 450))


@dataclass(frozen=True)
class ImageSpec:
    """Everything about one image of the world, derived from (world seed, image id) alone."""

    image_id: int
    scene: Scene
    format: str
    width: int
    height: int
    behaviour: str = "ok"


def image_spec(world_seed: int, image_id: int) -> ImageSpec:
    rng = random.Random(f"image:{world_seed}:{image_id}")
    fmt = rng.choices(("jpg", "png", "webp", "gif"), weights=(60, 20, 12, 8))[0]
    width, height = rng.choice(IMAGE_SIZES)
    behaviour = behaviour_of(world_seed, image_id)
    fmt = BEHAVIOURS[behaviour].format or fmt  # the URL extension a format-specific behaviour needs
    width, height = FIXED_SIZES.get(behaviour, (width, height))
    return ImageSpec(image_id, scene_for_image(world_seed, image_id), fmt, width, height, behaviour)


def render_image(world_seed: int, image_id: int, fmt: str | None = None) -> bytes:
    """The encoded bytes the image server returns for an image (in `fmt`, default its own format)."""
    spec = image_spec(world_seed, image_id)
    return encode_image(render_scene(spec.scene, (spec.width, spec.height)), fmt or spec.format)
