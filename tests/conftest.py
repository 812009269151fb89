"""Shared test harness: one Prefect API and one multi-process Dask cluster per session
(a flow with a fresh cluster and API costs ~15 s; tests share them)."""

from __future__ import annotations

import pytest


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
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def dask_address(prefect_api, s3_endpoint):
    """A real cluster: two CPU worker processes and one worker offering GPU=1."""
    from flows.runner import local_cluster

    cluster = local_cluster(cpu_workers=2, gpu_workers=1, memory_limit="4GiB")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small synthetic crawl: 2 segments x 2 files, every URL/alt case."""
    from tasks.world import WorldSpec, generate_world

    return generate_world(tmp_path_factory.mktemp("world"), WorldSpec(seed=7, segments=2, files_per_segment=2))
