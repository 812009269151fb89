"""The `clipcrawl` command: each subcommand runs its flow (visible in the Prefect UI when
PREFECT_API_URL points at a server), exits non-zero with a one-line reason on failure."""

from __future__ import annotations

import argparse
import json
import os
import sys

from clipcrawl.tasks.core.config import (
    COMMON_CRAWL_HTTPS,
    DownloadSettings,
    EmbedSettings,
    ExtractSettings,
    IndexSettings,
    IngestSettings,
    ReportSettings,
    load_config,
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dask-address",
        help="use an existing Dask scheduler (tcp://host:8786; default: $CLIPCRAWL_DASK_ADDRESS) instead of a local cluster",
    )
    p.add_argument("--results", help="Prefect result storage URI shared by all workers (default OUT/_results)")
    p.add_argument(
        "--config",
        help="YAML or TOML file with per-stage settings sections (ingest:, extract:, download:, "
        "embed:, index:, report:)",
    )


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

    p = sub.add_parser(
        "run", help="the whole pipeline (flow `pipeline`): crawl -> pairs, images, embeddings, dataset, index, report"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--crawl", help="crawl id, e.g. CC-MAIN-2024-10 (its WAT files, from --source)")
    what.add_argument("--inputs", nargs="+", metavar="URI", help="explicit WAT/WARC URIs instead of a crawl")
    p.add_argument("--source", help="https://data.commoncrawl.org (default), s3://commoncrawl or a mirror")
    p.add_argument("--segments", type=int, help="take the first N segments of the crawl")
    p.add_argument("--out", required=True)
    p.add_argument("--ground-truth", help="manifest pairs.parquet the report measures the CLIP filter against")
    _common(p)

    p = sub.add_parser("download", help="OUT/pairs/ -> OUT/images/ webdataset shards")
    p.add_argument("--pairs", required=True, help="directory of pair parquet files (or one parquet file)")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", type=int, help="samples per shard (default 10000)")
    p.add_argument("--image-size", type=int, help="output size in pixels (default 256)")
    p.add_argument("--resize-mode", choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])
    p.add_argument("--encode-format", choices=["jpg", "webp", "png"])
    p.add_argument("--processes", type=int, help="image worker processes per shard task (default: cores)")
    p.add_argument("--concurrency", type=int, help="requests in flight per shard task (default 256)")
    p.add_argument("--user-agent-token", help="token in the User-Agent, matched by robots.txt and X-Robots-Tag")
    p.add_argument("--ignore-opt-outs", action="store_true", help="do not honour X-Robots-Tag noai/noindex headers")
    p.add_argument("--ignore-robots", action="store_true", help="do not honour the image hosts' robots.txt")
    p.add_argument("--allow-address", action="append", default=[], help="CIDR exempt from the SSRF guard (repeatable)")
    _common(p)

    p = sub.add_parser("embed", help="OUT/images/ shards -> OUT/embeddings/ and the filtered OUT/dataset/")
    p.add_argument("--images", required=True, help="directory of webdataset shards written by `clipcrawl download`")
    p.add_argument("--out", required=True)
    model = p.add_mutually_exclusive_group()
    model.add_argument("--pretrained", help="open_clip pretrained tag of --model (default openai)")
    model.add_argument(
        "--checkpoint", help="local weights: a file for --model, or a directory with open_clip_config.json"
    )
    p.add_argument("--model", help="open_clip model name (default ViT-B-32)")
    p.add_argument("--cache-dir", help="where pretrained weights are cached (default: open_clip's)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 256)")
    p.add_argument(
        "--threshold", type=float, dest="similarity_threshold", help="keep pairs with similarity >= this (default 0.3)"
    )
    p.add_argument("--drop-nsfw", action="store_true", help="leave pairs tagged NSFW out of dataset/")
    _common(p)

    p = sub.add_parser("index", help="OUT/embeddings/ -> OUT/index/: image and text kNN indices, near-duplicates")
    p.add_argument("--embeddings", required=True, help="embeddings folder written by `clipcrawl embed`")
    p.add_argument("--out", required=True, help="OUT: the index goes to OUT/index/ (added to when it exists)")
    p.add_argument("--dataset", help="dataset folder listing the kept samples (default: beside --embeddings)")
    p.add_argument("--rebuild", action="store_true", help="build from scratch instead of adding to OUT/index/")
    p.add_argument("--index-key", help="faiss index_factory string (default: chosen from the count and memory)")
    p.add_argument("--max-index-memory", type=float, dest="max_index_memory_gb", help="GiB (default 16)")
    p.add_argument("--target-recall", type=float, help="recall@10 the search parameters are tuned to (default 0.98)")
    p.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        help="train IVF k-means and measure recall on the GPUs (auto: when faiss-gpu sees one)",
    )
    p.add_argument("--near-duplicate-threshold", type=float, help="cosine similarity of near-duplicates (default 0.96)")
    p.add_argument(
        "--drop-near-duplicates",
        action="store_true",
        help="keep one sample per near-duplicate group in the dataset (default: mark them)",
    )
    _common(p)

    for name, what in (
        ("search", "query the index from the command line"),
        ("serve", "an HTTP search service and web page over the index"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--index", required=True, help="the index folder (OUT/index)")
        if name == "search":
            p.add_argument("text", nargs="?", help="text query")
            p.add_argument("--image", help="image query: a file path")
            p.add_argument("-k", type=int, default=10, help="results (default 10)")
            p.add_argument(
                "--modality",
                choices=["image", "text"],
                default="image",
                help="search the image index (default) or the caption index",
            )
            p.add_argument("--deduplicate", action="store_true", help="one result per near-duplicate group")
            p.add_argument("--json", action="store_true", help="machine output: a JSON list")
        else:
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=1234)

    p = sub.add_parser("report", help="OUT's outputs -> OUT/report/index.html and stats.json; quality gates")
    p.add_argument("out", metavar="DIR", help="the output location of a run (OUT)")
    p.add_argument(
        "--ground-truth",
        help="manifest pairs.parquet (url, text, matches) to measure the CLIP filter "
        "against (the synthetic world's manifest/pairs.parquet)",
    )
    p.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="NAME=THRESHOLD[:warn|:fail]",
        help="set a quality gate, e.g. min_download_success_rate=0.5 or max_clip_pass_rate=0.9:warn; "
        "NAME=off turns one off (repeatable)",
    )
    _common(p)

    p = sub.add_parser("extract", help="WAT or WARC files -> OUT/pairs/")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="WAT/WARC URIs: local path, file://, https://, s3://")
    p.add_argument("--out", required=True)
    _extract_options(p)
    _common(p)

    p = sub.add_parser("ingest", help="a Common Crawl crawl's WAT (or WARC) files -> OUT/pairs/")
    p.add_argument("--crawl", required=True, help="crawl id, e.g. CC-MAIN-2024-10")
    p.add_argument(
        "--source", default=COMMON_CRAWL_HTTPS, help="https://data.commoncrawl.org, s3://commoncrawl or a mirror"
    )
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


def download_settings(args: argparse.Namespace, **fields) -> DownloadSettings:
    config = dict(load_config(args.config).get("download", {})) if args.config else {}
    flags = (
        {
            "shard_size": args.shard_size,
            "image_size": args.image_size,
            "resize_mode": args.resize_mode,
            "encode_format": args.encode_format,
            "processes": args.processes,
            "concurrency": args.concurrency,
            "user_agent_token": args.user_agent_token,
            "allow_addresses": args.allow_address or None,
            "respect_optouts": False if args.ignore_opt_outs else None,
            "respect_robots": False if args.ignore_robots else None,
        }
        if args.command == "download"
        else {}
    )
    return DownloadSettings(**config | {k: v for k, v in (flags | fields).items() if v is not None})


def embed_settings(args: argparse.Namespace, **fields) -> EmbedSettings:
    config = dict(load_config(args.config).get("embed", {})) if args.config else {}
    flags = (
        {
            "model": args.model,
            "pretrained": args.pretrained,
            "checkpoint": args.checkpoint,
            "cache_dir": args.cache_dir,
            "device": args.device,
            "batch_size": args.batch_size,
            "similarity_threshold": args.similarity_threshold,
            "drop_nsfw": True if args.drop_nsfw else None,
        }
        if args.command == "embed"
        else {}
    )
    settings = config | {k: v for k, v in (flags | fields).items() if v is not None}
    if flags.get("checkpoint"):
        settings["pretrained"] = None  # local weights replace the pretrained tag
    return EmbedSettings(**settings)


def index_settings(args: argparse.Namespace, **fields) -> IndexSettings:
    config = dict(load_config(args.config).get("index", {})) if args.config else {}
    flags = (
        {
            "index_key": args.index_key,
            "max_index_memory_gb": args.max_index_memory_gb,
            "target_recall": args.target_recall,
            "near_duplicate_threshold": args.near_duplicate_threshold,
            "device": args.device,
            "drop_near_duplicates": True if args.drop_near_duplicates else None,
        }
        if args.command == "index"
        else {}
    )
    return IndexSettings(**config | {k: v for k, v in (flags | fields).items() if v is not None})


def report_settings(args: argparse.Namespace) -> ReportSettings:
    """Settings from the config file's report: section, with --gate NAME=THRESHOLD[:ACTION] over them."""
    config = dict(load_config(args.config).get("report", {})) if args.config else {}
    gates = dict(config.get("gates", {}))
    for spec in getattr(args, "gate", []):
        name, _, value = spec.partition("=")
        threshold, _, action = value.partition(":")
        if not name or not threshold:
            raise SystemExit(f"clipcrawl report: --gate {spec!r}: want NAME=THRESHOLD[:warn|:fail] or NAME=off")
        gate = dict(gates.get(name, {}))
        gate["threshold"] = None if threshold == "off" else threshold
        if action:
            gate["action"] = action
        gates[name] = gate
    return ReportSettings(**config | {"gates": gates})


def run_flow(flow, address: str, **parameters):
    """Run a flow on the cluster; a failed run exits with its one-line reason."""
    from clipcrawl.flows.runner import task_runner

    state = flow.with_options(task_runner=task_runner(address))(**parameters, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"clipcrawl: {flow.name} {state.name}: {state.message}")
    return state.result()


def run_pipeline(
    args: argparse.Namespace,
    address: str,
    ingest: IngestSettings,
    download: DownloadSettings,
    embed: EmbedSettings,
    index: IndexSettings,
    ground_truth: str | None = None,
) -> dict:
    from clipcrawl.flows.pipeline import pipeline

    return run_flow(
        pipeline,
        address,
        out=args.out,
        ingest=ingest,
        download=download,
        embed=embed,
        index=index,
        report=report_settings(args),
        ground_truth=ground_truth,
        results=args.results,
        dask_address=address,
    )


def run_ingest(args: argparse.Namespace, address: str, settings: IngestSettings) -> dict:
    from clipcrawl.flows.ingest import ingest_crawl

    return run_flow(ingest_crawl, address, out=args.out, settings=settings, results=args.results)


def run_download(args: argparse.Namespace, address: str, pairs: str, settings: DownloadSettings) -> dict:
    from clipcrawl.flows.download import download_images

    return run_flow(download_images, address, pairs=pairs, out=args.out, settings=settings, results=args.results)


def run_embed(args: argparse.Namespace, address: str, images: str, settings: EmbedSettings) -> dict:
    from clipcrawl.flows.embed import embed_and_filter

    return run_flow(embed_and_filter, address, images=images, out=args.out, settings=settings, results=args.results)


def run_index(args: argparse.Namespace, address: str, embeddings: str, settings: IndexSettings) -> dict:
    from clipcrawl.flows.index import build_index

    return run_flow(
        build_index,
        address,
        embeddings=embeddings,
        out=args.out,
        settings=settings,
        dataset=getattr(args, "dataset", None),
        rebuild=getattr(args, "rebuild", False),
    )


def run_report(
    args: argparse.Namespace, address: str, out: str, settings: ReportSettings, ground_truth: str | None = None
) -> dict:
    from clipcrawl.flows.report import build_report

    return run_flow(build_report, address, out=out, settings=settings, ground_truth=ground_truth)


def search(args: argparse.Namespace) -> None:
    """A query from the command line: no flow, no cluster (a flow would add ~15 s to a ~5 s query)."""
    from clipcrawl.tasks.search.search import Searcher, format_results

    if (args.text is None) == (args.image is None):
        raise SystemExit("clipcrawl search: give a text query or --image PATH (one of them)")
    image = None
    if args.image:
        with open(args.image, "rb") as f:
            image = f.read()
    results = Searcher(args.index).search(
        text=args.text, image=image, k=args.k, modality=args.modality, deduplicate=args.deduplicate
    )
    print(json.dumps(results, indent=2) if args.json else format_results(results))


def demo(args: argparse.Namespace, address: str) -> None:
    """The pipeline flow on a synthetic crawl, then every stage checked against the world's ground truth."""
    from clipcrawl.tasks.search.search import Searcher
    from clipcrawl.tasks.world import ImageServer, WorldSpec, generate_world, tiny_clip
    from clipcrawl.tasks.world.groundtruth import (
        compare_downloads,
        compare_embeddings,
        compare_near_duplicates,
        compare_pairs,
        compare_search,
    )

    world = generate_world(os.path.join(args.out, "world"), WorldSpec(seed=args.seed, segments=args.segments))
    print(f"synthetic crawl {world.crawl_id} at {world.root}")
    with ImageServer(world.root) as server:
        result = run_pipeline(
            args,
            address,
            ingest_settings(args, crawl=world.crawl_id, source=str(world.root)),
            server.download_settings(),
            tiny_clip.embed_settings(),
            IndexSettings(near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD),
            ground_truth=os.path.join(world.root, "manifest", "pairs.parquet"),
        )
    checks = {
        "pairs": compare_pairs(world, args.out),
        "images": compare_downloads(world, args.out),
        "dataset": compare_embeddings(world, args.out),
    }
    searcher = Searcher(os.path.join(args.out, "index"))
    checks["index"] = {
        "search": compare_search(world, searcher),
        "near_duplicates": compare_near_duplicates(world, args.out),
    }
    print(json.dumps({"pipeline": result, "ground_truth": checks}, indent=2))
    if not checks["pairs"]["equal"]:
        raise SystemExit("clipcrawl: demo: extracted pairs differ from the synthetic world's ground truth")
    if not checks["images"]["equal"]:
        raise SystemExit("clipcrawl: demo: download statuses differ from the synthetic world's ground truth")
    if checks["dataset"]["accuracy"] < 0.95:
        raise SystemExit(
            f"clipcrawl: demo: the similarity filter agrees with the world's ground truth on only "
            f"{checks['dataset']['accuracy']:.1%} of samples (want >= 95%)"
        )
    search = checks["index"]["search"]
    # chance: ~5% of the results; the tiny model ranks a concept's images first (README, Search)
    if not search["hits"][:1] == [True] or search["precision"] < 0.8:
        raise SystemExit(
            f"clipcrawl: demo: {search['of_concept']} of the first {search['k']} results for "
            f"{search['query']!r} show it (want the first and >= 80%)"
        )
    print(f"outputs in {os.path.abspath(args.out)}: pairs/, images/, embeddings/, dataset/, index/, report/")
    print(
        f"search them: clipcrawl search --index {os.path.join(args.out, 'index')} "
        f'"{search["query"]}"  (or clipcrawl serve --index ... for the web page)'
    )
    print(f"report: {result['report']}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from crawl machines
    # the temporary API's first start on a machine creates its database: ~40 s on 2 cores, over Prefect's 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    try:
        if args.command == "search":
            return search(args)
        if args.command == "serve":
            from clipcrawl.tasks.search.serve import serve

            return serve(args.index, args.host, args.port)
        from clipcrawl.flows.runner import cluster

        with cluster(args.dask_address) as address:
            if args.command == "demo":
                demo(args, address)
            elif args.command == "run":
                ingest = ingest_settings(
                    args, crawl=args.crawl, source=args.source, segments=args.segments, inputs=args.inputs
                )
                print(
                    json.dumps(
                        run_pipeline(
                            args,
                            address,
                            ingest,
                            download_settings(args),
                            embed_settings(args),
                            index_settings(args),
                            args.ground_truth,
                        ),
                        indent=2,
                    )
                )
            elif args.command == "extract":
                print(json.dumps(run_ingest(args, address, ingest_settings(args, inputs=args.inputs)), indent=2))
            elif args.command == "ingest":
                settings = ingest_settings(
                    args,
                    crawl=args.crawl,
                    source=args.source,
                    segments=args.segments,
                    segment_list=args.segment_list,
                    sample_seed=args.sample_seed,
                    files_per_segment=args.files_per_segment,
                    kind=args.kind,
                )
                print(json.dumps(run_ingest(args, address, settings), indent=2))
            elif args.command == "download":
                print(json.dumps(run_download(args, address, args.pairs, download_settings(args)), indent=2))
            elif args.command == "embed":
                print(json.dumps(run_embed(args, address, args.images, embed_settings(args)), indent=2))
            elif args.command == "index":
                print(json.dumps(run_index(args, address, args.embeddings, index_settings(args)), indent=2))
            elif args.command == "report":
                report = run_report(args, address, args.out, report_settings(args), args.ground_truth)
                print(json.dumps(report, indent=2))
                print(f"report: {report['report']}")
    except KeyboardInterrupt:
        raise SystemExit("clipcrawl: interrupted") from None
    except SystemExit:
        raise
    except Exception as exc:  # one line for the user; the flow logs hold the traceback
        raise SystemExit(f"clipcrawl {args.command}: {type(exc).__name__}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
