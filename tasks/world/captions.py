"""Alt texts as pages write them, each with its case label and the caption a correct extractor recovers.

The expected text is computed from the clean caption the generator chose, never by
parsing what it wrote: `" ".join(html.unescape(alt).split())`, which for every case
here equals the clean caption with its whitespace collapsed.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass

from clipcrawl.tasks.world.scenes import Scene, describe, random_scene

# case -> weight; every case also appears once on each file's showcase page.
ALT_CASES = {
    "caption": 50,
    "caption_mismatch": 18,
    "caption_foreign": 6,
    "missing": 6,
    "empty": 4,
    "short": 3,
    "whitespace": 5,
    "entities": 5,
    "junk": 5,
    "long": 2,
    "too_long": 0.3,
}
JUNK = (
    "image",
    "IMG_1234.jpg",
    "click here",
    "photo",
    "thumbnail",
    "DSC00123.JPG",
    "banner image",
    "spacer",
    "untitled",
    "Bild",
    "read more",
    "logo image",
)
SHORT = ("a", "img", "pic", "logo", "x", "foto", "画像")
FILLER = (
    "the",
    "shop",
    "offers",
    "quality",
    "garden",
    "weather",
    "report",
    "new",
    "collection",
    "season",
    "museum",
    "city",
    "archive",
    "festival",
    "summer",
    "classic",
    "design",
    "colour",
    "gallery",
)

# Small vocabularies so captions in other languages really describe the scene.
FOREIGN = {
    "de": (
        {
            "red": "rote",
            "green": "grüne",
            "blue": "blaue",
            "yellow": "gelbe",
            "purple": "violette",
            "orange": "orange",
            "black": "schwarze",
            "white": "weiße",
            "pink": "rosa",
            "brown": "braune",
            "grey": "graue",
            "cyan": "türkise",
        },
        {
            "circle": "Kreise",
            "square": "Quadrate",
            "triangle": "Dreiecke",
            "star": "Sterne",
            "diamond": "Rauten",
            "cross": "Kreuze",
            "ring": "Ringe",
            "hexagon": "Sechsecke",
            "skull": "Schädel",
        },
        "{n} {colour} {shape} auf {bg} Hintergrund",
    ),
    "fr": (
        {
            "red": "rouges",
            "green": "verts",
            "blue": "bleus",
            "yellow": "jaunes",
            "purple": "violets",
            "orange": "orange",
            "black": "noirs",
            "white": "blancs",
            "pink": "roses",
            "brown": "bruns",
            "grey": "gris",
            "cyan": "cyan",
        },
        {
            "circle": "cercles",
            "square": "carrés",
            "triangle": "triangles",
            "star": "étoiles",
            "diamond": "losanges",
            "cross": "croix",
            "ring": "anneaux",
            "hexagon": "hexagones",
            "skull": "crânes",
        },
        "{n} {shape} {colour} sur fond {bg}",
    ),
    "ru": (
        {
            "red": "красных",
            "green": "зелёных",
            "blue": "синих",
            "yellow": "жёлтых",
            "purple": "фиолетовых",
            "orange": "оранжевых",
            "black": "чёрных",
            "white": "белых",
            "pink": "розовых",
            "brown": "коричневых",
            "grey": "серых",
            "cyan": "голубых",
        },
        {
            "circle": "круга",
            "square": "квадрата",
            "triangle": "треугольника",
            "star": "звезды",
            "diamond": "ромба",
            "cross": "креста",
            "ring": "кольца",
            "hexagon": "шестиугольника",
            "skull": "черепа",
        },
        "{n} {colour} {shape} на фоне цвета {bg}",
    ),
    "ja": (
        {
            "red": "赤い",
            "green": "緑の",
            "blue": "青い",
            "yellow": "黄色い",
            "purple": "紫の",
            "orange": "オレンジ色の",
            "black": "黒い",
            "white": "白い",
            "pink": "ピンクの",
            "brown": "茶色の",
            "grey": "灰色の",
            "cyan": "水色の",
        },
        {
            "circle": "円",
            "square": "四角形",
            "triangle": "三角形",
            "star": "星",
            "diamond": "ひし形",
            "cross": "十字",
            "ring": "輪",
            "hexagon": "六角形",
            "skull": "ドクロ",
        },
        "{bg}背景の{colour}{shape}が{n}つ",
    ),
    "zh": (
        {
            "red": "红色",
            "green": "绿色",
            "blue": "蓝色",
            "yellow": "黄色",
            "purple": "紫色",
            "orange": "橙色",
            "black": "黑色",
            "white": "白色",
            "pink": "粉色",
            "brown": "棕色",
            "grey": "灰色",
            "cyan": "青色",
        },
        {
            "circle": "圆形",
            "square": "正方形",
            "triangle": "三角形",
            "star": "星星",
            "diamond": "菱形",
            "cross": "十字",
            "ring": "圆环",
            "hexagon": "六边形",
            "skull": "骷髅",
        },
        "{bg}背景上的{n}个{colour}{shape}",
    ),
}


@dataclass(frozen=True)
class Alt:
    case: str
    written: str | None  # attribute value as it appears in the page source (None: attribute absent)
    text: str | None  # what a correct extractor recovers (None when absent)
    matches: bool  # the text truly describes the image


def foreign_caption(scene: Scene, language: str, rng: random.Random) -> str:
    colours, shapes, template = FOREIGN[language]
    bg_word = colours[scene.background]
    if language in ("de", "fr", "ru"):
        bg_word = {"de": bg_word.rstrip("e") + "em", "fr": bg_word, "ru": bg_word}[language]
    return template.format(n=scene.count, colour=colours[scene.colour], shape=shapes[scene.shape], bg=bg_word)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _filler(rng: random.Random, n_chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < n_chars:
        words.append(rng.choice(FILLER))
        length += len(words[-1]) + 1
    return " ".join(words)


def make_alt(case: str, scene: Scene, language: str, rng: random.Random) -> Alt:
    """The alt of one `<img>` showing `scene` on a page in `language`."""
    caption = describe(scene, rng)
    if case == "caption":
        return Alt(case, caption, caption, True)
    if case == "caption_mismatch":
        other = random_scene(rng)
        while (other.shape, other.colour) == (scene.shape, scene.colour):
            other = random_scene(rng)
        text = describe(other, rng)
        return Alt(case, text, text, False)
    if case == "caption_foreign":
        lang = language if language in FOREIGN else rng.choice(sorted(FOREIGN))
        text = foreign_caption(scene, lang, rng)
        return Alt(case, text, text, True)
    if case == "missing":
        return Alt(case, None, None, False)
    if case == "empty":
        return Alt(case, "", "", False)
    if case == "short":
        text = rng.choice(SHORT)
        return Alt(case, text, text, False)
    if case == "whitespace":
        words = caption.split(" ")
        seps = ["  ", "\n", "\t", "\xa0", " \n   ", "&nbsp;", " \r\n "]
        written = "".join(w + (rng.choice(seps) if i < len(words) - 1 else "") for i, w in enumerate(words))
        written = rng.choice(["  ", "\n", " ", "\t"]) + written + rng.choice(["  ", "\n  ", " ", ""])
        return Alt(case, written, caption, True)
    if case == "entities":
        variant = rng.randrange(4)
        if variant == 0:
            written, text = f"&quot;{caption}&quot;", f'"{caption}"'
        elif variant == 1:
            written, text = f"{caption} &amp; friends", f"{caption} & friends"
        elif variant == 2:
            written, text = f"{caption} &#8211; caf&#233; gallery", f"{caption} – café gallery"
        else:
            written, text = f"{caption} &lt;3 &#x263A;", f"{caption} <3 ☺"
        return Alt(case, written, text, True)
    if case == "junk":
        text = rng.choice(JUNK)
        return Alt(case, text, text, False)
    if case == "long":
        text = f"{caption}. " + _filler(rng, rng.randint(1100, 3800))
        return Alt(case, text, _clean(text), True)
    if case == "too_long":
        text = f"{caption}. " + _filler(rng, rng.randint(4200, 6000))
        return Alt(case, text, _clean(text), True)
    raise ValueError(f"unknown alt case {case!r}")


def pick_alt_case(rng: random.Random) -> str:
    return rng.choices(list(ALT_CASES), weights=list(ALT_CASES.values()))[0]


def expected_text(written: str | None) -> str | None:
    """The normalisation rule (used only to cross-check the generator in tests)."""
    return None if written is None else " ".join(html.unescape(written).split())
