"""Every folder and file name under a run's output location (OUT/), in one place: the output layout of
ARCHITECTURE.md, img2dataset's shard layout (images/) and clip-retrieval's embeddings and index folders. Stages
take and return the URIs these functions build; no other module spells out an OUT/ name.

Folders are functions of OUT (`images_dir(out)`); files are functions of their folder (`shard_tar(images, stem)`),
because a stage may read a folder given on its own (`clipcrawl embed --images DIR`)."""

from __future__ import annotations

from clipcrawl.tasks.core.uri import join, listdir, name_of

SUMMARY = "_summary.json"  # a stage's run summary in its output folder
SHARD_STATS_SUFFIX = "_stats.json"  # img2dataset's per-shard stats, each shard's completion marker
PAIRS_STATS_SUFFIX = ".stats.json"  # an ingested file's stats, its completion marker
EMBEDDING_FOLDERS = {"image": "img_emb", "text": "text_emb"}  # clip-retrieval's folder per modality
# Where a shard's images are per output format (DownloadSettings.output_format): images/{stem}{suffix}, a tar, a
# folder of files, or the shard's parquet holding them in a column.
SHARD_SUFFIXES = {"webdataset": ".tar", "files": "", "parquet": ".parquet"}


# ---- OUT/ folders


def pairs_dir(out: str) -> str:
    return join(out, "pairs")


def images_dir(out: str) -> str:
    return join(out, "images")


def embeddings_dir(out: str) -> str:
    return join(out, "embeddings")


def dataset_dir(out: str) -> str:
    return join(out, "dataset")


def index_dir(out: str) -> str:
    return join(out, "index")


def report_dir(out: str) -> str:
    return join(out, "report")


def takedown_dir(out: str) -> str:
    """The takedowns' log (OUT/takedown/log.jsonl)."""
    return join(out, "takedown")


def results_dir(out: str) -> str:
    """The Prefect result storage of the runs over OUT (the persistent task cache)."""
    return join(out, "_results")


def inputs_staging(out: str) -> str:
    """The download stage's inputs converted to parquet (csv, json, txt, ... read batch by batch), one file each."""
    return join(out, "_inputs")


def summary_file(folder: str) -> str:
    """A stage's run summary in its output folder (pairs/, images/, dataset/)."""
    return join(folder, SUMMARY)


def dataset_beside(embeddings: str) -> str:
    """The dataset folder of the run whose embeddings folder is EMBEDDINGS (OUT/embeddings -> OUT/dataset)."""
    embeddings = embeddings.rstrip("/")
    return dataset_dir(embeddings.rsplit("/", 1)[0] if "/" in embeddings else ".")


# ---- pairs/: one parquet per ingested WAT/WARC file


def pairs_file(pairs: str, name: str) -> str:
    return join(pairs, f"{name}.parquet")


def pairs_stats(pairs: str, name: str) -> str:
    return join(pairs, name + PAIRS_STATS_SUFFIX)


def published_pairs_stats(pairs: str) -> list[str]:
    """The stats of the files ingest published, in order (a file's .stats.json, written last, marks it done)."""
    return listdir(pairs, PAIRS_STATS_SUFFIX)


def staging_dir(pairs: str) -> str:
    """Files extracted and not yet published: emptied as each run commits them."""
    return join(pairs, "_staging")


def staged_pairs(pairs: str, name: str) -> str:
    """A file's pairs after extraction, before the cross-file dedup."""
    return join(staging_dir(pairs), f"{name}.parquet")


def staged_uids(pairs: str, name: str) -> str:
    return join(staging_dir(pairs), f"{name}.uids.parquet")


def staged_stats(pairs: str, name: str) -> str:
    return join(staging_dir(pairs), name + PAIRS_STATS_SUFFIX)


def staged_losers(pairs: str, task: int) -> str:
    """The losers (the rows other files keep) of one dedup task of the current run: a fixed name, overwritten."""
    return join(staging_dir(pairs), f"losers-{task:05d}.parquet")


def uid_store(pairs: str) -> str:
    """The crawl's uid store (tasks/ingest/uidstore.py): the uids published in pairs/ and which file won each."""
    return join(pairs, "_uids")


def crawls_uid_store(out: str) -> str:
    """The uid store that the crawls under OUT/<crawl>/ share when they are deduplicated across crawls."""
    return join(out, "_uids")


# ---- a uid store (tasks/ingest/uidstore.py): OUT/pairs/_uids/, OUT/_uids/ or a folder of its own


def store_config(store: str) -> str:
    """store.json: the store's format version and partition count."""
    return join(store, "store.json")


def store_partition(store: str, p: int) -> str:
    return join(store, f"part-{p:05d}.parquet")


def store_files(store: str) -> str:
    """The committed files."""
    return join(store, "files.parquet")


def store_next_dir(store: str) -> str:
    """A run's work in progress: fixed names, overwritten by the next run, removed once it commits."""
    return join(store, "_next")


def store_next_partition(store: str, p: int) -> str:
    return join(store_next_dir(store), f"part-{p:05d}.parquet")


def store_new_files(store: str) -> str:
    """The run's new files in run order (key, uid list URI): the order in which they win a uid."""
    return join(store_next_dir(store), "new.parquet")


def legacy_dedup_dir(pairs: str) -> str:
    """Where earlier versions kept each run's loser lists (removed by the next run)."""
    return join(pairs, "_dedup")


# ---- images/: img2dataset's shards


def shard_name(shard: int) -> str:
    """img2dataset's shard name: the shard number in 5 digits."""
    return f"{shard:05d}"


def shard_tar(images: str, stem: str) -> str:
    return join(images, f"{stem}.tar")


def shard_parquet(images: str, stem: str) -> str:
    return join(images, f"{stem}.parquet")


def shard_stats(images: str, stem: str) -> str:
    return join(images, stem + SHARD_STATS_SUFFIX)


def shard_folder(images: str, stem: str) -> str:
    """The `files` output format's folder of a shard's images: images/{stem}/{key}.jpg, .txt, .json."""
    return join(images, stem)


def shard_in_format(images: str, stem: str, output_format: str) -> str:
    """Where shard `stem` of IMAGES has its images in `output_format` (SHARD_SUFFIXES), as published_shards names
    the shard."""
    return join(images, stem + SHARD_SUFFIXES[output_format])


def shard_stem(shard: str) -> str:
    """'.../images/00012.tar' (or the folder '.../images/00012', or '.../images/00012.parquet') -> '00012', the
    name every output of the shard carries."""
    return name_of(shard).removesuffix(".tar").removesuffix(".parquet")


def shard_parquet_of(shard: str) -> str:
    """The parquet of a shard (its rows, failures included): beside its tar or folder, or the shard itself."""
    shard = shard.rstrip("/")
    return shard if shard.endswith(".parquet") else shard.removesuffix(".tar") + ".parquet"


def shard_format(shard: str) -> str:
    """The output format of a shard named as published_shards names it: webdataset, parquet or files."""
    shard = shard.rstrip("/")
    return "webdataset" if shard.endswith(".tar") else "parquet" if shard.endswith(".parquet") else "files"


def published_shards(images: str) -> list[str]:
    """The shards of IMAGES whose download finished (their _stats.json, written last, exists), in order, each named
    by where its images are: {stem}.tar (webdataset), else the folder {stem} (files), else {stem}.parquet (parquet:
    the image bytes in a column of the shard's rows). A shard written again in another format has the other
    format's images removed before its stats are published (ShardWriter.close), so one of them is there."""
    entries = listdir(images)
    names = {name_of(uri) for uri in entries}
    shards = []
    for uri in entries:
        if uri.endswith(SHARD_STATS_SUFFIX):
            base = uri.removesuffix(SHARD_STATS_SUFFIX)
            stem = name_of(base)
            shards.append(base + ".tar" if f"{stem}.tar" in names else base if stem in names else base + ".parquet")
    return shards


# ---- embeddings/: clip-retrieval's layout


def embedding_npy(embeddings: str, modality: str, stem: str) -> str:
    """embeddings/img_emb/img_emb_{stem}.npy (modality image) or text_emb/text_emb_{stem}.npy (text)."""
    folder = EMBEDDING_FOLDERS[modality]
    return join(embeddings, folder, f"{folder}_{stem}.npy")


def metadata_dir(embeddings: str) -> str:
    return join(embeddings, "metadata")


def metadata_file(embeddings: str, stem: str) -> str:
    return join(metadata_dir(embeddings), f"metadata_{stem}.parquet")


def metadata_stem(uri: str) -> str:
    """The shard stem of a metadata file's URI."""
    return name_of(uri).removeprefix("metadata_").removesuffix(".parquet")


# ---- dataset/: the LAION-column parquet


def dataset_part(dataset: str, stem: str) -> str:
    return join(dataset, f"part-{stem}.parquet")


def dataset_stats(dataset: str, stem: str) -> str:
    """Embed's stats of one shard, its completion marker."""
    return join(dataset, f"part-{stem}{SHARD_STATS_SUFFIX}")


# ---- index/: clip-retrieval's index folder


def index_file(index: str, modality: str) -> str:
    """index/image.index or index/text.index."""
    return join(index, f"{modality}.index")


def ids_file(index: str) -> str:
    return join(index, "ids.parquet")


def staged_ids(index: str) -> str:
    """ids.parquet's successor while it is written (the old one is read meanwhile)."""
    return join(index, "ids.parquet.new")


def index_infos(index: str) -> str:
    return join(index, "index_infos.json")


def clip_metadata_dir(index: str) -> str:
    """index/metadata/: where `clip-retrieval back` reads an index's metadata (its ParquetMetadataProvider
    concatenates metadata/*.parquet in name order: row i is id i)."""
    return join(index, "metadata")


def clip_metadata_file(index: str) -> str:
    """index/metadata/ids.parquet: ids.parquet again, for `clip-retrieval back`."""
    return join(clip_metadata_dir(index), "ids.parquet")


# ---- report/


def report_html(report: str) -> str:
    return join(report, "index.html")


def report_stats(report: str) -> str:
    return join(report, "stats.json")


# ---- takedown/


def takedown_log(takedown: str) -> str:
    """The append-only log of the takedowns, one JSON line each: also the tombstones of later runs."""
    return join(takedown, "log.jsonl")
