"""Seeded fuzzing of extraction: mutations of real-looking WAT and WARC files, each checked for its properties.

    python -m tests.fuzz_extract --seed 7 --cases 500 --dir /tmp/fuzz    # prints one JSON summary line

Each case damages two gzip members of a seed file (written by warcio, one record per member, as Common Crawl
writes them; one page of the WARC seed is larger than what the reader keeps to hand out again) and extracts the
result in this process. A case fails when:
- extraction raises (anything but the file being no WARC at all, when no intact member is left);
- it takes longer than --case-timeout;
- a pair of an intact member is missing (a truncation ends the file there);
- fewer HTML pages are counted than intact members hold;
- the stats do not add up: records = html_pages + skipped_records + malformed_records, and
  img_links = kept + dropped.
The summary carries this process's peak RSS, which tests/test_hostile_files.py bounds: the process runs
apart, so a crash or an abort in native code is seen as its exit status.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from isal import isal_zlib

from clipcrawl.tasks.core.config import ExtractSettings
from clipcrawl.tasks.ingest.extract import ExtractError, FileStats, iter_pairs
from tests.test_extract import html_page, request_json, wat_json, write_warc

SETTINGS = ExtractSettings(detect_language=False, max_record_bytes=4 << 20)
BIG_PAGE = 1_500_000  # one page of the WARC seed is larger than what the reader keeps to hand out again (1 MiB)


def seed_files(folder: Path) -> dict[str, Path]:
    wat, warc = [], []
    for p in range(12):
        page = f"http://seed{p}.test/page.html"
        links = [(f"/img/{p}/{i}.jpg", f"picture {i} of the seed page {p}") for i in range(3)]
        wat += [("wat", page, request_json(page)), ("wat", page, wat_json(page, links))]
        body = html_page(links).encode()
        if p == 6:
            body = body.replace(b"</body>", b"<p>" + b"filler text " * (BIG_PAGE // 12) + b"</p></body>")
        warc.append(("html", page, body, "text/html; charset=utf-8"))
    files = {"wat": folder / "seed.warc.wat.gz", "warc": folder / "seed.warc.gz"}
    write_warc(files["wat"], wat)
    write_warc(files["warc"], warc)
    return files


def members(data: bytes) -> list[bytes]:
    """The file's gzip members, as bytes."""
    out, pos = [], 0
    while pos < len(data):
        inflater = isal_zlib.decompressobj(31)
        inflater.decompress(data[pos:])
        end = len(data) - len(inflater.unused_data)
        out.append(data[pos:end])
        pos = end
    return out


def gz(data: bytes) -> bytes:
    deflate = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    return deflate.compress(data) + deflate.flush()


def inflate(member: bytes) -> bytes:
    return isal_zlib.decompress(member, 31)


def _set_length(record: bytes, payload: bytes) -> bytes:
    head = record.split(b"\r\n\r\n", 1)[0]
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length:")]
    return b"\r\n".join([*lines, b"Content-Length: %d" % len(payload)]) + b"\r\n\r\n" + payload + b"\r\n\r\n"


def _payload(record: bytes) -> bytes:
    return record.split(b"\r\n\r\n", 1)[1][:-4]


def mutate(rng: random.Random, member: bytes, others: list[bytes]) -> tuple[str, bytes, bool]:
    """(mutation, the damaged member's replacement, whether the file goes on after it)."""
    kind = rng.choice(MUTATIONS)
    if kind == "bit_flips":
        data = bytearray(member)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return kind, bytes(data), True
    if kind == "truncation":
        return kind, member[: rng.randrange(1, len(member))], False
    if kind == "spliced_members":  # a piece of another member inside this one
        other = rng.choice(others)
        at, cut = rng.randrange(len(member)), rng.randrange(1, len(other))
        return kind, member[:at] + other[:cut], True
    if kind == "trailing_garbage":
        return kind, member + rng.randbytes(rng.randint(1, 4000)), True
    if kind == "nul_bytes_compressed":
        at = rng.randrange(len(member))
        return kind, member[:at] + b"\0" * rng.randint(1, 2000) + member[at:], True
    record = inflate(member)
    if kind == "wrong_length":
        claimed = max(0, len(_payload(record)) + rng.choice([-1, 1]) * rng.randint(1, 5000))
        head, rest = record.split(b"\r\n\r\n", 1)
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length:")]
        return kind, gz(b"\r\n".join([*lines, b"Content-Length: %d" % claimed]) + b"\r\n\r\n" + rest), True
    if kind == "huge_header_line":
        head, rest = record.split(b"\r\n", 1)
        return kind, gz(head + b"\r\nX-Huge: " + b"h" * rng.randint(100_000, 2_000_000) + b"\r\n" + rest), True
    if kind == "many_headers":
        head, rest = record.split(b"\r\n", 1)
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))
        return kind, gz(head + b"\r\n" + extra + rest), True
    if kind == "many_http_headers":
        payload = _payload(record)
        if payload.startswith(b"HTTP/"):
            status, rest = payload.split(b"\r\n", 1)
            payload = status + b"\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + rest
        else:
            payload = b"".join(b"[" for _ in range(100_000)) + payload
        return kind, gz(_set_length(record, payload)), True
    if kind == "random_nesting":
        payload = _payload(record)
        at, depth = rng.randrange(len(payload) + 1), rng.randint(1000, 1_000_000)
        opener = rng.choice([b"[", b'{"a":', b"<div>"])
        closer = {b"[": b"]", b'{"a":': b"}", b"<div>": b"</div>"}[opener]
        return kind, gz(_set_length(record, payload[:at] + opener * depth + closer * depth + payload[at:])), True
    if kind == "nul_bytes":
        at = rng.randrange(len(record))
        return kind, gz(record[:at] + b"\0" * rng.randint(1, 500) + record[at:]), True
    if kind == "invalid_utf8":
        data = bytearray(record)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.choice([0x80, 0xC0, 0xFF, 0xFE, 0xED])
        return kind, gz(bytes(data)), True
    raise AssertionError(kind)


MUTATIONS = (
    "bit_flips",
    "truncation",
    "spliced_members",
    "trailing_garbage",
    "nul_bytes_compressed",
    "wrong_length",
    "huge_header_line",
    "many_headers",
    "many_http_headers",
    "random_nesting",
    "nul_bytes",
    "invalid_utf8",
)


def extract(path: Path) -> tuple[set, FileStats]:
    stats = FileStats(uri=str(path))
    pairs = set()
    for batch in iter_pairs(str(path), SETTINGS, stats):
        pairs.update(zip(batch.column("url").to_pylist(), batch.column("caption").to_pylist()))
    return pairs, stats


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run(seed: int, cases: int, folder: Path, case_timeout: float) -> dict:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for kind, path in seed_files(folder).items():
        parts = members(path.read_bytes())
        alone = []
        for i, part in enumerate(parts):  # the pairs of each member read alone
            single = folder / f"{kind}-member-{i}.warc.gz"
            single.write_bytes(part)
            alone.append(extract(single)[0])
        seeds[kind] = (parts, alone)
    baseline = peak_rss()
    failures, counts = [], {}
    target = folder / "case.warc.gz"
    for case in range(cases):
        kind = rng.choice(sorted(seeds))
        parts, alone = seeds[kind]
        damaged = sorted(rng.sample(range(len(parts)), 2))  # two members, the warcinfo one included
        out, intact, ends = [], [], len(parts)
        for i, part in enumerate(parts):
            if i >= ends:
                break
            if i not in damaged:
                out.append(part)
                intact.append(i)
                continue
            mutation, part, goes_on = mutate(rng, part, parts[:i] + parts[i + 1 :])
            counts[mutation] = counts.get(mutation, 0) + 1
            out.append(part)
            ends = ends if goes_on else i + 1
        target.write_bytes(b"".join(out))
        where = f"case {case}: members {damaged} of {kind} damaged, the last by {mutation}"
        must = set().union(*(alone[i] for i in intact))
        started = time.perf_counter()
        try:
            pairs, stats = extract(target)
        except ExtractError as exc:  # no WARC at all: only when no intact member is left
            if must or intact:
                failures.append(f"{where}: {exc}")
            continue
        except BaseException as exc:  # noqa: BLE001 - every other outcome is a failure to report
            failures.append(f"{where}: raised {type(exc).__name__}: {exc}")
            continue
        seconds = time.perf_counter() - started
        if seconds > case_timeout:
            failures.append(f"{where}: took {seconds:.1f} s")
        if missing := must - pairs:
            failures.append(f"{where}: lost {len(missing)} pairs of intact members, e.g. {sorted(missing)[0]}")
            (folder / f"failed-{case}.warc.gz").write_bytes(target.read_bytes())
        d = stats.to_dict()
        if d["records"] != d["html_pages"] + sum(d["skipped_records"].values()) + d["malformed_records"]:
            failures.append(f"{where}: records do not add up: {d}")
        if d["img_links"] != d["kept"] + sum(d["dropped"].values()):
            failures.append(f"{where}: links do not add up: {d}")
        if d["html_pages"] < sum(1 for i in intact if alone[i]):
            failures.append(f"{where}: fewer HTML pages than intact page members: {d}")
    return {"cases": cases, "mutations": counts, "failures": failures, "baseline": baseline, "peak": peak_rss()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--case-timeout", type=float, default=10.0)
    args = ap.parse_args()
    print(json.dumps(run(args.seed, args.cases, args.dir, args.case_timeout)))


if __name__ == "__main__":
    main()
