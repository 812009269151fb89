"""Security: downloads are guarded by default, an open Prefect server needs its auth string, and nothing in
the project executes what the crawl sends (no eval, no pickle of crawl bytes, no regex built from it).

Secrets in logs and artifacts: tests/test_s3.py (S3 keys) and tests/test_integration.py (the auth string)
scan what their runs left behind."""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.status import DownloadStatus as S
from clipcrawl.tasks.download.shards import ShardSpec
from clipcrawl.tasks.download.stage import download_shard
from clipcrawl.tasks.world import ImageServer, WorldSpec, generate_world
from clipcrawl.tasks.world.behaviours import RESERVED

ROOT = Path(__file__).resolve().parent.parent
CODE = sorted((ROOT / "flows").rglob("*.py")) + sorted((ROOT / "tasks").rglob("*.py"))

# Calls that run code or rebuild objects from bytes: none may appear in the project's code.
FORBIDDEN = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "pickle.load",
    "pickle.loads",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "os.system",
    "os.popen",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "dill.loads",
    "cloudpickle.loads",
    "jsonpickle.decode",
}
FORBIDDEN_MODULES = {"subprocess", "pickle", "marshal", "shelve", "dill", "cloudpickle"}
# A regex built from data (a robots.txt pattern, a page) can backtrack for hours: patterns are literals.
REGEX_CALLS = {"re.compile", "re.match", "re.search", "re.fullmatch", "re.findall", "re.finditer", "re.sub", "re.split"}


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def literal_pattern(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        return True
    return isinstance(node, ast.BinOp) and literal_pattern(node.left) and literal_pattern(node.right)


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{where} imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
        if isinstance(node, ast.Call) and (name := dotted(node.func)):
            if name in FORBIDDEN or name.startswith(("os.exec", "os.spawn")):
                found.append(f"{where} calls {name}")
            if name in REGEX_CALLS and not (node.args and literal_pattern(node.args[0])):
                found.append(f"{where} builds a regex from data ({name})")
            if name == "torch.load" and not any(
                k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords
            ):
                found.append(f"{where} calls torch.load without weights_only=True")
    return found


def test_the_scan_finds_what_it_forbids(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pickle, re\n\ndef f(data, p):\n    eval(data)\n    re.match(p, data)\n"
        "    re.match(r'a+', data)\n    return pickle.loads(data)\n"
    )
    assert [f.split(" ", 1)[1] for f in findings(sample)] == [
        "imports pickle",
        "calls eval",
        "builds a regex from data (re.match)",
        "calls pickle.loads",
    ]


def test_nothing_in_the_project_executes_crawl_content():
    assert len(CODE) > 30
    assert [f for path in CODE for f in findings(path)] == []


def test_download_defaults_guard_addresses_and_honour_optouts():
    default = DownloadSettings()
    assert default.allow_addresses == [] and default.consent.respect_robots and default.consent.respect_optouts
    assert default.max_image_pixels <= 89_478_485 and default.max_bytes <= 20_000_000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(
        tmp_path_factory.mktemp("world"),
        WorldSpec(
            seed=11, segments=1, files_per_segment=1, pages_per_file=8, images=2 * len(RESERVED) + 20, warc=False
        ),
    )


def shard_of(tmp_path: Path, urls: list[str]) -> ShardSpec:
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": [f"a caption for {u}" for u in urls]}), path)
    return ShardSpec(0, ((str(path), 0, len(urls)),))


def statuses(out: Path) -> dict[str, tuple[str, str]]:
    table = pq.read_table(out / "images" / "00000.parquet", columns=["url", "status", "error_message"]).to_pylist()
    return {r["url"]: (r["status"], r["error_message"]) for r in table}


def test_without_an_allowlist_no_request_reaches_a_private_address(world, tmp_path):
    expected = world.expected_downloads()
    urls = sorted(u for u, status in expected.items() if status == S.SUCCESS)[:20]
    with ImageServer(world.root) as server:
        # the world's hosts resolve to 127.0.0.1: with the default (empty) allowlist every one is refused
        settings = server.download_settings(allow_addresses=DownloadSettings().allow_addresses, image_threads=1)
        download_shard(shard_of(tmp_path, urls), str(tmp_path / "out"), settings)
        hits = sum(server.hits.values())
    got = statuses(tmp_path / "out")
    assert {status for status, _ in got.values()} == {S.BLOCKED_ADDRESS}
    assert all("127.0.0.1 (loopback)" in message for _, message in got.values())
    assert hits == 0


def test_opt_outs_are_honoured_before_the_image_is_requested(world, tmp_path):
    settings_default = DownloadSettings()
    expected = world.expected_downloads()
    refused = {u: s for u, s in expected.items() if s in (S.ROBOTS_DISALLOWED, S.OPT_OUT_HEADER)}
    assert {S.ROBOTS_DISALLOWED, S.OPT_OUT_HEADER} <= set(refused.values())
    with ImageServer(world.root) as server:
        settings = server.download_settings(image_threads=1)
        assert (settings.consent.respect_robots, settings.consent.respect_optouts) == (
            settings_default.consent.respect_robots,
            settings_default.consent.respect_optouts,
        )
        download_shard(shard_of(tmp_path, sorted(refused)), str(tmp_path / "out"), settings)
        hits = dict(server.hits)
    got = statuses(tmp_path / "out")
    assert {u: s for u, (s, _) in got.items()} == refused
    disallowed = [u for u, s in refused.items() if s == S.ROBOTS_DISALLOWED]
    assert all(hits.get(u) for u, s in refused.items() if s == S.OPT_OUT_HEADER), "the header needs a request"
    assert not [u for u in disallowed if hits.get(u)], "robots.txt said no: the image is never requested"
    assert not list((tmp_path / "out" / "images").glob("*.jpg"))


def test_up_sh_refuses_to_open_the_server_beyond_localhost_without_an_auth_string(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_AUTH_STRING"}
    env |= {"CLIPCRAWL_HOST": "0.0.0.0", "CLIPCRAWL_LOCAL": str(tmp_path / "local")}
    done = subprocess.run(
        ["bash", "infra/local/up.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "set PREFECT_AUTH_STRING" in done.stderr
    assert not (tmp_path / "local").exists(), "nothing was started"
