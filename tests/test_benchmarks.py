"""The benchmark scripts that need hardware CI lacks still run: every code path of the GPU embedding
benchmark, on the CPU with the world's tiny model and one small shard (figures meaningless)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_embedding_benchmark_runs_every_part(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "benchmarks" / "bench_embed_gpu.py"),
        "--allow-cpu",
        "--checkpoint",
        str(ROOT / "tasks" / "world" / "clip"),
        "--shards",
        "1",
        "--shard-size",
        "40",
        "--batch-size",
        "16",
        "--parts-samples",
        "40",
        "--parts-repeat",
        "1",
        "--loader-threads",
        "2",
        "--work",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "embed_gpu" and figures["model"].endswith("clip")
    for part in ("decode_1", "decode_preprocess_n", "model_both", "model_text_trimmed", "encode_images_api"):
        assert figures["parts_images_per_s"][part] > 0, part
    assert "end to end (embed_shard)" in done.stdout and "ratio end to end / plain loop" in done.stdout
