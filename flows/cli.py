"""The `clipcrawl` command: each subcommand runs its flow (visible in the Prefect UI when
PREFECT_API_URL points at a server), exits non-zero with a one-line reason on failure."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tasks.config import COMMON_CRAWL_HTTPS, ExtractSettings, IngestSettings, load_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dask-address", help="use an existing Dask scheduler (tcp://host:8786) instead of a local cluster")
    p.add_argument("--results", help="Prefect result storage URI shared by all workers (default OUT/_results)")
    p.add_argument("--config", help="YAML or TOML file with per-stage settings sections (ingest:, extract:)")


def _extract_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-alt-length", type=int, help="drop pairs whose alt text is shorter (default 5)")
    p.add_argument("--no-language", action="store_true", help="do not detect the caption language")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clipcrawl", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic crawl world")
    p.add_argument("--out", default="clipcrawl-demo", help="output directory (default ./clipcrawl-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--segments", type=int, default=2, help="segments in the synthetic crawl")
    _common(p)

    p = sub.add_parser("extract", help="WAT or WARC files -> OUT/pairs/")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="WAT/WARC URIs: local path, file://, https://, s3://")
    p.add_argument("--out", required=True)
    _extract_options(p)
    _common(p)

    p = sub.add_parser("ingest", help="a Common Crawl crawl's WAT (or WARC) files -> OUT/pairs/")
    p.add_argument("--crawl", required=True, help="crawl id, e.g. CC-MAIN-2024-10")
    p.add_argument("--source", default=COMMON_CRAWL_HTTPS, help="https://data.commoncrawl.org, s3://commoncrawl or a mirror")
    p.add_argument("--segments", type=int, help="take the first N segments (or N sampled with --sample-seed)")
    p.add_argument("--segment", action="append", default=[], dest="segment_list", help="take this segment (repeatable)")
    p.add_argument("--sample-seed", type=int, help="sample --segments at random with this seed")
    p.add_argument("--files-per-segment", type=int, help="cap the files taken from each segment")
    p.add_argument("--kind", choices=["wat", "warc"], default="wat", help="read WAT files (default) or WARC files")
    p.add_argument("--out", required=True)
    _extract_options(p)
    _common(p)
    return ap


def ingest_settings(args: argparse.Namespace, **fields) -> IngestSettings:
    """Settings from the config file, overridden by the flags that were given."""
    config = load_config(args.config) if args.config else {}
    extract = dict(config.get("extract", {}))
    if getattr(args, "min_alt_length", None) is not None:
        extract["min_alt_length"] = args.min_alt_length
    if getattr(args, "no_language", False):
        extract["detect_language"] = False
    ingest = dict(config.get("ingest", {})) | {k: v for k, v in fields.items() if v not in (None, [])}
    return IngestSettings(**ingest, extract=ExtractSettings(**extract))


def run_ingest(args: argparse.Namespace, settings: IngestSettings) -> dict:
    from flows.ingest import ingest_crawl
    from flows.runner import task_runner

    flow = ingest_crawl.with_options(task_runner=task_runner(args.dask_address))
    state = flow(out=args.out, settings=settings, results=args.results, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"clipcrawl: ingest_crawl {state.name}: {state.message}")
    return state.result()


def demo(args: argparse.Namespace) -> None:
    from tasks.world import WorldSpec, generate_world
    from tasks.groundtruth import compare_pairs

    world = generate_world(os.path.join(args.out, "world"), WorldSpec(seed=args.seed, segments=args.segments))
    print(f"synthetic crawl {world.crawl_id} at {world.root}")
    args.results = args.results or None
    summary = run_ingest(args, ingest_settings(args, crawl=world.crawl_id, source=str(world.root)))
    report = compare_pairs(world, args.out)
    print(json.dumps({"pairs": summary["kept"], "ground_truth": report}, indent=2))
    if not report["equal"]:
        raise SystemExit("clipcrawl: demo: extracted pairs differ from the synthetic world's ground truth")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from crawl machines
    try:
        if args.command == "demo":
            demo(args)
        elif args.command == "extract":
            summary = run_ingest(args, ingest_settings(args, inputs=args.inputs))
            print(json.dumps(summary, indent=2))
        elif args.command == "ingest":
            settings = ingest_settings(args, crawl=args.crawl, source=args.source, segments=args.segments,
                                       segment_list=args.segment_list, sample_seed=args.sample_seed,
                                       files_per_segment=args.files_per_segment, kind=args.kind)
            print(json.dumps(run_ingest(args, settings), indent=2))
    except KeyboardInterrupt:
        raise SystemExit("clipcrawl: interrupted") from None
    except SystemExit:
        raise
    except Exception as exc:  # one line for the user; the flow logs hold the traceback
        raise SystemExit(f"clipcrawl {args.command}: {type(exc).__name__}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
