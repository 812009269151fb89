"""Shared test harness: one Prefect API and one multi-process Dask cluster per session
(a flow with a fresh cluster and API costs ~15 s; tests share them)."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
# S3 credentials every flow of the session runs with (moto accepts any): distinctive, so that tests/test_s3.py
# can look for them in every log, artifact and output
S3_KEY_ID, S3_SECRET = "AKIACLIPCRAWL7Q2W9X4Z", "clipcrawl-test-secret-5d8f0b2e9a7c41f6"
# the tests start their own cluster and API: never those of a shell that ran `eval "$(infra/local/up.sh --env)"`
for _name in ("CLIPCRAWL_DASK_ADDRESS", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
    os.environ.pop(_name, None)


# Under pytest-xdist (`-n auto --dist loadfile` in pyproject.toml's pytest options) each module runs whole on one
# worker process, and each worker has session fixtures of its own. The modules that take minutes start first, so
# that no worker is left alone with one at the end; then those on the session's cluster, the next longest.
LONGEST_FIRST = ("tests/test_integration.py", "tests/test_faults.py", "tests/test_load.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # not an xdist worker: nothing to distribute
        return

    def module(item) -> str:
        return item.nodeid.split("::", 1)[0]

    # "dask_address" in fixturenames: requested directly or through another fixture (`pipeline`)
    on_cluster = {module(item) for item in items if "dask_address" in item.fixturenames}

    def rank(item) -> int:
        if module(item) in LONGEST_FIRST:
            return LONGEST_FIRST.index(module(item))
        return len(LONGEST_FIRST) + (module(item) not in on_cluster)

    items.sort(key=rank)  # stable: the order within each module is kept; xdist hands modules out in this order


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto in server mode) on 127.0.0.1, set in the environment before the
    Dask workers start so that they reach it too."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=S3_KEY_ID,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def dask_address(prefect_api, s3_endpoint):
    """A real cluster: two CPU worker processes and one worker offering GPU=1."""
    from clipcrawl.flows.runner import local_cluster

    cluster = local_cluster(cpu_workers=2, gpu_workers=1, memory_limit="4GiB")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small synthetic crawl: 2 segments x 2 files, every URL/alt case."""
    from clipcrawl.tasks.world import WorldSpec, generate_world

    return generate_world(tmp_path_factory.mktemp("world"), WorldSpec(seed=7, segments=2, files_per_segment=2))


@pytest.fixture(scope="session")
def pipeline(dask_address, small_world, tmp_path_factory):
    """ingest -> download -> embed of the small world on the session cluster, with the scheduler's record
    of every task: (OUT, the embed flow's state, task stream records, {worker: resources})."""
    import time

    from distributed import Client

    from clipcrawl.flows.download import download_images
    from clipcrawl.flows.runner import task_runner
    from clipcrawl.tasks.world import ImageServer
    from tests.helpers import embed, run

    out = tmp_path_factory.mktemp("pipeline")
    with Client(dask_address) as client:
        start = time.time()
        client.get_task_stream()  # installs the scheduler's task-stream plugin before the runs
        state = run(dask_address, out, crawl=small_world.crawl_id, source=str(small_world.root))
        assert state.is_completed(), state.message
        with ImageServer(small_world.root) as server:
            flow = download_images.with_options(task_runner=task_runner(dask_address))
            state = flow(
                pairs=str(out / "pairs"),
                out=str(out),
                settings=server.download_settings(shard_size=150),
                return_state=True,
            )
            assert state.is_completed(), state.message
        state = embed(dask_address, out, batch_size=64)
        assert state.is_completed(), state.message
        records = client.get_task_stream(start=start)
        workers = client.scheduler_info()["workers"]
    return out, state, records, {addr: w["resources"] for addr, w in workers.items()}


@pytest.fixture(scope="session")
def chromium():
    """A headless browser for the page tests; CI must have one (the pages are tested as people see them)."""
    path = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); CI must run the browser tests")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def model():
    """The synthetic world's tiny CLIP model, loaded once per module."""
    from clipcrawl.tasks.embed.clip_model import load_model
    from clipcrawl.tasks.world.tiny_clip import embed_settings

    return load_model(embed_settings())


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A small built index over two crawls (tests/test_search.py's build_index), once per module."""
    from tests.test_search import build_index

    return build_index(tmp_path_factory.mktemp("index"))
