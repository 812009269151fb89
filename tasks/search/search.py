"""Query a built index: text or image -> the nearest samples, and their thumbnails from the shards' tars.

    searcher = Searcher("OUT/index")
    searcher.search(text="a red circle", k=10)                 # CLIP text embedding vs the image index
    searcher.search(image=open("q.jpg", "rb").read(), modality="text", deduplicate=True)
    data, mime = searcher.thumbnail(results[0]["id"])

Like clip-retrieval's back end: the query is embedded with the model that embedded the dataset
(index_infos.json "clip"), searched with the tuned parameters of the index (index_infos.json
"image"/"text" "params"), and the ids map to samples through index/ids.parquet. Safe to call
from several threads at once.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.uri import exists, read_json
from clipcrawl.tasks.download.shard_reader import image_index, read_image
from clipcrawl.tasks.download.shards import IMAGE_TYPES
from clipcrawl.tasks.index.ids import IdTable
from clipcrawl.tasks.index.train import read_index

if TYPE_CHECKING:
    from clipcrawl.tasks.embed.clip_model import ClipModel

MODALITIES = ("image", "text")
SAMPLE_FIELDS = ("id", "key", "url", "caption", "shard", "duplicate_group")  # a result, with its similarity
DEDUP_FETCH = 4  # deduplicate: search this many times k, DEDUP_FETCH times more while groups repeat,
DEDUP_DEPTH = 16  # up to this many times k candidates: when those hold fewer than k groups, fewer results come
TAR_MAPS = 32  # member maps of this many tars are kept (a map is ~100 bytes a sample)
ORIENTATION = 0x0112  # the EXIF tag


class NotFound(LookupError):
    """No such id, or no image for it in its shard's tar."""


def query_pixels(model: ClipModel, data: bytes) -> np.ndarray:
    """Query image bytes -> the model's input pixels, decoded as the embed stage decodes its images (web formats
    only; a large JPEG at reduced scale), so an indexed image finds itself; ValueError naming the reason."""
    from PIL import Image, ImageOps

    from clipcrawl.tasks.download.images import WEB_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=WEB_FORMATS) as image:
            if image.getexif().get(ORIENTATION, 1) != 1:  # a camera's photo: upright, as the download stage stores
                image = ImageOps.exif_transpose(image)
            return model.prepare(image)
    except Exception as exc:  # PIL raises several kinds (UnidentifiedImageError, OSError, DecompressionBomb...)
        raise ValueError(f"cannot decode the query image: {exc}") from exc


def given_embedding(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A query embedding given as numbers -> (1, d) float32, L2-normalised; ValueError naming what is wrong."""
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("the embedding must be a list of numbers") from None
    if vector.ndim != 1 or not len(vector):
        raise ValueError(f"the embedding must be a flat, non-empty list of numbers (got shape {vector.shape})")
    if not np.isfinite(vector).all():
        raise ValueError("the embedding holds a non-finite number (NaN or infinity)")
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        raise ValueError("the embedding is all zeros")
    return np.ascontiguousarray(vector[None] / norm, dtype=np.float32)


class Searcher:
    """kNN search over OUT/index/: image.index, text.index, ids.parquet, index_infos.json."""

    def __init__(self, index_dir: str, model: ClipModel | None = None):
        self.index_dir = index_dir
        infos_uri = layout.index_infos(index_dir)
        if not exists(infos_uri):
            raise FileNotFoundError(
                f"{index_dir} is not an index directory: {infos_uri} does not exist (build the index first)"
            )
        self.infos = read_json(infos_uri)
        self.indices: dict[str, faiss.Index] = {}
        for modality in MODALITIES:
            uri = layout.index_file(index_dir, modality)
            if not exists(uri):
                raise FileNotFoundError(f"{uri} does not exist (index directory {index_dir} is incomplete)")
            index = read_index(uri)
            params = (self.infos.get(modality) or {}).get("params") or ""
            if params:
                faiss.ParameterSpace().set_index_parameters(index, params)
            self.indices[modality] = index
        ids_uri = layout.ids_file(index_dir)
        if not exists(ids_uri):
            raise FileNotFoundError(f"{ids_uri} does not exist (index directory {index_dir} is incomplete)")
        self.ids = IdTable(ids_uri)
        for modality, index in self.indices.items():
            if index.ntotal != self.ids.count:
                raise ValueError(
                    f"{index_dir}: {modality}.index holds {index.ntotal} vectors but ids.parquet {self.ids.count} rows"
                )
        # ids.parquet names a sample's shard by its name in the index, unique across embeddings folders (the stem is not)
        self.tars = {s["name"]: s["tar"] for s in self.infos.get("shards", [])}
        self._model = model
        self._lock = threading.Lock()  # the model load, IdTable's reader and cache, the tar maps
        self._tar_maps: OrderedDict[str, dict[str, tuple[int, int, str]]] = OrderedDict()
        self._groups: np.ndarray | None = None  # duplicate_group by id, for deduplicated searches

    @property
    def model(self) -> ClipModel:
        """The CLIP model of the index (index_infos.json "clip"), loaded on first use."""
        with self._lock:
            if self._model is None:
                from clipcrawl.tasks.core.config import EmbedSettings
                from clipcrawl.tasks.embed.clip_model import load_model

                self._model = load_model(EmbedSettings(**self.infos["clip"]))
            return self._model

    @property
    def count(self) -> int:
        return self.ids.count

    def info(self) -> dict:
        """Counts, index keys, search parameters and measured recall/latency (for /api/info)."""
        out = {
            "count": self.count,
            "dim": self.infos.get("dim"),
            "clip": self.infos.get("clip"),
            "shards": len(self.tars),
            "near_duplicates": self.infos.get("near_duplicates"),
        }
        for modality, index in self.indices.items():
            built = self.infos.get(modality) or {}
            out[modality] = {
                key: built.get(key)
                for key in ("index_key", "params", "k", "recall_at_k", "p50_ms", "p99_ms", "memory_bytes")
            }
            out[modality]["ntotal"] = index.ntotal
        return out

    def embed_query(self, text: str | None = None, image: bytes | None = None) -> np.ndarray:
        """(1, d) float32 normalised CLIP embedding of the text or the image."""
        if (text is None) == (image is None):
            raise ValueError("give exactly one of a text or an image query" + ("" if text is None else " (got both)"))
        if text is not None:
            if not text.strip():
                raise ValueError("the text query is empty")
            return np.ascontiguousarray(self.model.encode_texts([text]), dtype=np.float32)
        if not image:
            raise ValueError("cannot decode the query image: it is empty (0 bytes)")
        import torch

        pixels = query_pixels(self.model, image)
        return np.ascontiguousarray(self.model.encode_images(torch.from_numpy(pixels[None].copy())), dtype=np.float32)

    def search(
        self,
        text: str | None = None,
        image: bytes | None = None,
        k: int = 10,
        modality: str = "image",
        deduplicate: bool = False,
        embedding: Sequence[float] | np.ndarray | None = None,
    ) -> list[dict]:
        """The k nearest samples to the query (a text, an image, or an `embedding` given as numbers: searched
        L2-normalised) in the `modality` index, best first.

        Each result: id, key, url, caption, similarity (inner product = cosine), shard, duplicate_group.
        deduplicate keeps the best result of each near-duplicate group, searching deeper until k groups
        are found, DEDUP_DEPTH * k candidates were searched or the index has no more vectors. It reads the
        candidates' duplicate_group only (the index's column, held in memory: 8 bytes a sample, read at the
        first deduplicated search); full rows are built for the results kept.
        """
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}: search the 'image' or the 'text' index")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if embedding is not None and (text is not None or image is not None):
            raise ValueError("give one of a text, an image or an embedding query (got several)")
        query = self.embed_query(text, image) if embedding is None else given_embedding(embedding)
        index = self.indices[modality]
        if query.shape[1] != index.d:
            model = f": the model {self.infos.get('clip')} is not the one the index was built with"
            raise ValueError(
                f"the query embedding has {query.shape[1]} dimensions, the {modality} index {index.d}"
                + ("" if embedding is not None else model)
            )
        total = index.ntotal
        if not deduplicate:
            return self._results(*self._knn(index, query, min(k, total)))
        groups = self._duplicate_groups()
        limit = min(k * DEDUP_DEPTH, total)
        fetch = min(k * DEDUP_FETCH, limit)
        while True:
            ids, similarities = self._knn(index, query, fetch)
            _, first = np.unique(groups[ids], return_index=True)  # each group's best candidate
            keep = np.sort(first)[:k]
            if len(keep) >= k or fetch >= limit or len(ids) < fetch:  # enough, or nothing more to search
                return self._results(ids[keep], similarities[keep])
            fetch = min(fetch * DEDUP_FETCH, limit)

    def _knn(self, index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and similarities of the k nearest vectors, best first (fewer where the index finds fewer)."""
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        distances, ids = index.search(query, k)
        found = ids[0] >= 0  # -1: fewer than k found
        return ids[0][found].astype(np.int64), distances[0][found]

    def _results(self, ids: np.ndarray, similarities: np.ndarray) -> list[dict]:
        samples = self.samples(ids.tolist())
        return [dict(sample, similarity=float(s)) for sample, s in zip(samples, similarities)]

    def _duplicate_groups(self) -> np.ndarray:
        """duplicate_group of every id (read once: one int64 column)."""
        with self._lock:
            if self._groups is None:
                self._groups = self.ids.column("duplicate_group").astype(np.int64)
            return self._groups

    def samples(self, ids: Iterable[int]) -> list[dict]:
        """The samples of index ids, in the order given: id, key, url, caption, shard, duplicate_group (IndexError
        naming an id out of range)."""
        with self._lock:
            rows = self.ids.lookup(ids)
        return [{name: row[name] for name in SAMPLE_FIELDS} for row in rows]

    def thumbnail(self, id: int) -> tuple[bytes, str]:
        """The image of sample `id` as stored in its shard (a tar, a folder of files or a parquet bytes column,
        whatever its output format), and its MIME type."""
        try:
            with self._lock:
                row = self.ids.lookup([id])[0]
        except IndexError as exc:
            raise NotFound(str(exc)) from exc
        shard, key = row["shard"], row["key"]
        if shard not in self.tars:
            raise NotFound(f"id {id} (key {key}): shard {shard!r} is not in index_infos.json shards")
        tar_uri = self.tars[shard]
        if not tar_uri:
            raise NotFound(f"id {id} (key {key}): index_infos.json records no tar for shard {shard!r}")
        member = self._members(tar_uri).get(key)
        if member is None:
            raise NotFound(f"id {id}: no image member {key}.jpg|jpeg|webp|png in {tar_uri}")
        return read_image(tar_uri, key, member), IMAGE_TYPES[member.ext]

    def _members(self, tar_uri: str) -> dict:
        """The shard's image map (shard_reader.image_index: a tar's members, a folder's files, a parquet's rows),
        built once, kept for TAR_MAPS shards."""
        with self._lock:
            if tar_uri in self._tar_maps:
                self._tar_maps.move_to_end(tar_uri)
                return self._tar_maps[tar_uri]
        members = image_index(tar_uri)
        with self._lock:
            self._tar_maps[tar_uri] = members
            while len(self._tar_maps) > TAR_MAPS:
                self._tar_maps.popitem(last=False)
        return members


def format_results(results: list[dict]) -> str:
    """One line per result for a terminal: similarity, key, caption, url (tab-separated)."""
    return "\n".join(
        f"{r['similarity']:.4f}\t{r['key']}\t{' '.join(str(r['caption']).split())}\t{r['url']}" for r in results
    )
