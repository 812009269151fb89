"""The `clipcrawl` command: each subcommand runs its flow (visible in the Prefect UI when
PREFECT_API_URL points at a server) and exits non-zero with a one-line reason on failure.

Every field of the stage settings (clipcrawl.tasks.core.config) is a flag, an environment variable
CLIPCRAWL_<STAGE>__<FIELD> and a key of the config file's <stage>: section; a flag beats the
environment, which beats the config file, which beats the field's default. The options are generated
from the models (clipcrawl.flows.options), so a field's default and description are written once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from clipcrawl.flows import options

# The stages whose settings a command builds, in pipeline order.
STAGES_OF = {
    "demo": ("ingest", "extract", "report"),
    "run": tuple(options.STAGES),
    "extract": ("ingest", "extract", "consent"),
    "ingest": ("ingest", "extract", "consent"),
    "download": ("consent", "download"),
    "embed": ("embed",),
    "index": ("index",),
    "report": ("report",),
}
# Ingest fields that choose a crawl's files: `extract` takes explicit files instead.
CRAWL_SELECTION = ("crawl", "source", "kind", "segments", "segment_list", "sample_seed", "files_per_segment")


def _version() -> str:
    try:
        return version("clipcrawl")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _stage_command(sub, name: str, summary: str, examples: str, source: tuple[str, str], out_help: str):
    """A stage's command: its input folder, --out, the common options and every field of its settings."""
    flag, source_help = source
    p = _command(sub, name, summary, examples, usage=f"{flag} DIR --out OUT")
    p.add_argument(flag, required=True, metavar="DIR", help=source_help)
    _out(p, out_help)
    _common(p)
    options.add_options(p, name)
    return p


def _cidr(value: str) -> str:
    """serve's --allow-addresses: each a CIDR network, checked at start."""
    from clipcrawl.tasks.search.clip_back import cidr

    try:
        return cidr(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _command(
    sub, name: str, help: str, examples: str, settings: bool = True, usage: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with examples (and the settings rules, where it has settings);
    `usage` replaces argparse's, which lists every settings flag."""
    epilog = "examples:\n" + "\n".join("  " + line for line in examples.strip().splitlines())
    return sub.add_parser(
        name,
        help=help,
        usage=usage and f"clipcrawl {name} {usage} [options]",
        description=help[0].upper() + help[1:] + ".",
        epilog=epilog + ("\n\n" + options.EPILOG if settings else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dask-address",
        metavar="URI",
        help="an existing Dask scheduler (tcp://host:8786) instead of a local cluster. "
        "Default: $CLIPCRAWL_DASK_ADDRESS, else a local cluster for the run.",
    )
    p.add_argument(
        "--results", metavar="URI", help="Prefect result storage shared by all workers. Default: OUT/_results."
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or TOML file with a section per stage (ingest:, extract:, download:, embed:, index:, "
        "report:) holding fields of its settings.",
    )


def _out(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", required=True, metavar="OUT", help=f"the run's output location (local path or URI): {what}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="clipcrawl",
        description=__doc__.split("\n\n")[0],
        epilog="clipcrawl COMMAND --help shows a command's options and examples.\n\n" + options.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"clipcrawl {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "demo",
        "the whole pipeline on the synthetic crawl world, each stage checked against its ground truth",
        "clipcrawl demo --out ./clipcrawl-demo",
        settings=False,
    )
    p.add_argument("--out", default="clipcrawl-demo", metavar="OUT", help="output directory. Default: clipcrawl-demo.")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the synthetic world. Default: 0.")
    p.add_argument("--segments", type=int, default=2, metavar="N", help="segments in the synthetic crawl. Default: 2.")
    _common(p)

    p = _command(
        sub,
        "run",
        "the whole pipeline (flow `pipeline`): crawl -> pairs, images, embeddings, dataset, index, report",
        """
clipcrawl run --crawl CC-MAIN-2024-10 --segments 2 --out s3://bucket/cc-2024-10 --config run.yaml
clipcrawl run --inputs ./a.warc.wat.gz ./b.warc.wat.gz --out ./run --download.image-size 384 \\
    --embed.similarity-threshold 0.28 --report.gates.min-clip-pass-rate.threshold 0.1""",
        usage="(--crawl ID | --inputs URI [URI ...]) --out OUT",
    )
    _out(p, "pairs/, images/, embeddings/, dataset/, index/, report/")
    p.add_argument(
        "--ground-truth",
        metavar="MANIFEST",
        help="manifest pairs.parquet (url, text, matches) the report measures the CLIP filter against",
    )
    _common(p)
    options.add_options(p, "ingest")
    options.add_options(p, "extract")
    options.add_options(p, "consent")
    for stage in ("download", "embed", "index", "report"):
        options.add_options(p, stage, namespaced=True)

    p = _command(
        sub,
        "extract",
        "WAT or WARC files -> OUT/pairs/",
        "clipcrawl extract ./CC-MAIN-*.warc.wat.gz https://example.org/x.warc.gz --out ./run --min-alt-length 5",
        usage="INPUT [INPUT ...] --out OUT",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="WAT/WARC URIs: local path, file://, https://, s3://")
    _out(p, "pairs go to OUT/pairs/")
    _common(p)
    options.add_options(p, "ingest", exclude=(*CRAWL_SELECTION, "inputs"))
    options.add_options(p, "extract")
    options.add_options(p, "consent")

    p = _command(
        sub,
        "ingest",
        "a Common Crawl crawl's WAT (or WARC) files -> OUT/pairs/",
        """
clipcrawl ingest --crawl CC-MAIN-2024-10 --segments 2 --out s3://bucket/run
clipcrawl ingest --crawl CC-MAIN-2024-10 --source s3://commoncrawl --segments 4 --sample-seed 1 --out ./run""",
        usage="--crawl ID --out OUT",
    )
    _out(p, "pairs go to OUT/pairs/")
    _common(p)
    options.add_options(p, "ingest", exclude=("inputs",))
    options.add_options(p, "extract")
    options.add_options(p, "consent")

    download = _stage_command(
        sub,
        "download",
        "OUT/pairs/ -> OUT/images/ shards (webdataset, files or parquet: --output-format)",
        """
clipcrawl download --pairs ./run/pairs --out ./run --image-size 384 --resize-mode center_crop
clipcrawl download --pairs ./laion400m-meta --out ./laion --save-additional-columns NSFW similarity
clipcrawl download --pairs urls.tsv.gz --out ./cc3m --url-col url --caption-col caption
clipcrawl download --pairs ./run/pairs --out ./run --output-format parquet""",
        (
            "--pairs",
            "pair parquet files, or img2dataset's inputs (txt, csv, tsv, tsv.gz, json, jsonl, parquet): "
            "one file or a folder of them, local or remote",
        ),
        "shards go to OUT/images/",
    )
    options.add_options(download, "consent")
    _stage_command(
        sub,
        "embed",
        "OUT/images/ shards -> OUT/embeddings/ and the filtered OUT/dataset/",
        """
clipcrawl embed --images ./run/images --out ./run --model ViT-L-14 --pretrained openai --batch-size 128
clipcrawl embed --images ./run/images --out ./run --checkpoint ./my-clip --similarity-threshold 0.28""",
        ("--images", "directory of shards written by `clipcrawl download` or img2dataset (webdataset, files, parquet)"),
        "OUT/embeddings/ and OUT/dataset/",
    )
    p = _stage_command(
        sub,
        "index",
        "OUT/embeddings/ -> OUT/index/: image and text kNN indices, near-duplicates",
        "clipcrawl index --embeddings ./run/embeddings --out ./run --max-index-memory-gb 4 --drop-near-duplicates",
        ("--embeddings", "embeddings folder written by `clipcrawl embed`"),
        "the index goes to OUT/index/ (added to when it exists)",
    )
    p.add_argument("--dataset", metavar="DIR", help="dataset folder listing the kept samples. Default: OUT/dataset.")
    p.add_argument("--rebuild", action="store_true", help="build from scratch instead of adding to OUT/index/")

    p = _command(
        sub,
        "search",
        "query the index from the command line (in-process: no flow, no cluster)",
        """
clipcrawl search --index ./run/index "a photo of pink rings" -k 5
clipcrawl search --index ./run/index --image some.jpg --json""",
        settings=False,
    )
    p.add_argument("--index", required=True, metavar="DIR", help="the index folder (OUT/index)")
    p.add_argument("text", nargs="?", help="text query")
    p.add_argument("--image", metavar="PATH", help="image query: a file path")
    p.add_argument("-k", type=int, default=10, help="results. Default: 10.")
    p.add_argument(
        "--modality",
        choices=["image", "text"],
        default="image",
        help="search the image index or the caption index. Default: image.",
    )
    p.add_argument("--deduplicate", action="store_true", help="one result per near-duplicate group")
    p.add_argument("--json", action="store_true", help="machine output: a JSON list")

    p = _command(
        sub,
        "serve",
        "an HTTP search service and web page over the index (in-process: no flow, no cluster)",
        "clipcrawl serve --index ./run/index --host 0.0.0.0 --port 1234",
        settings=False,
    )
    p.add_argument("--index", required=True, metavar="DIR", help="the index folder (OUT/index)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on. Default: 127.0.0.1.")
    p.add_argument("--port", type=int, default=1234, help="port to listen on. Default: 1234.")
    p.add_argument(
        "--index-name",
        metavar="NAME",
        help="the indice_name of clip-retrieval's API (/indices-list, /knn-service). Default: the index folder's name.",
    )
    p.add_argument(
        "--allow-addresses",
        nargs="+",
        type=_cidr,
        default=[],
        metavar="CIDR",
        help="private networks that image_url queries may reach (as download's); by default only public addresses.",
    )

    p = _command(
        sub,
        "report",
        "OUT's outputs -> OUT/report/index.html and stats.json; quality gates",
        """
clipcrawl report ./run
clipcrawl report ./run --gates.max-clip-pass-rate.threshold 0.9 --gates.max-clip-pass-rate.action fail \\
    --gates.max-failed-file-share.threshold none""",
        usage="OUT",
    )
    p.add_argument("out", metavar="OUT", help="the output location of a run")
    p.add_argument(
        "--ground-truth",
        metavar="MANIFEST",
        help="manifest pairs.parquet (url, text, matches) to measure the CLIP filter against "
        "(the synthetic world's manifest/pairs.parquet)",
    )
    _common(p)
    options.add_options(p, "report")

    p = _command(
        sub,
        "takedown",
        "remove samples (by URL or sample id) from every output under OUT, logged in OUT/takedown/log.jsonl "
        "(in the flow's process: no cluster)",
        """
clipcrawl takedown --out ./run --url https://example.org/a.jpg --reason "rights holder request 2024-117"
clipcrawl takedown --out s3://bucket/run --sample-id 9368095590672117215 --sample-id 000000042
clipcrawl takedown --out ./run --list requests.csv --reason 'batch of 2024-06'""",
        settings=False,
        usage="--out OUT (--url URL | --sample-id ID | --list FILE)",
    )
    _out(p, "every output under it loses the samples")
    p.add_argument("--url", action="append", default=[], metavar="URL", help="an image URL to take down (repeatable)")
    p.add_argument(
        "--sample-id",
        action="append",
        default=[],
        metavar="ID",
        help="a SAMPLE_ID / uid (decimal) or a key of the run to take down (repeatable)",
    )
    p.add_argument(
        "--list",
        metavar="FILE",
        help="URLs and ids, one a line (a line starting with http:// or https:// is a URL), or a .parquet/.csv "
        "with a url and/or SAMPLE_ID (sample_id, uid, key) column",
    )
    p.add_argument("--reason", default="", help="why, recorded in the log")
    p.add_argument(
        "--results", metavar="URI", help="Prefect result storage of the runs over OUT. Default: OUT/_results."
    )
    return ap


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `settings`: the stage settings models built from flags, environment and
    config file (ingest's holds extract's)."""
    args = parser().parse_args(argv)
    flags = options.given(args)
    if args.command == "extract":
        flags.setdefault("ingest", {})["inputs"] = args.inputs
    try:
        args.settings = options.build(STAGES_OF.get(args.command, ()), flags, getattr(args, "config", None))
    except options.SettingsError as exc:
        raise SystemExit(f"clipcrawl {args.command}: {exc}") from None
    ingest = args.settings.get("ingest")
    if args.command == "run" and bool(ingest.crawl) == bool(ingest.inputs):
        raise SystemExit("clipcrawl run: give --crawl ID or --inputs URI... (one of them)")
    if args.command == "takedown" and not (args.url or args.sample_id or args.list):
        raise SystemExit("clipcrawl takedown: give --url URL, --sample-id ID or --list FILE (at least one)")
    if args.command == "ingest" and not ingest.crawl:
        raise SystemExit("clipcrawl ingest: give --crawl ID (e.g. CC-MAIN-2024-10)")
    return args


def run_flow(flow, address: str, **parameters):
    """Run a flow on the cluster; a failed run exits with its one-line reason."""
    from clipcrawl.flows.runner import task_runner

    state = flow.with_options(task_runner=task_runner(address))(**parameters, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"clipcrawl: {flow.name} {state.name}: {state.message}")
    return state.result()


def run_pipeline(args: argparse.Namespace, address: str, settings: dict, ground_truth: str | None) -> dict:
    from clipcrawl.flows.pipeline import pipeline

    return run_flow(
        pipeline,
        address,
        out=args.out,
        **settings,
        ground_truth=ground_truth,
        results=args.results,
        dask_address=address,
    )


def search(args: argparse.Namespace) -> None:
    """A query from the command line: no flow, no cluster (a flow would add seconds to every query)."""
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
    from clipcrawl.tasks.core.config import IndexSettings
    from clipcrawl.tasks.core.layout import index_dir
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
    ingest = args.settings["ingest"].model_copy(update={"crawl": world.crawl_id, "source": str(world.root)})
    with ImageServer(world.root) as server:
        settings = {
            "ingest": ingest,
            "download": server.download_settings(),
            "embed": tiny_clip.embed_settings(),
            "index": IndexSettings(near_duplicate_threshold=tiny_clip.NEAR_DUPLICATE_THRESHOLD),
            "report": args.settings["report"],
        }
        result = run_pipeline(args, address, settings, os.path.join(world.root, "manifest", "pairs.parquet"))
    checks = {
        "pairs": compare_pairs(world, args.out),
        "images": compare_downloads(world, args.out),
        "dataset": compare_embeddings(world, args.out),
    }
    searcher = Searcher(index_dir(args.out))
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
    # chance: ~5% of the results; the tiny model ranks a concept's images first (docs/indexing.md, Search)
    if not search["hits"][:1] == [True] or search["precision"] < 0.8:
        raise SystemExit(
            f"clipcrawl: demo: {search['of_concept']} of the first {search['k']} results for "
            f"{search['query']!r} show it (want the first and >= 80%)"
        )
    print(f"outputs in {os.path.abspath(args.out)}: pairs/, images/, embeddings/, dataset/, index/, report/")
    print(
        f"search them: clipcrawl search --index {index_dir(args.out)} "
        f'"{search["query"]}"  (or clipcrawl serve --index ... for the web page)'
    )
    print(f"report: {result['report']}")


# command: (module in clipcrawl.flows, its flow, the stage whose settings it takes, the flow's other
# parameters that come from the command line)
FLOWS = {
    "extract": ("ingest", "ingest_crawl", "ingest", ("results",)),
    "ingest": ("ingest", "ingest_crawl", "ingest", ("results",)),
    "download": ("download", "download_images", "download", ("pairs", "results")),
    "embed": ("embed", "embed_and_filter", "embed", ("images", "results")),
    "index": ("index", "build_index", "index", ("embeddings", "dataset", "rebuild")),
    "report": ("report", "build_report", "report", ("ground_truth",)),
}


def gpu_workers(args: argparse.Namespace) -> int:
    """GPU-tagged workers of a local cluster for the command: none for the stages that embed nothing."""
    if args.command in ("run", "demo", "embed"):
        return 1
    return int(args.command == "index" and args.settings["index"].device == "cuda")


def takedown(args: argparse.Namespace) -> None:
    """The takedown flow, in this process (no cluster: its work is small, docs/takedown.md)."""
    from clipcrawl.flows.takedown import takedown as flow

    state = flow(
        out=args.out,
        urls=args.url,
        sample_ids=args.sample_id,
        list_uri=args.list,
        reason=args.reason,
        results=args.results,
        return_state=True,
    )
    if not state.is_completed():
        raise SystemExit(f"clipcrawl: takedown {state.name}: {state.message}")
    print(json.dumps(state.result(), indent=2))


def command_flow(args: argparse.Namespace):
    """The flow a one-stage command runs (None for demo and run), imported."""
    if args.command not in FLOWS:
        return None
    module, name, _, _ = FLOWS[args.command]
    return getattr(importlib.import_module(f"clipcrawl.flows.{module}"), name)


def run_command(args: argparse.Namespace, address: str, flow) -> None:
    """The flow of a command that runs one (`flow`, from command_flow), its summary printed as JSON."""
    if args.command == "demo":
        return demo(args, address)
    if args.command == "run":
        result = run_pipeline(args, address, args.settings, args.ground_truth)
    else:
        _, _, stage, parameters = FLOWS[args.command]
        result = run_flow(
            flow, address, out=args.out, settings=args.settings[stage], **{p: getattr(args, p) for p in parameters}
        )
    print(json.dumps(result, indent=2))
    if args.command == "report":
        print(f"report: {result['report']}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from crawl machines
    # the temporary API's first start on a machine creates its database, which can outlast Prefect's 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    try:
        if args.command == "search":
            return search(args)
        if args.command == "serve":
            from clipcrawl.tasks.search.serve import serve

            return serve(args.index, args.host, args.port, args.index_name, args.allow_addresses)
        from clipcrawl.flows.api import prefect_api, start_early

        # the Prefect API, this process's imports and the Dask cluster start side by side: the API first, since it
        # takes longest, then the flow's modules and the cluster while it boots
        with prefect_api(early=start_early()) as api_ready:
            if args.command == "takedown":
                api_ready()
                return takedown(args)
            from clipcrawl.flows.runner import cluster

            flow = command_flow(args)
            with cluster(args.dask_address, gpu_workers=gpu_workers(args)) as address:
                api_ready()
                run_command(args, address, flow)
    except KeyboardInterrupt:
        raise SystemExit("clipcrawl: interrupted") from None
    except SystemExit:
        raise
    except Exception as exc:  # one line for the user; the flow logs hold the traceback
        raise SystemExit(f"clipcrawl {args.command}: {type(exc).__name__}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
