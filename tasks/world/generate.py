"""generate_world: a Common Crawl-shaped tree (a local mirror of data.commoncrawl.org) plus its ground truth.

Layout under `root`:
    collinfo.json
    crawl-data/<ID>/{segment,warc,wat}.paths.gz
    crawl-data/<ID>/segments/<segment>/{warc,wat}/CC-MAIN-<ts>-<ts>-<nnnnn>.warc[.wat].gz
    manifest/pairs.parquet, manifest/images.parquet
    lists/test-{md5,sha256,urls,domains}.txt, lists/test-pdq.csv   (the test blocklists, tasks/world/lists.py)
    world.json   (written last: its presence with the same spec means the world is complete)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.status import PairStatus
from clipcrawl.tasks.core.uri import atomic_write
from clipcrawl.tasks.world.behaviours import (
    BEHAVIOURS,
    PAGE_LEVEL,
    RESERVED,
    TEST_SETTINGS,
    expected_status,
    page_host,
    served_size,
)
from clipcrawl.tasks.world.crawlfile import FileSpec, write_crawl_file
from clipcrawl.tasks.world.lists import world_blocklists, write_test_lists
from clipcrawl.tasks.world.pages import Occurrence, shared_pairs
from clipcrawl.tasks.world.scenes import describe, image_spec

GENERATOR_VERSION = 7


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    crawl_id: str = "CC-MAIN-2099-13"
    segments: int = 2
    files_per_segment: int = 2
    pages_per_file: int = 40
    links_per_page: tuple[int, int] = (10, 40)  # <a> links besides navigation
    images_per_page: tuple[int, int] = (1, 12)  # 10% of HTML pages have none
    sites: int = 8
    images: int = 400  # distinct images in the world (the first len(RESERVED) misbehave, one way each)
    shared_pairs: int = 20  # (url, alt) pairs repeated across pages, files, segments
    warc: bool = True  # False: WAT files only (fast; WARC offsets estimated)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorldSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class World:
    root: str
    crawl_id: str
    spec: WorldSpec

    @property
    def crawl_dir(self) -> str:
        return os.path.join(self.root, "crawl-data", self.crawl_id)

    def _paths(self, kind: str) -> list[str]:
        with gzip.open(os.path.join(self.crawl_dir, f"{kind}.paths.gz"), "rt") as f:
            return sorted(os.path.join(self.root, line.strip()) for line in f if line.strip())

    def wat_uris(self) -> list[str]:
        return self._paths("wat")

    def warc_uris(self) -> list[str]:
        return self._paths("warc")

    def segment_names(self) -> list[str]:
        return [os.path.basename(p) for p in self._paths("segment")]

    def manifest_pairs(self) -> pa.Table:
        return pq.read_table(os.path.join(self.root, "manifest", "pairs.parquet"))

    def manifest_images(self) -> pa.Table:
        return pq.read_table(os.path.join(self.root, "manifest", "images.parquet"))

    def expected_pairs(self) -> set[tuple[str, str]]:
        """Unique (url, text) a correct extractor keeps under default settings."""
        t = self.manifest_pairs().select(["url", "text", "status"]).to_pydict()
        return {(u, x) for u, x, s in zip(t["url"], t["text"], t["status"]) if s == PairStatus.KEPT}

    def page_licenses(self) -> dict[str, str | None]:
        """page_url -> the license URL a correct extractor gives that page's pairs (None: no license)."""
        t = self.manifest_pairs().select(["page_url", "license"]).to_pydict()
        return dict(zip(t["page_url"], t["license"]))

    def expected_downloads(self, settings: DownloadSettings | None = None) -> dict[str, str]:
        """url -> DownloadStatus value for every distinct http(s) image URL of a kept pair.

        For `ImageServer.download_settings()` when `settings` is None (the manifest's
        `expected_status`); other settings recompute it from the behaviour table.
        """
        pairs = self.manifest_pairs().select(["url", "image_id", "status"]).to_pydict()
        images = (
            self.manifest_images().select(["image_id", "behaviour", "width", "height", "expected_status"]).to_pylist()
        )
        if settings is None:
            status = {i["image_id"]: i["expected_status"] for i in images}
        else:
            status = {
                i["image_id"]: str(expected_status(i["behaviour"], (i["width"], i["height"]), settings)) for i in images
            }
        return {
            u: status[i]
            for u, i, s in zip(pairs["url"], pairs["image_id"], pairs["status"])
            if s == PairStatus.KEPT and u.split("://", 1)[0] in ("http", "https")
        }

    @cached_property
    def info(self) -> dict:
        with open(os.path.join(self.root, "world.json"), "rb") as f:
            return orjson.loads(f.read())

    @property
    def image_hosts(self) -> list[str]:
        return self.info["image_hosts"]

    @property
    def page_hosts(self) -> list[str]:
        return [page_host(site) for site in range(self.info["spec"]["sites"])] + [
            BEHAVIOURS[b].page_host for b in PAGE_LEVEL
        ]


def crawl_start(crawl_id: str) -> datetime:
    """CC-MAIN-YYYY-WW: the Monday of ISO week WW."""
    _, _, year, week = crawl_id.split("-")
    return datetime.fromisocalendar(int(year), int(week), 1).replace(tzinfo=UTC)


def file_specs(spec: WorldSpec) -> list[FileSpec]:
    start = crawl_start(spec.crawl_id)
    files = []
    for s in range(spec.segments):
        seg_start = start + timedelta(hours=3 * s, minutes=17 * s)
        segment = f"{int(seg_start.timestamp() * 1000) + 347 * s}.{s}"
        for f in range(spec.files_per_segment):
            index = s * spec.files_per_segment + f
            t0 = seg_start + timedelta(minutes=7 * f)
            name = f"CC-MAIN-{t0:%Y%m%d%H%M%S}-{t0 + timedelta(hours=3):%Y%m%d%H%M%S}-{index:05d}"
            files.append(
                FileSpec(
                    spec.seed,
                    spec.crawl_id,
                    segment,
                    index,
                    name,
                    t0,
                    spec.pages_per_file,
                    spec.sites,
                    spec.images,
                    tuple(spec.links_per_page),
                    tuple(spec.images_per_page),
                )
            )
    return files


def _rel(fs: FileSpec, kind: str) -> str:
    suffix = ".warc.gz" if kind == "warc" else ".warc.wat.gz"
    return f"crawl-data/{fs.crawl_id}/segments/{fs.segment}/{kind}/{fs.name}{suffix}"


def _write_one(args) -> list[Occurrence]:
    root, fs, write_warc, shared = args
    warc = os.path.join(root, _rel(fs, "warc")) if write_warc else None
    return write_crawl_file(fs, warc, os.path.join(root, _rel(fs, "wat")), shared)


def _write_paths(path: str, lines: list[str]) -> None:
    # mtime=0 and no file name: the listing is reproducible byte for byte.
    with atomic_write(path) as f, gzip.GzipFile(fileobj=f, mode="wb", filename="", mtime=0) as gz:
        gz.write("".join(line + "\n" for line in lines).encode())


def _write_parquet(path: str, table: pa.Table) -> None:
    with atomic_write(path) as f:
        pq.write_table(table, f, compression="zstd")


def ground_truth_settings(root: str | None = None) -> DownloadSettings:
    """ImageServer.download_settings() less what depends on the running server (ports, CA file); with the test
    blocklists of the world at `root`, as the server's settings have them."""
    return DownloadSettings(**TEST_SETTINGS, blocklists=world_blocklists(root) if root else [])


def _images_table(root: str, spec: WorldSpec, urls_by_image: dict[int, set[str]]) -> pa.Table:
    rows = []
    settings = ground_truth_settings(root)
    for image_id in sorted(urls_by_image):
        im = image_spec(spec.seed, image_id)
        size = served_size(im.behaviour, im.width, im.height)
        rows.append(
            {
                "image_id": image_id,
                "urls": sorted(urls_by_image[image_id]),
                "host": f"img.site-{image_id % spec.sites}.world.test",
                **im.scene.to_dict(),
                "flagged": im.scene.flagged,
                "caption": describe(im.scene, random.Random(f"cap:{image_id}")),
                "format": im.format,
                "width": size[0],
                "height": size[1],
                # What the image server does for it (tasks/world/behaviours.py), and the resulting
                # status of a correct downloader under ImageServer.download_settings().
                "behaviour": im.behaviour,
                "expected_status": str(expected_status(im.behaviour, size, settings)),
            }
        )
    return pa.Table.from_pylist(rows)


def generate_world(root: str, spec: WorldSpec = WorldSpec(), workers: int = 1, force: bool = False) -> World:
    """Write the world for `spec` under `root`; a complete world with the same spec is reused unless `force`."""
    world = World(root, spec.crawl_id, spec)
    if spec.images < 2 * len(RESERVED) + spec.sites:
        raise ValueError(f"WorldSpec.images={spec.images}: needs at least {2 * len(RESERVED) + spec.sites}")
    marker = os.path.join(root, "world.json")
    if not force and os.path.exists(marker):
        with open(marker, "rb") as f:
            info = orjson.loads(f.read())
        if (
            info.get("spec") == orjson.loads(orjson.dumps(spec.to_dict()))
            and info.get("generator_version") == GENERATOR_VERSION
        ):
            return world
    files = file_specs(spec)
    shared = shared_pairs(spec.seed, spec.shared_pairs, spec.images, spec.sites)
    jobs = [(root, fs, spec.warc, shared) for fs in files]
    if workers > 1 and len(files) > 1:
        with ProcessPoolExecutor(min(workers, len(files))) as pool:
            results = list(pool.map(_write_one, jobs))
    else:
        results = [_write_one(job) for job in jobs]

    columns: dict[str, list] = {k: [] for k in ("segment", "wat_file", "warc_file")}
    columns.update({f.name: [] for f in dataclasses.fields(Occurrence)})
    urls_by_image: dict[int, set[str]] = {}
    for fs, occurrences in zip(files, results):
        n = len(occurrences)
        columns["segment"] += [fs.segment] * n
        columns["wat_file"] += [_rel(fs, "wat")] * n
        columns["warc_file"] += [_rel(fs, "warc") if spec.warc else None] * n
        for occ in occurrences:
            for key, value in dataclasses.asdict(occ).items():
                columns[key].append(value)
            if occ.url:
                urls_by_image.setdefault(occ.image_id, set()).add(occ.url)
    pairs = pa.table(columns | {"license": pa.array(columns["license"], pa.string())})  # string if all null
    crawl_dir = os.path.join(root, "crawl-data", spec.crawl_id)
    os.makedirs(os.path.join(root, "manifest"), exist_ok=True)
    _write_parquet(os.path.join(root, "manifest", "pairs.parquet"), pairs)
    write_test_lists(root, spec.seed, urls_by_image)
    _write_parquet(os.path.join(root, "manifest", "images.parquet"), _images_table(root, spec, urls_by_image))
    segments = sorted({fs.segment for fs in files})
    _write_paths(
        os.path.join(crawl_dir, "segment.paths.gz"), [f"crawl-data/{spec.crawl_id}/segments/{s}" for s in segments]
    )
    _write_paths(os.path.join(crawl_dir, "wat.paths.gz"), [_rel(fs, "wat") for fs in files])
    _write_paths(os.path.join(crawl_dir, "warc.paths.gz"), [_rel(fs, "warc") for fs in files] if spec.warc else [])
    start = crawl_start(spec.crawl_id)
    collinfo = [
        {
            "id": spec.crawl_id,
            "name": f"{start:%B %Y} Index (synthetic world)",
            "timegate": f"https://index.commoncrawl.org/{spec.crawl_id}/",
            "cdx-api": f"https://index.commoncrawl.org/{spec.crawl_id}-index",
            "from": f"{start:%Y-%m-%dT%H:%M:%S}",
            "to": f"{start + timedelta(days=12):%Y-%m-%dT%H:%M:%S}",
        }
    ]
    with atomic_write(os.path.join(root, "collinfo.json")) as f:
        f.write(orjson.dumps(collinfo, option=orjson.OPT_INDENT_2))
    hosts = sorted({u.split("/")[2] for urls in urls_by_image.values() for u in urls})
    info = {
        "spec": spec.to_dict(),
        "crawl_id": spec.crawl_id,
        "generator_version": GENERATOR_VERSION,
        "files": [
            {"segment": fs.segment, "wat": _rel(fs, "wat"), "warc": _rel(fs, "warc") if spec.warc else None}
            for fs in files
        ],
        "image_hosts": hosts,
        "pairs": pairs.num_rows,
    }
    with atomic_write(marker) as f:
        f.write(orjson.dumps(info, option=orjson.OPT_INDENT_2))
    return world
