"""The clipcrawl command: flags and config files reach the flow; failures exit with one line."""

import argparse
import functools
import json
import subprocess
import sys
import typing
import urllib.request
from importlib.metadata import version

import pyarrow.parquet as pq
import pytest
import yaml

from clipcrawl.flows.cli import main
from clipcrawl.tasks.core.config import DownloadSettings, Gate


def test_extract_command_writes_pairs(dask_address, small_world, tmp_path, capsys):
    wat = small_world.wat_uris()[0]
    main(["extract", wat, "--out", str(tmp_path), "--min-alt-length", "12", "--dask-address", dask_address])
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 1 and summary["kept"] > 0
    table = pq.read_table(next((tmp_path / "pairs").glob("*.parquet")))
    assert table.num_rows == summary["kept"]
    assert min(len(t) for t in table.column("caption").to_pylist()) >= 12


def test_ingest_command_reads_a_config_file(dask_address, small_world, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("extract:\n  detect_language: false\ningest:\n  files_per_segment: 1\n")
    main(
        [
            "ingest",
            "--crawl",
            small_world.crawl_id,
            "--source",
            str(small_world.root),
            "--segments",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(config),
            "--dask-address",
            dask_address,
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 1
    table = pq.read_table(next((tmp_path / "out" / "pairs").glob("*.parquet")))
    assert set(table.column("language").to_pylist()) == {None}


def test_failure_exits_nonzero_with_one_line_naming_the_file(dask_address, tmp_path):
    missing = str(tmp_path / "nowhere.warc.wat.gz")
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", missing, "--out", str(tmp_path / "out"), "--dask-address", dask_address])
    message = str(exit_info.value.code)
    assert message.startswith("clipcrawl: ingest_crawl Failed") and "nowhere.warc.wat.gz" in message
    assert "\n" not in message


def test_unknown_crawl_exits_with_the_reason(dask_address, small_world, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "ingest",
                "--crawl",
                "CC-MAIN-1999-01",
                "--source",
                str(small_world.root),
                "--out",
                str(tmp_path),
                "--dask-address",
                dask_address,
            ]
        )
    assert "CC-MAIN-1999-01" in str(exit_info.value.code)


def test_embed_command_takes_model_and_filter_flags(dask_address, tmp_path, capsys):
    from clipcrawl.tasks.world import tiny_clip
    from tests.test_embed import make_shard

    make_shard(str(tmp_path), 12)
    main(
        [
            "embed",
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path),
            "--checkpoint",
            str(tiny_clip.TINY_CLIP_DIR),
            "--similarity-threshold",
            "-1",
            "--batch-size",
            "5",
            "--dask-address",
            dask_address,
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == summary["kept"] == 11  # one of the 12 failed to download; -1 keeps every pair
    stats = json.loads((tmp_path / "dataset" / "part-00000_stats.json").read_text())
    assert stats["model"] == str(tiny_clip.TINY_CLIP_DIR) and stats["similarity_threshold"] == -1


def test_embed_without_shards_exits_with_the_reason(dask_address, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "--images", str(tmp_path / "empty"), "--out", str(tmp_path), "--dask-address", dask_address])
    message = str(exit_info.value.code)
    assert message.startswith("clipcrawl: embed_and_filter Failed") and "no published image shards" in message


def test_index_then_search_commands(dask_address, pipeline, tmp_path, capsys):
    from tests.test_index_flow import copy_run

    out = copy_run(pipeline, tmp_path)
    main(
        [
            "index",
            "--embeddings",
            str(out / "embeddings"),
            "--out",
            str(out),
            "--near-duplicate-threshold",
            "0.99",
            "--dask-address",
            dask_address,
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["image"]["index_key"] == "Flat" and summary["near_duplicates"]["threshold"] == 0.99
    main(["search", "--index", str(out / "index"), "a photo of red circles", "-k", "3", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3 and {"key", "url", "caption", "similarity"} <= set(results[0])
    assert results[0]["similarity"] >= results[1]["similarity"] >= results[2]["similarity"]
    main(["search", "--index", str(out / "index"), "a photo of red circles", "-k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and results[0]["url"] in lines[0]


def test_search_needs_one_query(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(tmp_path)])
    assert "give a text query or --image PATH" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(tmp_path / "missing"), "red circles"])
    assert str(exit_info.value.code).startswith("clipcrawl search:") and "missing" in str(exit_info.value.code)


# ---------------------------------------------------------------- options generated from the settings models

BASE = {  # the least each command needs besides settings
    "run": ["run", "--out", "o"],
    "extract": ["extract", "in.warc.wat.gz", "--out", "o"],
    "ingest": ["ingest", "--out", "o"],
    "download": ["download", "--pairs", "p", "--out", "o"],
    "embed": ["embed", "--images", "i", "--out", "o"],
    "index": ["index", "--embeddings", "e", "--out", "o"],
    "report": ["report", "o"],
}
CRAWL = ["--crawl", "CC-MAIN-2024-10"]


def every_leaf():
    from clipcrawl.flows.options import STAGES, leaves

    return [leaf for stage in STAGES for leaf in leaves(stage)]


def base(command, leaf=None):
    """The command's required arguments; a crawl where it needs one and the leaf does not set it."""
    argv = list(BASE[command])
    if command in ("run", "ingest") and not (leaf and leaf.stage == "ingest" and leaf.path[0] in ("crawl", "inputs")):
        argv += CRAWL
    return argv


def other_value(leaf):
    """A valid value of the setting that is not its default."""
    from clipcrawl.flows.options import _split_optional

    annotation, optional = _split_optional(leaf.field.annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    default = leaf.default
    if leaf.field.examples:  # a setting whose values have a shape of their own
        return leaf.field.examples[0]
    if optional and default is not None:
        return None
    if annotation is bool:
        return not default
    if origin is typing.Literal:
        return next(choice for choice in args if choice != default)
    if origin is dict:
        return {"host.test:443": "127.0.0.1:8443"}
    if origin in (list, tuple):
        items = [0.2, 0.8] if args[0] is float else ["one", "two"]
        return tuple(items) if origin is tuple else items
    if annotation is int:
        return 2 if default is None else default + 1
    if annotation is float:
        return 0.5 if default is None else default / 2
    return "other" if default is None else f"{default}-other"


def flag_argv(leaf, value, namespaced):
    if isinstance(value, bool):
        return [leaf.flag(namespaced, negative=not value)]
    if value is None:
        return [leaf.flag(namespaced), "none"]
    if isinstance(value, dict):
        return [leaf.flag(namespaced), *(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, (list, tuple)):
        return [leaf.flag(namespaced), *map(str, value)]
    return [leaf.flag(namespaced), str(value)]


def env_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (bool, list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def reach(node, path):
    for name in path:
        node = getattr(node, name)
    return node


def built(settings, leaf):
    if leaf.stage == "consent":  # one section, given alike to each stage that honours it
        stages = (settings["ingest"].extract if "ingest" in settings else None, settings.get("download"))
        found = [reach(stage.consent, leaf.path) for stage in stages if stage is not None]
        assert found and all(value == found[0] for value in found), (leaf.dest, found)
        return found[0]
    return reach(settings["ingest"].extract if leaf.stage == "extract" else settings[leaf.stage], leaf.path)


def test_consent_is_one_section_for_extraction_and_download(tmp_path):
    from clipcrawl.flows.cli import parse
    from clipcrawl.flows.pipeline import pipeline
    from clipcrawl.tasks.core.config import ConsentSettings, DownloadSettings

    settings = parse(base("run") + ["--no-respect-robots", "--user-agent-token", "mybot"]).settings
    consent = settings["download"].consent
    assert (
        settings["ingest"].extract.consent == consent == ConsentSettings(respect_robots=False, user_agent_token="mybot")
    )
    config = tmp_path / "clipcrawl.yaml"
    config.write_text(yaml.safe_dump({"download": {"consent": {"respect_robots": False}}}))
    with pytest.raises(SystemExit, match="download.consent: give consent settings in the consent section"):
        parse(base("run") + ["--config", str(config)])
    # the flow's parameters (a deployment's, the Prefect UI's form) hold it twice: they must be alike
    with pytest.raises(ValueError, match="ingest.extract.consent and download.consent differ"):
        pipeline.fn(out=str(tmp_path), download=DownloadSettings(consent=consent))


@functools.cache
def flags_of(command) -> set[str]:
    from clipcrawl.flows.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {option for action in sub._actions for option in action.option_strings}


def test_every_setting_is_a_flag_in_run_and_in_its_stages_command():
    from clipcrawl.flows.cli import STAGES_OF, parse

    run_flags, namespaced = flags_of("run"), ("download", "embed", "index", "report")
    for leaf in every_leaf():
        value = other_value(leaf)
        assert leaf.flag(leaf.stage in namespaced) in run_flags, leaf
        commands = [("run", leaf.stage in namespaced)] + [
            (command, False)
            for command, stages in STAGES_OF.items()
            if command in BASE and command != "run" and leaf.stage in stages and leaf.flag(False) in flags_of(command)
        ]
        assert len(commands) > 1 or leaf.path[0] == "inputs", f"{leaf.dest}: only `run` has a flag for it"
        for command, spaced in commands:
            args = parse(base(command, leaf) + flag_argv(leaf, value, spaced))
            assert built(args.settings, leaf) == value, (command, leaf.dest)


def test_every_setting_is_an_environment_variable(monkeypatch):
    from clipcrawl.flows.cli import parse

    for leaf in every_leaf():
        value = other_value(leaf)
        with monkeypatch.context() as env:
            env.setenv(leaf.env, env_text(value))
            assert built(parse(base("run", leaf)).settings, leaf) == value, leaf.env


def test_every_setting_is_a_config_file_key(tmp_path):
    from clipcrawl.flows.cli import parse

    config = tmp_path / "clipcrawl.yaml"
    for leaf in every_leaf():
        value = other_value(leaf)
        section = node = {}
        for name in leaf.path[:-1]:
            node = node.setdefault(name, {})
        node[leaf.path[-1]] = list(value) if isinstance(value, tuple) else value
        config.write_text(yaml.safe_dump({leaf.stage: section}))
        assert built(parse(base("run", leaf) + ["--config", str(config)]).settings, leaf) == value, leaf.dest


def test_a_toml_config_file_sets_nested_settings(tmp_path):
    from clipcrawl.flows.cli import parse

    config = tmp_path / "clipcrawl.toml"
    config.write_text(
        '[extract]\nmin_alt_length = 9\n[download]\nresolve = {"a.test:80" = "127.0.0.1:8080"}\n'
        '[report.gates.max_clip_pass_rate]\naction = "fail"\n'
    )
    settings = parse(base("run") + ["--config", str(config)]).settings
    assert settings["ingest"].extract.min_alt_length == 9
    assert settings["download"].resolve == {"a.test:80": "127.0.0.1:8080"}
    assert settings["report"].gates.max_clip_pass_rate == Gate(threshold=0.95, action="fail")


def test_a_flag_beats_the_environment_which_beats_the_config_file(tmp_path, monkeypatch):
    from clipcrawl.flows.cli import parse

    config = tmp_path / "clipcrawl.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "download": {"shard_size": 11, "per_host": 3},
                "report": {"gates": {"min_clip_pass_rate": {"action": "warn"}}},
            }
        )
    )
    argv = BASE["download"] + ["--config", str(config)]
    monkeypatch.setenv("CLIPCRAWL_DOWNLOAD__SHARD_SIZE", "12")
    settings = parse([*argv, "--shard-size", "13"]).settings["download"]
    assert (settings.shard_size, settings.per_host, settings.concurrency) == (13, 3, 256)
    assert parse(argv).settings["download"].shard_size == 12
    monkeypatch.delenv("CLIPCRAWL_DOWNLOAD__SHARD_SIZE")
    assert parse(argv).settings["download"].shard_size == 11
    assert parse(BASE["download"]).settings["download"].shard_size == DownloadSettings().shard_size
    # nested settings merge field by field across the sources
    monkeypatch.setenv("CLIPCRAWL_REPORT__GATES__MIN_CLIP_PASS_RATE__THRESHOLD", "0.2")
    gates = parse(["report", "o", "--config", str(config)]).settings["report"].gates
    assert gates.min_clip_pass_rate == Gate(threshold=0.2, action="warn")
    gates = parse(["report", "o", "--config", str(config), "--gates.min-clip-pass-rate.threshold", "none"])
    assert gates.settings["report"].gates.min_clip_pass_rate == Gate(threshold=None, action="warn")


def test_bad_settings_exit_with_one_line_naming_the_setting(tmp_path, monkeypatch):
    from clipcrawl.flows.cli import parse

    monkeypatch.setenv("CLIPCRAWL_DOWNLOAD__SHARD_SIZE", "0")
    with pytest.raises(SystemExit) as exit_info:
        parse(BASE["download"])
    message = str(exit_info.value.code)
    assert message.startswith("clipcrawl download: download.shard_size: ") and "\n" not in message
    monkeypatch.delenv("CLIPCRAWL_DOWNLOAD__SHARD_SIZE")
    config = tmp_path / "clipcrawl.yaml"
    config.write_text("downlaod:\n  shard_size: 5\n")
    with pytest.raises(SystemExit) as exit_info:
        parse(BASE["embed"] + ["--config", str(config)])
    assert "unknown section(s) downlaod" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        parse(BASE["run"])
    assert "give --crawl ID or --inputs URI" in str(exit_info.value.code)


def test_version(capsys):
    from clipcrawl.flows.cli import parse

    with pytest.raises(SystemExit) as exit_info:
        parse(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"clipcrawl {version('clipcrawl')}"


def test_commands_in_pipeline_order_each_option_with_help_each_command_with_an_example():
    from clipcrawl.flows.cli import parser

    subparsers = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == [
        "demo", "run", "extract", "ingest", "download", "embed", "index", "search", "serve", "report", "takedown"
    ]  # fmt: skip
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"clipcrawl {name} {action.option_strings or action.dest}"
        text = sub.format_help()
        assert f"examples:\n  clipcrawl {name} " in text, name


def test_help_imports_no_heavy_module():
    code = "import sys, clipcrawl.flows.cli as cli; cli.parser().format_help(); print(sorted(m for m in ('torch', 'prefect', 'faiss', 'open_clip', 'dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_command_starts_its_temporary_api_before_importing_prefect_and_adopts_it(monkeypatch):
    """start_early: spawned before this process imports Prefect (unless the environment names an API); prefect_api
    uses that server, without flow run heartbeats (their thread holds each flow run's end up to a second), and stops
    it with the block; when a profile (not the environment) names an API, the early server is stopped unused."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from clipcrawl.flows.api import prefect_api, start_early

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert start_early() is None
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        early = start_early()
        assert early is not None and early.process.is_alive()
        with prefect_api(early=early) as api_ready:
            assert PREFECT_API_URL.value() == early.url
            assert get_current_settings().flows.heartbeat_frequency is None
            api_ready()
            with urllib.request.urlopen(f"{early.url}/health", timeout=5) as response:
                assert response.status == 200
        assert not early.process.is_alive()
        assert get_current_settings().flows.heartbeat_frequency is not None
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # as a profile would name it
        early = start_early()
        with prefect_api(early=early) as api_ready:
            api_ready()
            assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"
            assert not early.process.is_alive()


def test_without_a_configured_api_a_command_starts_a_temporary_one_and_stops_it():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from clipcrawl.flows.api import prefect_api

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert PREFECT_API_URL.value() is None
        with prefect_api() as api_ready:
            url = PREFECT_API_URL.value()  # the temporary server's, for the block
            assert url and url.startswith("http://127.0.0.1:")
            api_ready()
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                assert response.status == 200
        assert PREFECT_API_URL.value() is None
    with pytest.raises(OSError):  # stopped with the block
        urllib.request.urlopen(f"{url}/health", timeout=2)
