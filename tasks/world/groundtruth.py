"""Compare a run's outputs with the synthetic world's ground-truth manifest."""

from __future__ import annotations

import pyarrow.parquet as pq

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.core.caption import read_columns
from clipcrawl.tasks.core.uri import listdir, open_uri
from clipcrawl.tasks.takedown.log import tombstones


def _pair_columns(out: str, columns: list[str]):
    """The given columns of each parquet file published under OUT/pairs/, as dicts of lists."""
    for uri in listdir(layout.pairs_dir(out), ".parquet"):
        with open_uri(uri) as f:
            yield read_columns(pq.ParquetFile(f), columns).to_pydict()


def read_pair_set(out: str) -> tuple[set[tuple[str, str]], int]:
    """The (url, caption) pairs published under OUT/pairs/, and the row count (to spot duplicates)."""
    found: set[tuple[str, str]] = set()
    rows = 0
    for t in _pair_columns(out, ["url", "caption"]):
        rows += len(t["url"])
        found.update(zip(t["url"], t["caption"]))
    return found, rows


def compare_pairs(world, out: str, examples: int = 5) -> dict:
    """Whether the published pairs equal the pairs a correct extractor keeps, each with its page's license,
    with examples of any gap."""
    gone = tombstones(out)  # a takedown under OUT blanked these pairs (docs/takedown.md): not expected any more
    expected = {p for p in world.expected_pairs() if not gone.holds(p[0])}
    page_licenses = world.page_licenses()
    found: set[tuple[str, str]] = set()
    rows = licensed = 0
    wrong_license = []
    for t in _pair_columns(out, ["url", "caption", "page_url", "license"]):
        t = {k: [v for v, url in zip(values, t["url"]) if url is not None] for k, values in t.items()}
        rows += len(t["url"])
        found.update(zip(t["url"], t["caption"]))
        for url, page, license in zip(t["url"], t["page_url"], t["license"]):
            licensed += license is not None
            if license != page_licenses.get(page):
                wrong_license.append(
                    {"url": url, "page_url": page, "license": license, "expected": page_licenses.get(page)}
                )
    missing, extra = sorted(expected - found), sorted(found - expected)
    return {
        "equal": not missing and not extra and rows == len(found) and not wrong_license,
        "expected": len(expected),
        "extracted": len(found),
        "duplicate_rows": rows - len(found),
        "missing": missing[:examples],
        "extra": extra[:examples],
        "with_license": licensed,
        "wrong_license_rows": len(wrong_license),
        "wrong_license": wrong_license[:examples],
    }


def read_download_statuses(out: str) -> list[tuple[str, str]]:
    """(url, status) of every sample row under OUT/images/."""
    rows: list[tuple[str, str]] = []
    for uri in listdir(layout.images_dir(out), ".parquet"):
        with open_uri(uri) as f:
            table = pq.read_table(f, columns=["url", "status"])
        rows.extend(zip(table.column("url").to_pylist(), table.column("status").to_pylist()))
    return rows


def compare_downloads(world, out: str, examples: int = 5) -> dict:
    """Whether every downloaded sample got the status the world's image server should cause."""
    gone = tombstones(out)  # taken down: their rows hold only a key and the status taken_down
    expected = {url: status for url, status in world.expected_downloads().items() if not gone.holds(url)}
    rows = [(url, status) for url, status in read_download_statuses(out) if url is not None]
    wrong = [(url, status, expected.get(url)) for url, status in rows if expected.get(url) != status]
    seen = {url for url, _ in rows}
    by_status: dict[str, int] = {}
    for _, status in rows:
        by_status[status] = by_status.get(status, 0) + 1
    return {
        "equal": not wrong and seen == set(expected),
        "samples": len(rows),
        "urls": len(seen),
        "expected_urls": len(expected),
        "status": dict(sorted(by_status.items())),
        "wrong": [{"url": u, "status": s, "expected": e} for u, s, e in wrong[:examples]],
        "missing": sorted(set(expected) - seen)[:examples],
    }


def read_embedded(out: str) -> list[dict]:
    """url, caption, similarity, NSFW of every embedded sample under OUT/embeddings/metadata/."""
    rows: list[dict] = []
    for uri in listdir(layout.metadata_dir(layout.embeddings_dir(out)), ".parquet"):
        with open_uri(uri) as f:
            rows += read_columns(pq.ParquetFile(f), ["url", "caption", "similarity", "NSFW"]).to_pylist()
    return rows


def compare_embeddings(world, out: str, threshold: float = 0.3, examples: int = 5) -> dict:
    """How often the similarity filter agrees with the world's truth (does the caption describe the
    image?), per alt case, and how the NSFW tag treats the world's flagged concept."""
    truth = world.manifest_pairs().select(["url", "text", "matches", "alt_case"]).to_pydict()
    matches = {(u, t): (m, c) for u, t, m, c in zip(truth["url"], truth["text"], truth["matches"], truth["alt_case"])}
    flagged = {
        u
        for image in world.manifest_images().select(["urls", "flagged"]).to_pylist()
        if image["flagged"]
        for u in image["urls"]
    }
    rows = read_embedded(out)
    cases: dict[str, list[int]] = {}
    wrong, nsfw = [], {"flagged_samples": 0, "flagged_tagged_nsfw": 0, "unflagged_tagged_nsfw": 0}
    for row in rows:
        match, case = matches[(row["url"], row["caption"])]
        agree = (row["similarity"] >= threshold) == match
        cases.setdefault(case, [0, 0])[0] += agree
        cases[case][1] += 1
        if not agree:
            wrong.append(
                {
                    "url": row["url"],
                    "caption": row["caption"][:80],
                    "similarity": round(row["similarity"], 3),
                    "matches": match,
                }
            )
        is_flagged = row["url"] in flagged
        nsfw["flagged_samples"] += is_flagged
        nsfw["flagged_tagged_nsfw" if is_flagged else "unflagged_tagged_nsfw"] += row["NSFW"] == "NSFW"
    agreed = sum(a for a, _ in cases.values())
    return {
        "samples": len(rows),
        "accuracy": agreed / len(rows) if rows else 0.0,
        "by_alt_case": {c: {"samples": n, "accuracy": round(a / n, 4)} for c, (a, n) in sorted(cases.items())},
        **nsfw,
        "wrong": wrong[:examples],
    }


def _scenes_by_url(world) -> dict[str, dict]:
    """url -> the manifest row of the image it serves (shape, colour, image_id, ...)."""
    return {u: image for image in world.manifest_images().to_pylist() for u in image["urls"]}


def compare_search(world, searcher, k: int = 10) -> dict:
    """Query the index for the concept (colour and shape) it holds most images of, in the world's words,
    and count how many of the first results show that concept."""
    from clipcrawl.tasks.world.tiny_clip import search_query

    scenes = _scenes_by_url(world)
    urls = searcher.ids.column("url")
    concepts: dict[tuple[str, str], int] = {}
    for url in urls:
        scene = scenes[url]
        concepts[(scene["colour"], scene["shape"])] = concepts.get((scene["colour"], scene["shape"]), 0) + 1
    (colour, shape), held = max(sorted(concepts.items()), key=lambda item: item[1])
    query = search_query(colour, shape)
    top = min(k, held)
    results = searcher.search(text=query, k=top)
    hits = [(scenes[r["url"]]["colour"], scenes[r["url"]]["shape"]) == (colour, shape) for r in results]
    return {
        "query": query,
        "concept_samples": held,
        "k": top,
        "of_concept": sum(hits),
        "hits": hits,
        "precision": sum(hits) / top if top else 0.0,
        "first": [r["caption"][:60] for r in results[:3]],
    }


def compare_near_duplicates(world, out: str) -> dict:
    """Near-duplicate groups of OUT/index against the world's truth: samples of one image (the world serves
    an image under several URLs) belong in one group; samples of different images do not."""
    from clipcrawl.tasks.index.ids import IdTable

    ids = IdTable(layout.ids_file(layout.index_dir(out)))
    scenes = _scenes_by_url(world)
    image = [scenes[u]["image_id"] for u in ids.column("url")]
    group = ids.column("duplicate_group").tolist()
    same_image, same_group, both = set(), set(), set()
    first_of_image: dict[int, int] = {}
    first_of_group: dict[int, int] = {}
    for i, (img, grp) in enumerate(zip(image, group)):
        if img in first_of_image:
            same_image.add(i)
        if grp in first_of_group:
            same_group.add(i)
            if image[first_of_group[grp]] == img:
                both.add(i)
        first_of_image.setdefault(img, i)
        first_of_group.setdefault(grp, i)
    return {
        "samples": len(image),
        "repeated_images": len(same_image),
        "marked": len(same_group),
        "marked_correctly": len(both),
        "recall": len(both) / len(same_image) if same_image else 1.0,
        "precision": len(both) / len(same_group) if same_group else 1.0,
    }
