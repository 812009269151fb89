"""Known-bad lists (tasks/download/blocklist.py): formats, matching, the PDQ index, and that nothing of a listed
image reaches any output or temporary file of a download."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipcrawl.tasks.core.config import DownloadSettings, ReportSettings
from clipcrawl.tasks.core.status import DownloadStatus
from clipcrawl.tasks.download import blocklist as bl
from clipcrawl.tasks.download.fetch import Fetcher, request_url
from clipcrawl.tasks.download.images import PixelBudget, process_image
from clipcrawl.tasks.download.shards import ShardSpec
from clipcrawl.tasks.download.stage import download_shard
from clipcrawl.tasks.report.stage import finish_report, shard_summary
from clipcrawl.tasks.world import ImageServer
from clipcrawl.tasks.world.behaviours import LIST_FILES, LISTED, LISTED_HOST
from clipcrawl.tasks.world.lists import served_body


def _write(path, text: str, compress: bool = False) -> str:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


def _photo(seed: int = 0, size=(320, 240)) -> Image.Image:
    """A detailed picture (smooth random blobs plus fine texture): its PDQ hash is of full quality."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    fine = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return Image.blend(coarse, fine, 0.4)


def _jpeg(img: Image.Image, quality: int = 90, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, **save)
    return out.getvalue()


# ------------------------------------------------------------------------------------------- settings


def test_spec_kind_name_and_uri():
    assert bl.parse_spec("md5:s3://bucket/lists/known.txt") == bl.ListSpec(
        "md5", "known.txt", "s3://bucket/lists/known.txt"
    )
    assert bl.parse_spec("pdq:ncmec=https://h.test/a?x=1") == bl.ListSpec("pdq", "ncmec", "https://h.test/a?x=1")
    assert bl.parse_spec("url:https://h.test/a?x=1").name == "a"
    with pytest.raises(bl.BlocklistError, match="KIND one of md5, sha256, pdq, url, domain"):
        bl.parse_spec("sha1:/lists/a.txt")
    with pytest.raises(bl.BlocklistError, match="named 'a.txt'"):
        bl.parse_specs(["md5:/x/a.txt", "sha256:/y/a.txt"])
    with pytest.raises(ValueError, match="blocklists"):
        DownloadSettings(blocklists=["/lists/a.txt"])


# --------------------------------------------------------------------------------------- exact lists


def test_digest_lists_formats_and_lookup(tmp_path):
    md5 = hashlib.md5(b"listed", usedforsecurity=False).hexdigest()
    sha = hashlib.sha256(b"listed").hexdigest()
    md5_list = _write(tmp_path / "m.txt.gz", f"# a comment\n\n{md5.upper()}  some/file.jpg\n{'0' * 32}\n", True)
    sha_list = _write(tmp_path / "s.txt", f"{sha}\n")
    lists = bl.load_blocklists_uncached([f"md5:{md5_list}", f"sha256:hashes={sha_list}"])
    other = hashlib.sha256(b"other").digest()
    assert lists.match_bytes(b"listed", other) == bl.Match("m.txt.gz", "md5")
    assert lists.match_bytes(b"x", hashlib.sha256(b"listed").digest()) == bl.Match("hashes", "sha256")
    assert lists.match_bytes(b"other", other) is None
    assert lists.sizes() == {"m.txt.gz": 2, "hashes": 1}


@pytest.mark.parametrize(
    ("kind", "text", "why"),
    [
        ("md5", "d41d8cd98f00b204e9800998ecf8427e\nnot-hex-at-all-xxxxxxxxxxxxxxxxxxx\n", "line 2: not a md5 hash"),
        ("sha256", "# c\nd41d8cd98f00b204e9800998ecf8427e\n", "line 2: not a sha256 hash"),
        ("pdq", "f" * 63 + ",100\n", "line 1: not a pdq hash"),
        ("url", "https://ok.test/a.jpg\nftp://files.test/b.jpg\n", "line 2: not a url"),
        ("domain", "ok.test\nhttps://bad.test/\n", "line 2: not a domain"),
    ],
)
def test_bad_lines_are_named_with_list_and_line(tmp_path, kind, text, why):
    path = _write(tmp_path / f"{kind}.txt", text)
    with pytest.raises(bl.BlocklistError, match=f"blocklist {kind}.txt \\({path}\\) {why}"):
        bl.load_blocklists_uncached([f"{kind}:{path}"])


def test_missing_list_is_named(tmp_path):
    with pytest.raises(bl.BlocklistError, match="blocklist gone.txt .*cannot read it"):
        bl.load_blocklists_uncached([f"md5:{tmp_path / 'gone.txt'}"])
    with pytest.raises(bl.BlocklistError, match=r"blocklist y.txt \(nosuch://x/y.txt\): cannot open it"):
        bl.load_blocklists_uncached(["md5:nosuch://x/y.txt"])
    with pytest.raises(bl.BlocklistError, match=r"blocklist y.txt \(nosuch://x/y.txt\): cannot open it"):
        bl.load_blocklists(["md5:nosuch://x/y.txt"])


MD5_X = hashlib.md5(b"x", usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    ("kind", "data", "name"),
    [
        ("md5", f"\ufeff{MD5_X}\r\n".encode(), "l.txt"),  # a UTF-8 BOM, CRLF
        ("md5", f"{MD5_X}  caf\xe9.jpg\n".encode("latin-1"), "l.txt"),  # md5sum of a Latin-1 file name
        ("md5", f"md5,filename\n{MD5_X},x.jpg\n".encode(), "l.txt"),  # a CSV header
        ("md5", gzip.compress(f"{MD5_X}\n".encode(), mtime=0), "L.TXT.GZ"),  # compression, whatever the case
        ("pdq", ("\ufeffpdq256,quality\n" + "a" * 64 + ",100\n").encode(), "p.csv"),
        ("url", b"url\nbad.test/a.jpg\n", "u.csv"),  # a header, a URL without its scheme
        ("domain", b"\xef\xbb\xbfdomain,reason\nbad.test\n", "d.csv"),
    ],
)
def test_list_formats_read(tmp_path, kind, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    assert bl.load_blocklists_uncached([f"{kind}:{path}"]).sizes() == {name: 1}


def test_header_only_on_the_first_line(tmp_path):
    path = _write(tmp_path / "m.txt", f"{MD5_X}\nmd5,filename\n")
    with pytest.raises(bl.BlocklistError, match="line 2: not a md5 hash"):
        bl.load_blocklists_uncached([f"md5:{path}"])


def test_url_list_normalised_and_domain_covers_subdomains(tmp_path):
    urls = _write(tmp_path / "u.txt", "HTTP://Img.Example.TEST:80/a b.jpg#x\nhttps://bücher.test/p.png\n")
    domains = _write(tmp_path / "d.txt", "*.Bad.TEST.\nexample.org\n")
    lists = bl.load_blocklists_uncached([f"url:{urls}", f"domain:{domains}"])
    assert lists.match_url("http://img.example.test/a%20b.jpg") == bl.Match("u.txt", "url")
    assert lists.match_url("https://xn--bcher-kva.test/p.png") == bl.Match("u.txt", "url")
    assert lists.match_url("http://img.example.test/a%20b.jpg?q") is None
    assert lists.match_url("https://bad.test/x.jpg") == bl.Match("d.txt", "domain")
    assert lists.match_url("https://a.cdn.bad.test/x.jpg") == bl.Match("d.txt", "domain")
    assert lists.match_url("https://notbad.test/x.jpg") is None
    assert lists.match_url("https://org/x.jpg") is None  # a parent of a listed domain is not listed
    assert lists.match_url("not a url") is None


@pytest.mark.parametrize(
    "url",
    [
        "https://bad.test/img/a.jpg",
        "http://bad.test/img/a.jpg",  # http and https alike
        "https://BAD.test:443/img/a.jpg",
        "https://bad.test./img/a.jpg",  # the root's trailing dot
        "https://user:pw@bad.test/img/a.jpg",  # userinfo
        "https://bad.test/img/%61.jpg",  # an escaped unreserved character
        "https://bad.test/img/a%2Ejpg",
        "https://bad.test/img/./a.jpg",  # dot segments
        "https://bad.test/img/x/../a.jpg",
        "https://bad.test/img/x/%2e%2E/a.jpg",
        "https://bad.test/img/b.jpg",  # listed as b%2ejpg
        "https://bad.test/q?x=%7e",  # listed as ?x=~
        "https://bad.test:80/img/a.jpg",  # the scheme left out: both default ports are
    ],
)
def test_url_list_matches_other_spellings_of_a_url(tmp_path, url):
    urls = _write(tmp_path / "u.txt", "bad.test/img/a.jpg\nhttps://bad.test/img/b%2ejpg\nhttp://bad.test/q?x=~\n")
    lists = bl.load_blocklists_uncached([f"url:{urls}"])
    assert lists.match_url(url) == bl.Match("u.txt", "url")
    assert lists.match_url(request_url(url)) == bl.Match("u.txt", "url")  # as the fetcher asks: what it requests


def test_url_list_keeps_other_urls_apart(tmp_path):
    urls = _write(tmp_path / "u.txt", "https://bad.test/img/a.jpg\nhttps://bad.test/img/x%2Fy.jpg\n")
    lists = bl.load_blocklists_uncached([f"url:{urls}"])
    for url in (
        "https://bad.test/img//a.jpg",  # another path on most servers
        "https://bad.test/img/x/y.jpg",  # %2F is no slash
        "https://bad.test:8443/img/a.jpg",
        "https://bad.test/img/a.jpg?x",
        "https://bad.test/IMG/a.jpg",
    ):
        assert lists.match_url(url) is None, url


def test_lists_load_once_per_process(tmp_path):
    path = _write(tmp_path / "d.txt", "bad.test\n")
    entries = [f"domain:{path}"]
    first = bl.load_blocklists(entries)
    assert bl.load_blocklists(list(entries)) is first
    assert bl.load_blocklists(entries, pdq_threshold=10) is not first
    assert bl.load_blocklists([]) is None


def test_list_rewritten_under_its_uri_is_read_again(tmp_path):
    body = _jpeg(_photo())
    path = tmp_path / "hotline.txt"
    path.write_text("0" * 64 + "\n")
    settings = DownloadSettings(min_bytes=0, blocklists=[f"sha256:{path}"])
    assert process_image(body, settings).status == DownloadStatus.SUCCESS
    path.write_text(hashlib.sha256(body).hexdigest() + "\n")  # the same size
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert process_image(body, settings).status == DownloadStatus.BLOCKLISTED
    assert bl.for_settings(settings) is bl.for_settings(settings)  # unchanged: not read again


# ------------------------------------------------------------------------------------------------ PDQ


def _flip(digest: bytes, bits: list[int]) -> bytes:
    a = np.unpackbits(np.frombuffer(digest, np.uint8))
    a[bits] ^= 1
    return np.packbits(a).tobytes()


@pytest.mark.parametrize("threshold", [0, 31, 40])
def test_pdq_threshold_edge(threshold):
    rng = np.random.default_rng(threshold)
    listed = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
    index = bl.PdqIndex(np.frombuffer(listed, np.uint8), threshold)
    # the flipped bits spread over all chunks as evenly as possible: the pigeonhole's worst case
    spread = [int(b) for b in (np.arange(threshold + 1) * 16 % 256 + np.arange(threshold + 1) // 16)]
    assert index.nearest(_flip(listed, spread[:threshold])) == (0, threshold)
    assert index.nearest(_flip(listed, spread[: threshold + 1])) is None


def test_pdq_index_equals_linear_scan():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
    queries = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(30)]
    for row in rng.choice(len(hashes), 120, replace=False):  # near copies at every distance up to 60
        flips = rng.choice(256, int(rng.integers(0, 61)), replace=False).tolist()
        queries.append(_flip(hashes[row].tobytes(), flips))
    for threshold in (8, 31, 47, 60):  # one to three bits per chunk probed, then the linear scan
        index = bl.PdqIndex(hashes, threshold)
        got = [index.nearest(q) for q in queries]
        want = [index.brute_nearest(q) for q in queries]
        assert [g and g[1] for g in got] == [w and w[1] for w in want]
        assert sum(w is not None for w in want) > 10  # the comparison covers matches, not only misses


def test_pdq_list_formats_and_perceptual_match(tmp_path):
    photo = _photo()
    listed, quality = bl.pdq_hash(np.asarray(photo.resize((288, 216))))  # a smaller copy of it
    path = _write(tmp_path / "p.csv", f"pdq_hash,quality,file\n{listed.hex().upper()},{quality},copy.jpg\n{'0' * 64}\n")
    lists = bl.load_blocklists_uncached([f"pdq:{path}"])
    assert lists.sizes() == {"p.csv": 2}
    match = lists.match_pdq(np.asarray(Image.open(io.BytesIO(_jpeg(photo)))))
    assert match is not None and match.list == "p.csv" and match.distance <= bl.PDQ_THRESHOLD
    assert lists.match_pdq(np.asarray(_photo(seed=5))) is None
    assert lists.match_pdq(np.zeros((100, 100, 3), np.uint8)) is None  # featureless: quality 0, never matched


def test_pdq_matches_the_stored_pixels_and_every_rotation(tmp_path):
    """PDQ's own tools hash a file's pixels as stored, without its EXIF orientation: such a list matches the
    file, and a rotated or mirrored copy of a listed picture matches too."""
    photo = _photo(3)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    rotated = _jpeg(photo, exif=exif)
    stored, _ = bl.pdq_hash(np.asarray(Image.open(io.BytesIO(rotated)).convert("RGB")))  # as pdq-photo-hasher
    path = _write(tmp_path / "p.csv", stored.hex() + "\n")
    settings = DownloadSettings(min_bytes=0, blocklists=[f"pdq:{path}"])
    assert process_image(rotated, settings).status == DownloadStatus.BLOCKLISTED
    for turn in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_270):
        copy = _jpeg(photo.transpose(turn))
        assert process_image(copy, settings).status == DownloadStatus.BLOCKLISTED, turn
    assert process_image(_jpeg(_photo(4)), settings).status == DownloadStatus.SUCCESS


@pytest.mark.parametrize(
    ("size", "update"),
    [((1200, 200), {"max_aspect_ratio": 3.0}), ((200, 150), {"min_image_size": 256})],
)
def test_pdq_decides_before_the_size_filters(tmp_path, size, update):
    body = _jpeg(_photo(size=size))
    digest, _ = bl.pdq_hash(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))
    path = _write(tmp_path / "p.txt", digest.hex() + "\n")
    result = process_image(body, DownloadSettings(min_bytes=0, blocklists=[f"pdq:{path}"], **update))
    assert result.status == DownloadStatus.BLOCKLISTED
    assert (result.sha256, result.original_width, result.original_height) == (None, None, None)
    other = _write(tmp_path / "o.txt", "0" * 64 + "\n")  # not listed: filtered, with its size and digest
    kept = process_image(body, DownloadSettings(min_bytes=0, blocklists=[f"pdq:{other}"], **update))
    assert kept.status != DownloadStatus.SUCCESS and kept.original_width == size[0] and kept.sha256


def test_unhashable_image_keeps_no_trace_with_a_pdq_list(tmp_path):
    body = _jpeg(_photo(size=(400, 300)))
    path = _write(tmp_path / "p.txt", "0" * 64 + "\n")
    too_big = {"max_image_pixels": 100_000}
    for entries in ([f"pdq:{path}"], []):
        result = process_image(body, DownloadSettings(min_bytes=0, blocklists=entries, **too_big))
        assert result.status == DownloadStatus.TOO_MANY_PIXELS
        hidden = (result.sha256, result.original_width, result.original_height) == (None, None, None)
        assert result.withheld == hidden == bool(entries)  # without a PDQ list, a refused image keeps its size
    broken = process_image(body[: len(body) // 2], DownloadSettings(min_bytes=0, blocklists=[f"pdq:{path}"]))
    assert broken.status == DownloadStatus.DECODE_ERROR and broken.withheld and broken.sha256 is None


def test_pixel_budget_bounds_pixels_in_flight():
    budget, peak, lock = PixelBudget(100), [0], threading.Lock()
    order: list[int] = []

    def run(i: int, pixels: int):
        with budget.hold(pixels):
            with lock:
                order.append(i)
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate((60, 60, 250, 30))]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join(5)
    assert sorted(order) == [0, 1, 2, 3] and budget.used == 0
    assert peak[0] == 250  # over the whole budget: alone
    assert order.index(2) < order.index(3)  # first come, first served: the small one waits its turn


def test_process_image_blocklisted_keeps_nothing(tmp_path):
    body = _jpeg(_photo())
    digest_list = _write(tmp_path / "sha.txt", hashlib.sha256(body).hexdigest() + "\n")
    copy, _ = bl.pdq_hash(np.asarray(_photo().resize((256, 192))))
    pdq_list = _write(tmp_path / "pdq.txt", copy.hex() + "\n")
    for entry, kind in ((f"sha256:{digest_list}", "sha256"), (f"pdq:{pdq_list}", "pdq")):
        result = process_image(body, DownloadSettings(min_bytes=0, blocklists=[entry]))
        assert result.status == DownloadStatus.BLOCKLISTED
        assert result.error_message.startswith(f"on blocklist {os.path.basename(entry.split(':', 1)[1])} ({kind}")
        assert result.blocklist and (result.data, result.sha256, result.width, result.original_width) == (None,) * 4
    other = _write(tmp_path / "other.txt", hashlib.sha256(b"another image").hexdigest() + "\n")
    assert process_image(body, DownloadSettings(min_bytes=0, blocklists=[f"sha256:{other}"])).data


# ------------------------------------------------------------------------- a download on the world


def _needles(body: bytes, settings: DownloadSettings, unlisted_pdq: str) -> dict[str, bytes]:
    """Byte strings that would betray a listed image: its body (and a piece of it), digests, and resized image
    as the pipeline would write it with the lists on (a PDQ list: full-size decode) and with them off."""
    resized = process_image(body, settings.model_copy(update={"blocklists": [f"pdq:{unlisted_pdq}"]})).data
    resized_off = process_image(body, settings.model_copy(update={"blocklists": []})).data
    assert resized and resized_off
    sha = hashlib.sha256(body)
    return {
        "body": body,
        "body piece": body[len(body) // 2 : len(body) // 2 + 64],
        "sha256": sha.hexdigest().encode(),
        "sha256 digest": sha.digest(),
        "md5": hashlib.md5(body, usedforsecurity=False).hexdigest().encode(),
        "resized": resized,
        "resized piece": resized[len(resized) // 2 : len(resized) // 2 + 64],
        "resized, lists off": resized_off,
    }


def test_needles_are_what_the_pipeline_with_lists_would_write(tmp_path):
    """A large listed JPEG: with a PDQ list the pipeline decodes at full size (no reduce-on-decode), and the
    needle must be those bytes."""
    body = _jpeg(_photo(size=(1600, 1200)))
    unlisted = _write(tmp_path / "none.txt", "0" * 64 + "\n")
    settings = DownloadSettings(min_bytes=0, blocklists=[f"pdq:{unlisted}"])
    needles = _needles(body, settings, unlisted)
    assert needles["resized"] != needles["resized, lists off"]  # the lists' full-size decode differs


def test_world_download_writes_nothing_of_listed_images(small_world, tmp_path, monkeypatch):
    images = small_world.manifest_images().select(["image_id", "behaviour", "urls"]).to_pylist()
    listed = [i for i in images if i["behaviour"] in LISTED]
    expected = small_world.expected_downloads()
    ok = [i for i in images if i["behaviour"] == "ok" and set(i["urls"]) <= set(expected)][:3]
    assert sorted(i["behaviour"] for i in listed) == sorted(LISTED)
    urls = [u for i in listed + ok for u in i["urls"]]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": [f"caption {k}" for k in range(len(urls))]}), pairs)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = tmp_path / "out"
    server = ImageServer(small_world.root).start(warm=False)  # renders only the few bodies asked for
    try:
        settings = server.download_settings(image_threads=2)
        stats = download_shard(ShardSpec(0, ((str(pairs), 0, len(urls)),)), str(out), settings)
        hits = dict(server.hits)
    finally:
        server.stop()
    table = pq.read_table(out / "images" / "00000.parquet").to_pylist()
    assert {r["url"]: r["status"] for r in table} == {u: expected[u] for u in urls}
    blocked = [r for r in table if r["status"] == DownloadStatus.BLOCKLISTED]
    assert len(blocked) == sum(len(i["urls"]) for i in listed)
    assert stats["blocklisted_by_list"] == {LIST_FILES[LISTED[i["behaviour"]]]: len(i["urls"]) for i in listed}
    assert sum(stats["blocklisted_by_list"].values()) == len(blocked)
    for row in blocked:
        assert row["error_message"].startswith("on blocklist test-")
        assert (row["sha256"], row["width"], row["original_width"], row["bytes"]) == (None, None, None, None)
    # URL and domain lists are decided before any request
    listed_urls = {u for i in listed if LISTED[i["behaviour"]] in ("url", "domain") for u in i["urls"]}
    assert not [u for u in hits if u in listed_urls or LISTED_HOST in u]
    # the report counts them by list (and is scanned below with the rest of OUT)
    report = finish_report(str(out), [shard_summary(str(out), "00000", ReportSettings())], ReportSettings())
    assert report["stats"]["blocklists"] == stats["blocklisted_by_list"]
    with open(report["report"], encoding="utf-8") as f:
        page = f.read()
    assert 'id="blocklists"' in page and all(f"<td>{name}</td>" in page for name in stats["blocklisted_by_list"])
    # no byte of any listed image (nor its digests, nor its resized form) in any file under OUT or TMPDIR
    unlisted = _write(tmp_path / "unlisted-pdq.txt", "0" * 64 + "\n")
    needles = {
        (i["behaviour"], what): needle
        for i in listed
        if LISTED[i["behaviour"]] in ("md5", "sha256", "pdq")
        for what, needle in _needles(served_body(small_world.spec.seed, i["image_id"]), settings, unlisted).items()
    }
    files = [os.path.join(d, f) for root in (out, temp) for d, _, names in os.walk(root) for f in names]
    assert any(f.endswith(".tar") for f in files) and stats["successes"] >= len(ok)
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        assert not [key for key, needle in needles.items() if needle in data], path
    cells = {str(v) for r in table for v in r.values()}  # the parquet is compressed: its values, read back
    assert not {n.decode() for (_, what), n in needles.items() if what in ("sha256", "md5")} & cells


def test_redirect_to_a_listed_url_is_refused_before_it_is_requested(small_world, tmp_path):
    images = small_world.manifest_images().select(["behaviour", "urls"]).to_pylist()
    url = next(i for i in images if i["behaviour"] == "redirect")["urls"][0]
    origin, _, name = url.rpartition("/images/")
    target = f"{origin}/moved/{name}"
    spelled = target.split("://", 1)[1].replace("/moved/", "/x/../%6Doved/")  # another spelling, no scheme
    path = _write(tmp_path / "moved.txt", spelled + "\n")
    server = ImageServer(small_world.root).start(warm=False)
    try:
        settings = server.download_settings(blocklists=[f"url:{path}"])

        async def fetch():
            async with Fetcher(settings) as fetcher:
                return await fetcher.fetch(url)

        result = asyncio.run(fetch())
        hits = dict(server.hits)
    finally:
        server.stop()
    assert result.status == DownloadStatus.BLOCKLISTED and result.blocklist == "moved.txt"
    assert "redirected to" in result.error_message and result.body is None
    assert hits.get(url.replace(":443", "")) or any(k.endswith(f"/images/{name}") for k in hits)
    assert not [k for k in hits if "/moved/" in k]
