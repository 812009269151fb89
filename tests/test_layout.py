"""The OUT/ names of clipcrawl.tasks.core.layout are the output layout of ARCHITECTURE.md (img2dataset's shards,
clip-retrieval's embeddings and index folders): existing outputs must keep loading."""

from clipcrawl.tasks.core import layout

OUT = "s3://bucket/run"


def test_names_follow_the_output_contract():
    pairs, images = layout.pairs_dir(OUT), layout.images_dir(OUT)
    embeddings, dataset = layout.embeddings_dir(OUT), layout.dataset_dir(OUT)
    index, report = layout.index_dir(OUT), layout.report_dir(OUT)
    stem = layout.shard_name(12)
    assert [
        layout.pairs_file(pairs, "f1"),
        layout.pairs_stats(pairs, "f1"),
        layout.summary_file(pairs),
        layout.shard_tar(images, stem),
        layout.shard_parquet(images, stem),
        layout.shard_stats(images, stem),
        layout.embedding_npy(embeddings, "image", stem),
        layout.embedding_npy(embeddings, "text", stem),
        layout.metadata_file(embeddings, stem),
        layout.dataset_part(dataset, stem),
        layout.dataset_stats(dataset, stem),
        layout.index_file(index, "image"),
        layout.index_file(index, "text"),
        layout.ids_file(index),
        layout.index_infos(index),
        layout.report_html(report),
        layout.report_stats(report),
    ] == [
        f"{OUT}/pairs/f1.parquet",
        f"{OUT}/pairs/f1.stats.json",
        f"{OUT}/pairs/_summary.json",
        f"{OUT}/images/00012.tar",
        f"{OUT}/images/00012.parquet",
        f"{OUT}/images/00012_stats.json",
        f"{OUT}/embeddings/img_emb/img_emb_00012.npy",
        f"{OUT}/embeddings/text_emb/text_emb_00012.npy",
        f"{OUT}/embeddings/metadata/metadata_00012.parquet",
        f"{OUT}/dataset/part-00012.parquet",
        f"{OUT}/dataset/part-00012_stats.json",
        f"{OUT}/index/image.index",
        f"{OUT}/index/text.index",
        f"{OUT}/index/ids.parquet",
        f"{OUT}/index/index_infos.json",
        f"{OUT}/report/index.html",
        f"{OUT}/report/stats.json",
    ]


def test_a_shard_is_named_from_its_tar_and_found_beside_its_run():
    tar = layout.shard_tar(layout.images_dir(OUT), "00012")
    assert layout.shard_stem(tar) == "00012"
    assert layout.shard_parquet_of(tar) == layout.shard_parquet(layout.images_dir(OUT), "00012")
    assert layout.metadata_stem(layout.metadata_file(layout.embeddings_dir(OUT), "00012")) == "00012"
    assert layout.dataset_beside(layout.embeddings_dir(OUT) + "/") == layout.dataset_dir(OUT)
    assert layout.dataset_beside("embeddings") == "./dataset"
