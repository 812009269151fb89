import gzip

import pytest

from clipcrawl.tasks.core.stats import segment_of
from clipcrawl.tasks.ingest.crawl import (
    ListingError,
    crawl_files,
    is_common_crawl,
    list_segments,
    plan_new_segments,
    select_segments,
)


@pytest.fixture
def source(tmp_path):
    crawl = tmp_path / "crawl-data" / "CC-MAIN-2099-01"
    crawl.mkdir(parents=True)
    paths = [
        f"crawl-data/CC-MAIN-2099-01/segments/{seg}/wat/f{i}.warc.wat.gz"
        for seg in ("100.1", "100.2", "100.3")
        for i in range(3)
    ]
    (crawl / "wat.paths.gz").write_bytes(gzip.compress("\n".join(paths).encode() + b"\n"))
    return str(tmp_path)


def test_first_n_segments_and_files_per_segment(source):
    uris = crawl_files(source, "CC-MAIN-2099-01", "wat", segments=2, files_per_segment=1)
    assert [segment_of(u) for u in uris] == ["100.1", "100.2"]
    assert uris[0].startswith(source) and uris[0].endswith("f0.warc.wat.gz")


def test_explicit_segments_and_seeded_sample(source):
    assert {segment_of(u) for u in crawl_files(source, "CC-MAIN-2099-01", segment_list=["100.3"])} == {"100.3"}
    a = crawl_files(source, "CC-MAIN-2099-01", segments=2, sample_seed=1)
    assert a == crawl_files(source, "CC-MAIN-2099-01", segments=2, sample_seed=1)
    assert len({segment_of(u) for u in a}) == 2


def test_unknown_crawl_or_segment_names_the_problem(source):
    with pytest.raises(ListingError, match="CC-MAIN-1999-01"):
        crawl_files(source, "CC-MAIN-1999-01")
    with pytest.raises(ListingError, match="nope"):
        select_segments(["a", "b"], None, ["nope"], None)


def test_list_segments_in_listing_order(source):
    assert list_segments(source, "CC-MAIN-2099-01") == ["100.1", "100.2", "100.3"]


def test_plan_takes_new_segments_newest_crawl_first_within_the_budget():
    segments = {"B": ["b1", "b2", "b3"], "A": ["a1", "a2"]}
    listed = []

    def segments_of(crawl):
        listed.append(crawl)
        return segments[crawl]

    assert plan_new_segments(["B", "A"], segments_of, {"B": ["b1"]}, 3) == {"B": ["b2", "b3"], "A": ["a1"]}
    assert plan_new_segments(["B", "A"], segments_of, {"B": ["b1", "b2", "b3"]}, 5) == {"A": ["a1", "a2"]}
    assert plan_new_segments(["B", "A"], segments_of, {"B": ["b1", "b2", "b3"], "A": ["a1", "a2"]}, 5) == {}
    listed.clear()
    assert plan_new_segments(["B", "A"], segments_of, {}, 2) == {"B": ["b1", "b2"]}
    assert listed == ["B"], "a crawl's listing is read only while budget is left"


def test_common_crawl_sources_are_recognised():
    assert is_common_crawl("https://data.commoncrawl.org/") and is_common_crawl("s3://commoncrawl")
    assert not is_common_crawl("s3://mirror/commoncrawl") and not is_common_crawl("/data/world")


def test_ingested_segments_leave_out_those_with_a_failed_file(tmp_path):
    from clipcrawl.tasks.core.uri import write_json
    from clipcrawl.tasks.ingest.crawl import ingested_segments

    assert ingested_segments(str(tmp_path)) == []
    failed = "s3://commoncrawl/crawl-data/CC-MAIN-2099-01/segments/100.2/wat/f1.warc.wat.gz"
    write_json(
        str(tmp_path / "pairs" / "_summary.json"),
        {"segments": ["100.1", "100.2", "100.3"], "failed": [{"uri": failed, "error": "gone"}]},
    )
    assert ingested_segments(str(tmp_path)) == ["100.1", "100.3"]


def test_segment_of_a_crawl_file_and_of_any_other_file(tmp_path):
    assert segment_of("s3://commoncrawl/crawl-data/CC-MAIN-2099-01/segments/100.2/wat/f1.warc.wat.gz") == "100.2"
    assert segment_of("crawl-data/CC-MAIN-2099-01/segments/100.2/warc/f1.warc.gz") == "100.2"
    assert segment_of("file:///data/my-crawl/f1.warc.gz") is None  # an explicit input: no segment
    crawl = tmp_path / "crawl-data" / "CC-MAIN-2099-01"
    crawl.mkdir(parents=True)
    (crawl / "wat.paths.gz").write_bytes(gzip.compress(b"crawl-data/CC-MAIN-2099-01/f1.warc.wat.gz\n"))
    with pytest.raises(ListingError, match="f1.warc.wat.gz: not a crawl-data/<crawl>/segments/<segment>"):
        crawl_files(str(tmp_path), "CC-MAIN-2099-01")
