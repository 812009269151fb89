"""Language id: our predictor (tasks/ingest/_lid.c) against fastText's own build (fasttext-predict, the test
extra's reference), label for label and probability for probability, on the synthetic world's captions, the
real pages' captions, and odd and random texts; and what a file that is no model gives."""

from __future__ import annotations

import random
import re
import struct

import fasttext
import pytest

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.ingest import _lid, language
from clipcrawl.tasks.ingest.extract import FileStats, iter_pairs
from tests.test_realweb import CAPTURES, needs_captures

ODD = [
    "",
    " ",
    "\n",
    "\n\n text after blank lines",
    "</s>",
    "</s> bonjour le monde",
    "hello world </s> das ist der Rest",
    "__label__de",
    "__label__de hallo wie geht es dir",
    "__label__xx ein unbekanntes Label",
    "a\x00b nul inside",
    "\x0b\x0c\r\t only whitespace",
    "Привет мир, это проверка",
    "日本語のテキストです",
    "ñandú über café",
    "😀😀 emoji first",
    "e\u0301 combining accent",
    "\u00a0nbsp\u00a0around\u00a0",
    "x" * 5000,
    "word " * 300,
    "\xff\xfe latin-1 looking",
]


def random_texts(n: int, seed: int) -> list[str]:
    """Texts of ASCII, Latin, CJK, emoji, whitespace and NUL characters, any mix."""
    rng = random.Random(seed)
    pools = [(32, 126), (0xA0, 0x2FFF), (0x3000, 0x9FFF), (0x1F300, 0x1F6FF), (0, 0), (9, 13), (32, 32)]
    return ["".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(0, 80))) for _ in range(n)]


def captions(uris: list[str]) -> list[str]:
    settings = ExtractSettings(detect_language=False)
    texts = []
    for uri in uris:
        for batch in iter_pairs(uri, settings, FileStats(uri=uri)):
            texts += batch.column("caption").to_pylist()
    return list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def models():
    path = language.model_path()
    with open(path, "rb") as f:
        ours = _lid.Model(f.read())
    return ours, fasttext.load_model(path).f


def fasttext_labels(reference, texts: list[str], max_chars: int = language._MAX_CHARS) -> list[str | None]:
    """fastText's label of each text, read as fastText reads a line: one line a text, so newlines become spaces."""
    lines = [t[:max_chars].replace("\n", " ") + "\n" for t in texts]
    return [
        found[0].removeprefix("__label__") if found else None
        for found in reference.multilinePredict(lines, 1, 0.0, "strict")
    ]


def assert_same_as_fasttext(models, texts: list[str], probabilities_every: int = 1) -> None:
    ours, reference = models
    assert ours.predict(texts, language._MAX_CHARS) == fasttext_labels(reference, texts)
    for text in texts[::probabilities_every]:
        found = reference.predict(text[: language._MAX_CHARS].replace("\n", " ") + "\n", 1, 0.0, "strict")
        expected = (found[0][1].removeprefix("__label__"), found[0][0]) if found else None
        got = ours.predict_with_probability([text], language._MAX_CHARS)[0]
        assert got == expected, text  # the same float: the same arithmetic


def test_the_worlds_captions_get_fasttexts_labels_and_probabilities(models, small_world):
    texts = captions(small_world.wat_uris())
    assert len(texts) > 500
    assert_same_as_fasttext(models, texts, probabilities_every=7)


@needs_captures
def test_real_pages_captions_get_fasttexts_labels_and_probabilities(models):
    texts = captions(CAPTURES)
    assert len(texts) > 20
    assert_same_as_fasttext(models, texts)


def test_odd_and_random_texts_get_fasttexts_labels_and_probabilities(models):
    texts = ODD + random_texts(5000, seed=3)
    assert_same_as_fasttext(models, texts, probabilities_every=5)
    assert {label for label in models[0].predict(texts, 200)} - set(models[0].labels) <= {None}


def test_only_the_first_max_chars_characters_are_read(models):
    ours, _ = models
    german, japanese = "Das ist ein Satz auf Deutsch über das Wetter. ", "これは日本語で書かれた長い文章です。" * 30
    text = german * 4 + japanese
    assert ours.predict([text, text[:200]], 200) == ["de", "de"]
    assert ours.predict([text], 10_000) == ["ja"]
    assert ours.predict([text], 0) == ours.predict([""], 200)  # nothing read: the end of the line alone


def test_a_lone_surrogate_is_read_as_its_bytes_not_an_error(models):
    ours, _ = models
    assert ours.predict(["ein \ud800 Satz auf Deutsch über das Wetter"], 200) == ["de"]


def test_a_file_that_is_no_model_fails_with_the_reason(tmp_path, monkeypatch):
    with open(language.model_path(), "rb") as f:
        good = f.read()
    softmax = bytearray(good)
    struct.pack_into("<i", softmax, 8 + 6 * 4, 3)  # the loss: softmax
    cut = "truncated|larger than the file"
    cases = {
        b"": cut,
        b"\x00" * 64: "not a fastText model",
        good[: len(good) // 2]: cut,
        good[:-100]: cut,
        bytes(softmax): "hierarchical softmax",
    }
    for data, why in cases.items():
        with pytest.raises(ValueError, match=why):
            _lid.Model(data)
    bad = tmp_path / "lid.176.ftz"
    bad.write_bytes(good[:1000])
    monkeypatch.setattr(language, "model_path", lambda: str(bad))
    with pytest.raises(ValueError, match=re.escape(f"{bad}: not a readable fastText model: dictionary larger than")):
        language.LanguageDetector()


def test_texts_must_be_a_list_of_str(models):
    ours, _ = models
    with pytest.raises(TypeError, match="text 1 is bytes"):
        ours.predict(["fine", b"not text"], 200)
    with pytest.raises(TypeError):
        ours.predict(("a tuple",), 200)


def crafted(labels: int, counts: int = 10, input_matrix: bytes | None = None, out_value: float = 0.0) -> bytes:
    """A tiny supervised model file of fastText's format (version 12, hierarchical softmax, dim 1): one word,
    `labels` labels of count `counts` each, dense matrices unless `input_matrix` says otherwise."""
    head = struct.pack("<ii", 793712314, 12) + struct.pack("<12id", 1, 5, 5, 1, 5, 1, 1, 3, 1, 0, 0, 100, 1e-4)
    prune = 0 if input_matrix is not None else -1
    words = struct.pack("<iiiqq", 1 + labels, 1, labels, 100, prune) + b"hello\0" + struct.pack("<qb", 1, 0)
    words += b"".join(b"__label__%d\0" % i + struct.pack("<qb", counts, 1) for i in range(labels))
    dense = input_matrix or b"\0" + struct.pack("<qq", 2 + labels, 1) + struct.pack("<f", 1.0) * (2 + labels)
    return (
        head + words + dense + b"\0" + struct.pack("<qq", labels - 1, 1) + struct.pack("<f", out_value) * (labels - 1)
    )


def test_crafted_model_files_fail_with_the_reason_or_predict_without_harm():
    """A label count the Huffman tree cannot order, a quantised matrix whose row count overflows, and a tree that
    is a chain as deep as its 300,000 labels (each once read out of bounds, or crashed the process)."""
    assert _lid.Model(crafted(3)).predict(["hello world"], 200) in (["0"], ["1"], ["2"])
    with pytest.raises(ValueError, match="a label count out of range"):
        _lid.Model(crafted(3, counts=2 * 10**15))
    rows = 2**62 + 1  # x 4 sub-quantisers: 4 bytes of codes, modulo 2**64
    quantised = b"\1\0" + struct.pack("<qqi", rows, 4, 4) + bytes(4) + struct.pack("<iiii", 4, 4, 1, 1) + bytes(4096)
    with pytest.raises(ValueError, match="not a readable fastText model"):
        _lid.Model(crafted(2, input_matrix=quantised))
    chain = _lid.Model(crafted(300_000, counts=0, out_value=-100.0))
    assert chain.predict(["hello world"], 200)[0] in chain.labels
