"""s3:// inputs, outputs and Prefect result storage, against a real S3 API server on 127.0.0.1."""

import boto3
import s3fs

from tests.helpers import run, task_states
from tasks.groundtruth import compare_pairs


def test_ingest_reads_and_writes_s3_and_caches_there(dask_address, s3_endpoint, small_world):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="crawl")
    s3.create_bucket(Bucket="out")
    inputs = []
    for path in small_world.wat_uris():
        key = path.split(str(small_world.root) + "/", 1)[1]
        s3.upload_file(path, "crawl", key)
        inputs.append(f"s3://crawl/{key}")

    state = run(dask_address, "s3://out/run", inputs=inputs)
    assert state.is_completed(), state.message
    report = compare_pairs(small_world, "s3://out/run")
    assert report["equal"], report

    fs = s3fs.S3FileSystem()
    assert fs.exists("out/run/pairs/_summary.json")
    assert fs.ls("out/run/_results"), "the task cache lives in the shared result storage on s3"
    again = run(dask_address, "s3://out/run", inputs=inputs)
    assert again.is_completed(), again.message
    assert {s for name, s in task_states(again).items() if name.startswith("extract-")} == {"Cached"}
