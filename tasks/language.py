"""Language of alt texts with py3langid (its model ships inside the package).

`py3langid.classify` costs ~30 us a text, mostly numpy overhead per call. Here the
byte-DFA walk stays per text but the naive-Bayes scoring runs once per batch of
distinct texts, and results are cached per text (alt texts repeat a lot).
"""

from __future__ import annotations

import unicodedata
from collections import Counter

import numpy as np

_CACHE_MAX = 200_000


class LanguageDetector:
    """ISO 639-1 code per text; `detect_many` is the fast path."""

    def __init__(self) -> None:
        from py3langid.langid import _get_identifier

        ident = _get_identifier()
        self._nextmove = ident.tk_nextmove
        self._rowbase = ident._rowbase
        self._output = ident.tk_output
        self._table = np.asarray(ident.nb_ptc, dtype=np.float32)
        self._prior = np.asarray(ident.nb_pc, dtype=np.float32)
        self._classes = list(ident.nb_classes)
        self._alias_pairs = list(ident._alias_pairs)
        self._cache: dict[str, str] = {}

    def _features(self, text: str) -> Counter | None:
        if text.isupper():
            text = text.lower()
        data = unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")
        nm, rowbase, out = self._nextmove, self._rowbase, self._output
        state, found = 0, []
        append = found.append
        for byte in data:
            state = nm[rowbase[state] + byte]
            f = out[state]
            if f >= 0:
                append(f)
        return Counter(found) if found else None

    def _score(self, texts: list[str]) -> list[str]:
        owners, feats, counts = [], [], []
        for i, text in enumerate(texts):
            visits = self._features(text)
            if visits:
                owners.extend([i] * len(visits))
                feats.extend(visits.keys())
                counts.extend(visits.values())
        n = len(texts)
        scores = np.full((n, len(self._classes)), np.finfo(np.float32).min, dtype=np.float32)
        if feats:
            rows = self._table[np.asarray(feats, dtype=np.intp)]
            rows *= np.log1p(np.asarray(counts, dtype=np.float32))[:, None]
            owners_a = np.asarray(owners, dtype=np.intp)
            starts = np.flatnonzero(np.r_[True, owners_a[1:] != owners_a[:-1]])
            scores[owners_a[starts]] = np.add.reduceat(rows, starts, axis=0) + self._prior
        for i, j in self._alias_pairs:
            np.maximum(scores[:, i], scores[:, j], out=scores[:, i])
            scores[:, j] = np.finfo(np.float32).min
        return [self._classes[k] for k in scores.argmax(axis=1).tolist()]

    def detect_many(self, texts: list[str], chunk: int = 2048) -> list[str]:
        """Language of each text, in order (scored once per distinct uncached text)."""
        cache = self._cache
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            if len(cache) + len(part) > _CACHE_MAX:
                cache.clear()
            cache.update(zip(part, self._score(part)))
        return [cache[t] for t in texts]

    def detect(self, text: str) -> str:
        return self.detect_many([text])[0]
