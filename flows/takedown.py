"""Flow `takedown`: remove samples (by URL or sample id) from every output under OUT, and log it.

Runs in the flow's own process (no Dask cluster): matching reads a few columns of OUT's parquet files and
only the files that hold a match are rewritten (docs/takedown.md)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from clipcrawl.tasks.core.errors import InputError
from clipcrawl.tasks.takedown.match import request
from clipcrawl.tasks.takedown.stage import root, takedown_task


@flow(name="takedown", log_prints=True)
def takedown(
    out: str,
    urls: list[str] | None = None,
    sample_ids: list[str] | None = None,
    list_uri: str | None = None,
    reason: str = "",
    results: str | None = None,
) -> dict:
    """Remove the samples named by URL or sample id (SAMPLE_ID / uid, or key) from every output under OUT:
    images/, embeddings/, dataset/, index/, pairs/, report/ and the result storage; log it in
    OUT/takedown/log.jsonl, whose hashed URLs and ids later runs skip.

    list_uri: a file of URLs and ids, one a line, or a parquet/csv with a url and/or SAMPLE_ID column.
    reason: why (recorded in the log). results: the result storage (default OUT/_results)."""
    logger = get_run_logger()
    wanted = request(urls or (), sample_ids or (), list_uri)
    if not out:
        raise InputError("takedown: give out, the run's output location")
    out = root(out)
    found = takedown_task(out, wanted, reason, results)
    matched, done = found["matched"], found["done"]
    if found["resumed"] is not None:
        logger.info("finished an interrupted takedown first (its journal, OUT/takedown/pending.json)")
    entry = done and done["entry"]
    held = bool(matched.held)
    logger.info(
        "takedown over %s: %d URLs and %d ids asked for; OUT held %d URLs, %d samples, %d images",
        out,
        len(wanted.urls),
        len(wanted.ids),
        *(entry["matched"][k] for k in ("urls", "samples", "images")) if entry else (0, 0, 0),
    )
    if not held:
        logger.info("no sample of %s holds what was asked for: nothing removed%s", out, ", tombstoned" if entry else "")
    if entry is None:
        logger.info("nothing to remove: every matched sample was taken down before (nothing rewritten)")
    else:
        logger.info(
            "removed from %d files, %d result files deleted%s",
            len(done["removed"]),
            len(done["derived"]["results_deleted"]),
            ", report made again" if done["derived"]["report"] else "",
        )
    removed = done["removed"] if done else {}
    return {
        "noop": entry is None,
        "held": held,
        "resumed": found["resumed"] is not None,
        "matched": entry["matched"] if entry else {"urls": 0, "samples": 0, "images": 0},
        "files": len(removed),
        "rows": sum(removed.values()),
        "results_deleted": len(done["derived"]["results_deleted"]) if done else 0,
        "report": done["derived"]["report"] if done else None,
        "logged_at": entry and entry["time"],
    }
