"""One pydantic settings model per stage. Defaults follow the LAION-400M recipe.

The models are flow parameters (the Prefect UI renders them as forms) and load
from a YAML or TOML file for the CLI (`load_config`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

COMMON_CRAWL_HTTPS = "https://data.commoncrawl.org"
COMMON_CRAWL_S3 = "s3://commoncrawl"


class ExtractSettings(BaseModel):
    """How `<img>` links of one WAT/WARC file become image-text pairs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_alt_length: int = Field(5, ge=0, description="Drop pairs whose normalised alt text is shorter (LAION-400M: 5).")
    max_alt_length: int = Field(4096, ge=1, description="Drop pairs whose normalised alt text is longer.")
    detect_language: bool = Field(True, description="Fill the language column (py3langid, model shipped in the package).")
    batch_rows: int = Field(65536, ge=1024, description="Rows per parquet row group; bounds memory per file.")


class IngestSettings(BaseModel):
    """Which crawl files to read and how the ingestion stage runs."""

    model_config = ConfigDict(extra="forbid")

    crawl: str | None = Field(None, description="Crawl id, e.g. CC-MAIN-2024-10. Leave empty to use `inputs`.")
    source: str = Field(COMMON_CRAWL_HTTPS, description="Base URI holding crawl-data/ (https, s3 or any fsspec mirror).")
    kind: Literal["wat", "warc"] = Field("wat", description="Read the crawl's WAT files (fast) or its WARC files.")
    segments: int | None = Field(None, ge=1, description="Take this many segments (all when empty).")
    segment_list: list[str] = Field(default_factory=list, description="Explicit segment names to take.")
    sample_seed: int | None = Field(None, description="Sample `segments` at random with this seed instead of the first N.")
    files_per_segment: int | None = Field(None, ge=1, description="Cap on files taken from each segment.")
    inputs: list[str] = Field(default_factory=list, description="Explicit WAT/WARC URIs instead of a crawl.")
    dedup_rows_per_bucket: int = Field(20_000_000, ge=1, description="Pairs per hash partition of the cross-file dedup pass (bounds its memory).")
    retries: int = Field(3, ge=0, description="Retries of a file's task on transient errors (connection, timeout, 5xx, S3 SlowDown).")
    retry_delay: float = Field(10.0, ge=0, description="Seconds before the first retry; doubles each time, with jitter.")
    extract: ExtractSettings = Field(default_factory=ExtractSettings)


def load_config(path: str | Path) -> dict:
    """Read a YAML or TOML settings file into a plain dict (sections per stage)."""
    text = Path(path).read_text()
    if str(path).endswith(".toml"):
        return tomllib.loads(text)
    return yaml.safe_load(text) or {}
