"""A takedown over OUT: match, rewrite every output that holds a matched sample, remake what derives from
them, log it.

    with locked(out):                                  # one takedown at a time
        resume(out, results)                           # an interrupted takedown (OUT/takedown/pending.json) first
        matched = match(out, request(urls, ids, list_uri))
        planned = plan(out, wanted, matched, reason)   # the log entry, or None: nothing to do
        journal = begin(out, matched, planned["entry"], planned["results"])   # hashes only
        apply(out, journal, matched)   # remove (images/, embeddings/, index/, dataset/, pairs/, summaries),
                                       # derive (report/ made again, result files deleted), log, journal dropped

Small work for one process: matching reads the identifying columns of OUT's parquet files, and only the
files that hold a match are read whole and rewritten; the flow runs it in its own process, no cluster.
"""

from __future__ import annotations

import posixpath

from prefect import task
from prefect.cache_policies import NO_CACHE

from clipcrawl.tasks.core import layout
from clipcrawl.tasks.index.stage import absolute
from clipcrawl.tasks.takedown import log
from clipcrawl.tasks.takedown.derived import remake_report, report_holds, results_holding, scrub_results
from clipcrawl.tasks.takedown.journal import begin, end, hashed, locked, pending
from clipcrawl.tasks.takedown.match import Matched, Request, check_output, is_uid, match, resolve
from clipcrawl.tasks.takedown.rewrite import (
    rewrite_embeddings,
    rewrite_index,
    rewrite_parquets,
    rewrite_shards,
    rewrite_summaries,
)


def root(out: str) -> str:
    """OUT as every step spells it: a local path made absolute (file:// dropped), a remote URI unchanged."""
    return absolute(out)


def remove(out: str, matched: Matched, run: str = "", force: bool = False) -> dict[str, int]:
    """Rewrite every output of OUT that holds a matched sample; {file: rows or members removed}.

    The order keeps each step's inputs: the index's rows are read from the rewritten metadata, and the
    dataset's near-duplicate marks from the rewritten index. `force` (a takedown resumed from its journal):
    the index's ids and infos, the dataset marks and the summaries are recomputed even where nothing matches."""
    if not matched.held and not force:  # nothing of it in OUT's files
        return {}
    removed = rewrite_shards(out, matched)
    removed |= rewrite_embeddings(out, matched, run)
    in_index, marks = rewrite_index(out, matched, force)
    removed |= in_index
    removed |= rewrite_parquets(out, matched, marks, run)
    removed |= rewrite_summaries(out)
    return removed


def derive(
    out: str,
    matched: Matched,
    removed: dict[str, int],
    results: str | None = None,
    journal: dict | None = None,
    resumed: bool = False,
) -> dict:
    """The report made again (when files were rewritten, a takedown resumed, or it still holds a sample) and the
    result files holding a match (or listed in the journal) deleted."""
    remake = bool(removed) or resumed or report_holds(out, matched)
    report = remake_report(out) if remake else None
    known = journal["results"] if journal else []
    deleted = scrub_results(results or layout.results_dir(out), matched, known) if matched or known else []
    return {"report": report, "results_deleted": deleted}


def _relative(out: str, uri: str) -> str:
    root = out.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else posixpath.basename(uri)


def plan(out: str, wanted: Request, matched: Matched, reason: str, results: str | None = None) -> dict | None:
    """The log entry of a takedown (its tombstones and counts) and the result files it deletes; None when it
    changes nothing: nothing of it is held in OUT or in the results, and every tombstone is known."""
    known = log.tombstones(out)
    urls = sorted({log.digest(u) for u in matched.urls | wanted.urls})
    # a key names a sample of this run only: the uids it matched are tombstoned, not the key
    ids = sorted({log.digest(str(i)) for i in matched.uids} | {log.digest(i) for i in wanted.ids if is_uid(i)})
    images = sorted({log.digest(h) for h in matched.sha256})
    held = holding(out, results, matched)
    if (
        not matched.held
        and not held
        and set(urls) <= known.urls
        and set(ids) <= known.ids
        and set(images) <= known.images
    ):
        return None
    entry = {
        "reason": reason,
        "requested": {"urls": len(wanted.urls), "sample_ids": len(wanted.ids)},
        # what OUT held: URLs found in its files, the samples (keys) and images of the run
        "matched": {
            "urls": sum(h.startswith("url:") for h in matched.held),
            "samples": sum(h.startswith("key:") for h in matched.held),
            "images": len(matched.sha256),
        },
        "url_sha256": urls,
        "id_sha256": ids,
        "image_sha256": images,
    }
    return {"entry": entry, "results": held}


def holding(out: str, results: str | None, matched: Matched) -> list[str]:
    return results_holding(results or layout.results_dir(out), matched) if matched else []


def apply(out: str, journal: dict, matched: Matched, results: str | None = None, resumed: bool = False) -> dict:
    """Run a journaled takedown to its end: every step (idempotent; `resumed`: an interrupted one, every step
    recomputed), the log entry, the journal dropped."""
    removed = remove(out, matched, journal["run"], force=resumed)
    derived = derive(out, matched, removed, results, journal, resumed)
    entry = log.append(
        out,
        journal["entry"]
        | {
            "files": {_relative(out, uri): n for uri, n in sorted(removed.items())},
            "results_deleted": len(derived["results_deleted"]),
            "report_remade": derived["report"] is not None,
        },
    )
    end(out)
    return {"entry": entry, "removed": removed, "derived": derived}


def resume(out: str, results: str | None = None) -> dict | None:
    """Finish the takedown a pending journal of OUT describes (None when there is none)."""
    journal = pending(out)
    if journal is None:
        return None
    return apply(out, journal, resolve(out, hashed(journal)), results, resumed=True)


def takedown(out: str, wanted: Request, reason: str = "", results: str | None = None) -> dict:
    """One takedown over OUT, under its lock: an unfinished earlier one finished first, then this one matched,
    journaled, applied and logged. Returns {"matched", "resumed", "done" (apply's result, None: a no-op)}."""
    check_output(out)
    with locked(out):
        resumed = resume(out, results)
        matched = match(out, wanted)
        planned = plan(out, wanted, matched, reason, results)
        done = None
        if planned is not None:
            journal = begin(out, matched, planned["entry"], planned["results"])
            done = apply(out, journal, matched, results)
    return {"matched": matched, "resumed": resumed, "done": done}


# Prefect wrapper: no cache and no persisted result (a persisted match would hold the URLs it removes).
takedown_task = task(
    takedown, name="takedown_samples", tags=["clipcrawl", "takedown"], persist_result=False, cache_policy=NO_CACHE
)
