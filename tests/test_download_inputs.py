"""The download stage reads img2dataset's inputs: txt, csv, tsv (.gz), json, jsonl and parquet, local or remote, with
its url_col / caption_col / save_additional_columns, LAION's URL/TEXT metadata, in bounded memory."""

from __future__ import annotations

import csv
import functools
import gzip
import http.server
import io
import json
import random
import tarfile
import threading

import fsspec
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipcrawl.tasks.core.config import DownloadSettings
from clipcrawl.tasks.core.errors import InputError, is_transient
from clipcrawl.tasks.download import inputs
from clipcrawl.tasks.download.shards import plan_download, read_shard_rows
from clipcrawl.tasks.download.stage import download_shard

URLS = ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b,c.jpg", "http://127.0.0.1:9/d.jpg?x=1&y=2"]
CAPTIONS = ["a red car", 'a "quoted", comma caption', "ümlaut"]


def write_input(path, fmt: str, columns: dict[str, list]) -> None:
    """`columns` written in img2dataset's format `fmt` at `path`."""
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    if fmt == "txt":
        path.write_text("\n".join(columns["url"]) + "\n")
    elif fmt in ("csv", "tsv", "csv.gz", "tsv.gz"):
        text = io.StringIO()
        writer = csv.DictWriter(text, list(columns), delimiter="\t" if fmt.startswith("tsv") else ",")
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode()
        path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    elif fmt == "json":
        path.write_bytes(orjson.dumps(rows))
    elif fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        pq.write_table(pa.table(columns), path)


def read_all(source: str, staging, **settings) -> pa.Table:
    settings = DownloadSettings(**settings)
    _, specs = plan_download(source, 100, settings, str(staging))
    return pa.concat_tables(read_shard_rows(spec, settings=settings) for spec in specs)


@pytest.mark.parametrize("fmt", ["txt", "csv", "csv.gz", "tsv", "tsv.gz", "json", "jsonl", "parquet"])
def test_each_format_with_and_without_captions(tmp_path, fmt):
    src = tmp_path / f"urls.{fmt}"
    if fmt != "txt":  # img2dataset's own names: url, caption (read without --caption-col: caption, else text)
        write_input(src, fmt, {"url": URLS, "caption": CAPTIONS, "NSFW": ["UNLIKELY"] * 3})
        table = read_all(str(src), tmp_path / "staging")
        assert table["url"].to_pylist() == URLS and table["caption"].to_pylist() == CAPTIONS
        assert "NSFW" not in table.column_names  # only the columns asked for are carried
        table = read_all(str(src), tmp_path / "staging", caption_col=None, save_additional_columns=["NSFW"])
        assert table["caption"].to_pylist() == [None] * 3 and table["NSFW"].to_pylist() == ["UNLIKELY"] * 3
    src.unlink(missing_ok=True)
    write_input(src, fmt, {"url": URLS})  # no caption column
    if fmt != "txt":
        with pytest.raises(InputError, match=rf"{src}: missing column caption .*--caption-col none"):
            read_all(str(src), tmp_path / "staging")
    else:  # a txt file is URLs only, whatever the caption column
        assert read_all(str(src), tmp_path / "staging")["caption"].to_pylist() == [None] * 3
    table = read_all(str(src), tmp_path / "staging", caption_col=None)
    assert table["url"].to_pylist() == URLS and table["caption"].to_pylist() == [None] * 3


def test_named_columns_are_case_sensitive_and_renamed(tmp_path):
    src = tmp_path / "cc.tsv"
    write_input(src, "tsv", {"image_url": URLS, "Caption": CAPTIONS})
    table = read_all(str(src), tmp_path / "s", url_col="image_url", caption_col="Caption")
    assert table.column_names == ["url", "caption"] and table["caption"].to_pylist() == CAPTIONS
    with pytest.raises(InputError, match="missing column caption"):
        read_all(str(src), tmp_path / "s", url_col="image_url", caption_col="caption")


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A folder served on 127.0.0.1: (folder, base URL)."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_remote_inputs_over_http_and_fsspec(http_root, tmp_path):
    root, base = http_root
    write_input(root / "list.tsv.gz", "tsv.gz", {"url": URLS, "caption": CAPTIONS})
    table = read_all(f"{base}/list.tsv.gz", tmp_path / "staging")
    assert table["url"].to_pylist() == URLS and table["caption"].to_pylist() == CAPTIONS
    assert len(list((tmp_path / "staging").glob("*list.tsv.gz.parquet"))) == 1

    memory = fsspec.filesystem("memory")
    memory.pipe(
        "/inputs/b.jsonl", b"".join(orjson.dumps({"url": u, "text": c}) + b"\n" for u, c in zip(URLS, CAPTIONS))
    )
    memory.pipe("/inputs/a.jsonl", orjson.dumps({"url": "http://127.0.0.1:9/first.jpg", "text": "first"}) + b"\n")
    memory.pipe("/inputs/_notes.jsonl", b"not json\n")  # names starting with _ are skipped, like img2dataset's stats
    table = read_all("memory://inputs", tmp_path / "staging")  # a folder: its files in name order
    assert table["url"].to_pylist() == ["http://127.0.0.1:9/first.jpg", *URLS]


def test_a_folder_is_read_by_one_format(tmp_path):
    write_input(tmp_path / "a.csv", "csv", {"url": URLS[:1], "text": CAPTIONS[:1]})
    write_input(tmp_path / "b.jsonl", "jsonl", {"url": URLS[1:], "text": CAPTIONS[1:]})
    with pytest.raises(InputError, match="holds csv and jsonl files: choose one with --input-format"):
        read_all(str(tmp_path), tmp_path / "_staging")
    assert read_all(str(tmp_path), tmp_path / "_staging", input_format="jsonl")["url"].to_pylist() == URLS[1:]
    write_input(tmp_path / "c.parquet", "parquet", {"url": URLS, "text": CAPTIONS})
    assert read_all(str(tmp_path), tmp_path / "_staging")["url"].to_pylist() == URLS  # parquet first, as pairs/


@pytest.mark.parametrize(
    ("name", "content", "settings", "message"),
    [
        ("links.csv", b"link,text\nhttp://x/a.jpg,a\n", {}, "missing column url (has link, text"),
        ("empty.csv", b"", {}, "cannot read it as csv: empty file"),
        ("header.tsv", b"url\ttext\n", {}, "no rows"),
        ("blank.jsonl", b'{"url": null, "text": "a"}\n{"url": "", "text": "b"}\n', {}, "column url is empty"),
        ("object.json", b'{"url": "http://x/a.jpg"}', {}, "must be an array of objects"),
        ("extra.csv", b"url,text\nhttp://x/a.jpg,a\n", {"save_additional_columns": ["NSFW"]}, "missing column NSFW"),
        ("key.csv", b"url,text,key\nhttp://x/a.jpg,a,k\n", {"save_additional_columns": ["key"]}, "cannot carry key"),
        # the parquet output format writes the image bytes in a column named by the encode format
        ("jpg.csv", b"url,text,jpg\nhttp://x/a.jpg,a,x\n", {"save_additional_columns": ["jpg"]}, "cannot carry jpg"),
    ],
)
def test_wrong_input_fails_at_once_with_one_line(tmp_path, name, content, settings, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_all(str(tmp_path / name), tmp_path / "staging", **settings)
    text = str(raised.value)
    assert message in text and "\n" not in text, text
    assert name in text or "cannot carry" in text, text  # names the file (or the setting)
    assert not is_transient(raised.value)  # the flow's retries never see it: it is raised while planning
    assert all(p.suffix == ".parquet" for p in (tmp_path / "staging").glob("*"))  # nothing half-written


def test_a_large_csv_is_converted_in_batches(tmp_path, monkeypatch):
    rows = 200_000
    src = tmp_path / "big.csv"
    with src.open("w") as f:
        f.write("url,caption,similarity\n")
        f.writelines(f"http://127.0.0.1:9/img/{i}.jpg,caption number {i},0.{i % 97}\n" for i in range(rows))

    def whole(*args, **kwargs):
        raise AssertionError("the input was read whole")

    monkeypatch.setattr(pacsv, "read_csv", whole)
    monkeypatch.setattr(inputs, "BLOCK_BYTES", 1 << 20)
    settings = DownloadSettings(save_additional_columns=["similarity"])
    files, specs = plan_download(str(src), 50_000, settings, str(tmp_path / "staging"))
    staged = pq.ParquetFile(files[0])
    assert staged.metadata.num_rows == rows
    assert staged.metadata.num_row_groups >= src.stat().st_size // (1 << 20)  # one row group per 1 MiB block read
    assert [s.num_rows for s in specs] == [50_000] * 4
    last = read_shard_rows(specs[-1], settings=settings)
    assert last["url"][-1].as_py() == f"http://127.0.0.1:9/img/{rows - 1}.jpg"
    assert last["similarity"][-1].as_py() == f"0.{(rows - 1) % 97}"  # csv columns are read as text


def test_laion_metadata_is_downloaded_with_its_additional_columns(http_root, tmp_path):
    root, base = http_root
    rng = random.Random(7)
    for i in range(3):
        image = Image.new("RGB", (64, 48))
        image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64 * 48)])
        image.save(root / f"laion{i}.jpg", quality=90)
    laion = {  # LAION-400M's metadata columns
        "SAMPLE_ID": pa.array([11, 12, 13], pa.int64()),
        "URL": [f"{base}/laion{i}.jpg" for i in range(3)],
        "TEXT": ["first", "second", "third"],
        "HEIGHT": [48, 48, 48],
        "WIDTH": [64, 64, 64],
        "LICENSE": ["?", "?", "cc-by"],
        "NSFW": ["UNLIKELY", "UNSURE", "UNLIKELY"],
        "similarity": [0.31, 0.32, 0.33],
    }
    pq.write_table(pa.table(laion), root / "part-00000.parquet")
    settings = DownloadSettings(
        save_additional_columns=["NSFW", "similarity", "LICENSE"],
        allow_addresses=["127.0.0.1/32"],
        min_bytes=0,
        image_threads=1,
        retries=0,
    )
    out = tmp_path / "out"
    _, (spec,) = plan_download(f"{base}/part-00000.parquet", 100, settings, str(out / "_inputs"))
    stats = download_shard(spec, str(out), settings)
    assert stats["successes"] == 3, stats
    shard = pq.read_table(out / "images" / "00000.parquet").sort_by("key")
    assert shard["url"].to_pylist() == laion["URL"] and shard["caption"].to_pylist() == laion["TEXT"]
    assert shard["NSFW"].to_pylist() == laion["NSFW"] and shard["similarity"].to_pylist() == laion["similarity"]
    assert shard["LICENSE"].to_pylist() == laion["LICENSE"] and "WIDTH" not in shard.column_names
    with tarfile.open(out / "images" / "00000.tar") as tar:
        samples = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
        captions = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    assert sorted(s["NSFW"] for s in samples) == sorted(laion["NSFW"])
    assert sorted(s["similarity"] for s in samples) == laion["similarity"]
    assert sorted(captions) == sorted(laion["TEXT"])


def test_the_flow_and_the_command_take_the_input_options():
    from prefect.utilities.callables import parameter_schema

    from clipcrawl.flows.cli import parse
    from clipcrawl.flows.download import download_images

    fields = parameter_schema(download_images.fn).model_dump()["definitions"]["DownloadSettings"]["properties"]
    assert {"input_format", "url_col", "caption_col", "save_additional_columns"} <= set(fields)
    assert "tsv.gz" in fields["input_format"]["enum"]
    flags = ["--input-format", "csv", "--url-col", "URL", "--caption-col", "none", "--save-additional-columns", "a"]
    settings = parse(["download", "--pairs", "in.csv", "--out", "o", *flags, "b"]).settings["download"]
    assert (settings.input_format, settings.url_col, settings.caption_col) == ("csv", "URL", None)
    assert settings.save_additional_columns == ["a", "b"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=f"no such input: {tmp_path}/nowhere.csv"):
        read_all(str(tmp_path / "nowhere.csv"), tmp_path / "staging")
