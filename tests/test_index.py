import os
import uuid

import faiss
import fsspec
import numpy as np
import pytest

from clipcrawl.tasks.core.config import IndexSettings
from clipcrawl.tasks.index import choice, train, tune, vectors

D = 32
SIZES = (1500, 1000, 1500)
CENTROIDS = np.random.default_rng(0).standard_normal((64, D))


def _clustered(n, seed):
    """Normalised float16 vectors around 64 centroids, like embeddings of a few hundred kinds of image."""
    rng = np.random.default_rng(seed)
    x = CENTROIDS[rng.integers(len(CENTROIDS), size=n)] + rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """OpenMP threads fighting over a shared 2-core machine make faiss k-means ~10x slower."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    arrays, uris = [], []
    for i, n in enumerate(SIZES):
        arrays.append(_clustered(n, seed=i + 1))
        uris.append(str(root / f"img_emb_{i:05d}.npy"))
        np.save(uris[-1], arrays[-1])
    return arrays, uris


@pytest.fixture(scope="module")
def parts(shards):
    return [vectors.Part(f"{i:05d}", uri) for i, uri in enumerate(shards[1])]


@pytest.fixture(scope="module")
def all_vectors(shards):
    return np.concatenate(shards[0]).astype(np.float32)


@pytest.fixture(scope="module")
def queries():
    return _clustered(200, seed=99).astype(np.float32)


@pytest.fixture(scope="module")
def truth(queries, parts):
    return tune.exact_knn(queries, parts, 10, 1000)[1]


@pytest.fixture(scope="module")
def ivf(parts):
    return train.build(parts, IndexSettings(index_key="IVF64,SQfp16"))[0]


@pytest.fixture(scope="module")
def opq(parts):
    # 2000 training vectors keep OPQ training (50 iterations of 8 x 256-centroid k-means) to a few seconds
    return train.build(parts, IndexSettings(index_key="OPQ8_32,IVF16_HNSW32,PQ8x8", train_vectors=2000))[0]


def test_choose_index_key_follows_size_and_budget():
    gib = 2**30
    assert choice.choose_index_key(10_000, 512, gib) == "Flat"
    assert choice.choose_index_key(50_000, 512, gib) == "HNSW32"
    assert choice.choose_index_key(5_000_000, 512, 16 * gib) == "IVF8192,SQfp16"
    # the HNSW graph and float32 vectors do not fit where the fp16 codes do
    budget = choice.index_memory("IVF1024,SQfp16", 100_000, 512) + 1
    assert choice.index_memory("HNSW32", 100_000, 512) > budget
    assert choice.choose_index_key(100_000, 512, budget) == "IVF1024,SQfp16"
    # only compressed codes fit: the largest PQ that does
    assert choice.choose_index_key(100_000_000, 512, 16 * gib) == "OPQ128_512,IVF16384_HNSW32,PQ128x8"
    assert choice.choose_index_key(400_000_000, 512, 16 * gib) == "OPQ32_224,IVF16384_HNSW32,PQ32x8"
    with pytest.raises(ValueError, match="memory budget of 1073741824 bytes"):
        choice.choose_index_key(400_000_000, 768, gib)
    for key in ("OPQ128_512,IVF16384_HNSW32,PQ128x8", "OPQ32_224,IVF16384_HNSW32,PQ32x8", "IVF8192,SQfp16"):
        assert faiss.index_factory(512, key, faiss.METRIC_INNER_PRODUCT).metric_type == faiss.METRIC_INNER_PRODUCT


def test_ivf_nlist_is_a_power_of_two_near_4_sqrt_n_with_39_training_vectors_per_list():
    for n in (40, 1_000, 30_000, 1_000_000, 10**9):
        nlist = choice.ivf_nlist(n)
        assert nlist & (nlist - 1) == 0
        assert nlist * 39 <= min(n, choice.MAX_TRAIN_VECTORS)
    assert choice.ivf_nlist(1_000_000) == 4096
    assert choice.ivf_nlist(10**9) == 16384  # bounded by the 1M training sample
    assert choice.ivf_nlist(10) == 1


def test_index_memory_grows_with_vectors_and_code_size():
    keys = ["Flat", "HNSW32", "IVF1024,SQfp16"] + [f"OPQ{m}_512,IVF1024_HNSW32,PQ{m}x8" for m in (64, 128, 256)]
    for key in keys:
        sizes = [choice.index_memory(key, n, 512) for n in (10_000, 100_000, 1_000_000)]
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], key
    pq = [choice.index_memory(f"OPQ{m}_512,IVF1024_HNSW32,PQ{m}x8", 10**6, 512) for m in (8, 64, 128, 256)]
    assert pq == sorted(pq)
    assert pq[-1] < choice.index_memory("IVF1024,SQfp16", 10**6, 512) < choice.index_memory("HNSW32", 10**6, 512)
    with pytest.raises(ValueError, match="unsupported"):
        choice.index_memory("LSH", 10, 8)


def test_index_memory_matches_serialized_size(ivf, opq, parts):
    hnsw = faiss.index_factory(D, "HNSW32", faiss.METRIC_INNER_PRODUCT)
    hnsw.add(next(vectors.vector_batches(parts, 1000)))
    for key, built in (("IVF64,SQfp16", ivf), ("OPQ8_32,IVF16_HNSW32,PQ8x8", opq), ("HNSW32", hnsw)):
        real = faiss.serialize_index(built).nbytes
        assert 0.8 < choice.index_memory(key, built.ntotal, D) / real < 1.25, (key, real)


def test_part_count_reads_the_header_or_the_rows(parts):
    assert [p.count for p in parts] == list(SIZES)
    assert vectors.Part("x", parts[0].vectors, rows=[3, 5, 8]).count == 3
    with pytest.raises(ValueError, match="ascending"):
        vectors.Part("x", parts[0].vectors, rows=[5, 3])


def test_vector_batches_follow_part_order_rows_and_batch_size(shards, parts):
    rows = np.arange(0, SIZES[1], 3)
    selected = [parts[0], vectors.Part("00001", parts[1].vectors, rows=rows), parts[2]]
    batches = list(vectors.vector_batches(selected, 700))
    expected = np.concatenate([shards[0][0], shards[0][1][rows], shards[0][2]]).astype(np.float32)
    assert [len(b) for b in batches[:-1]] == [700] * (len(batches) - 1) and 0 < len(batches[-1]) <= 700
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert [len(b) for b in vectors.vector_batches(selected, 10**6)] == [len(expected)]


def test_read_vectors_of_a_remote_uri(shards):
    uri = f"memory://emb-{uuid.uuid4().hex}/img_emb_00000.npy"
    with fsspec.open(uri, "wb") as f:
        np.save(f, shards[0][0])
    np.testing.assert_array_equal(vectors.read_vectors(uri), shards[0][0])
    assert vectors.Part("00000", uri).count == SIZES[0]


def test_remote_vectors_read_the_rows_asked_for_in_range_requests(shards, parts, monkeypatch):
    stored = shards[0][1]
    uri = f"memory://emb-{uuid.uuid4().hex}/img_emb_00001.npy"
    with fsspec.open(uri, "wb") as f:
        np.save(f, stored)
    row = stored.itemsize * D
    monkeypatch.setattr(vectors, "REMOTE_GAP_BYTES", 4 * row)  # rows up to 4 apart share a request
    monkeypatch.setattr(vectors, "REMOTE_RANGE_BYTES", 100 * row)  # a request reads at most 100 rows
    requests = []
    remote = vectors.read_vectors(uri)
    cat_ranges = remote._fs.cat_ranges
    monkeypatch.setattr(
        remote._fs,
        "cat_ranges",
        lambda paths, starts, ends, **kw: (
            requests.extend(e - s for s, e in zip(starts, ends)),
            cat_ranges(paths, starts, ends, **kw),
        )[1],
    )
    assert remote.shape == stored.shape and len(remote) == SIZES[1]

    np.testing.assert_array_equal(remote[10:950], stored[10:950])
    assert requests and max(requests) <= 100 * row and sum(requests) == 940 * row
    rng = np.random.default_rng(3)
    for size in (0, 1, 37, 600):
        rows = np.sort(rng.choice(SIZES[1], size=size, replace=False))
        requests.clear()
        np.testing.assert_array_equal(remote[rows], stored[rows])
        assert max(requests, default=0) <= 100 * row
    requests.clear()
    sparse = np.arange(7, SIZES[1], 9)  # rows further apart than the gap: each read alone, not the file
    np.testing.assert_array_equal(remote[sparse], stored[sparse])
    assert requests == [row] * len(sparse)
    unordered = rng.integers(-SIZES[1], SIZES[1], size=50)  # any order, repeats, negative rows
    np.testing.assert_array_equal(remote[unordered], stored[unordered])
    with pytest.raises(IndexError):
        remote[[SIZES[1]]]

    # the index stage reads a remote shard as it reads a memory-mapped one
    rows = np.arange(0, SIZES[1], 3)
    local, far = vectors.Part("1", parts[1].vectors, rows=rows), vectors.Part("1", uri, rows=rows)
    for a, b in zip(
        vectors.vector_batches([local, parts[0]], 170), vectors.vector_batches([far, parts[0]], 170), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        vectors.sample_vectors([local], 200, seed=4), vectors.sample_vectors([far], 200, seed=4)
    )


def test_sample_vectors_draw_selected_rows_without_replacement(shards, parts):
    rows = np.arange(1, SIZES[1], 2)
    selected = [parts[0], vectors.Part("00001", parts[1].vectors, rows=rows)]
    pool = np.concatenate([shards[0][0], shards[0][1][rows]]).astype(np.float32)
    position = {row.tobytes(): i for i, row in enumerate(pool)}
    assert len(position) == len(pool)  # rows are distinct, so a sampled vector names its row
    sample = vectors.sample_vectors(selected, 300, seed=1)
    assert sample.shape == (300, D) and sample.dtype == np.float32
    picked = [position[row.tobytes()] for row in sample]  # KeyError: a row outside the selection
    assert len(set(picked)) == 300
    assert min(picked) < SIZES[0] <= max(picked)  # drawn from both parts
    np.testing.assert_array_equal(vectors.sample_vectors(selected, 300, seed=1), sample)
    assert not np.array_equal(vectors.sample_vectors(selected, 300, seed=2), sample)
    everything = vectors.sample_vectors(selected, 10**6, seed=0)
    assert sorted(position[row.tobytes()] for row in everything) == list(range(len(pool)))


def test_exact_knn_equals_brute_force(shards, parts, queries):
    rows = np.arange(0, SIZES[1], 4)
    selected = [parts[0], vectors.Part("00001", parts[1].vectors, rows=rows), parts[2]]
    base = np.concatenate([shards[0][0], shards[0][1][rows], shards[0][2]]).astype(np.float32)
    distances, ids = tune.exact_knn(queries, selected, 10, 300)
    similarities = queries @ base.T
    expected = np.argsort(-similarities, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(similarities, expected, axis=1), rtol=1e-5)


def test_recall_at_k_counts_common_ids():
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 9, 1], [-1, 7, 8, 4]])
    assert tune.recall_at_k(found, truth, 3) == pytest.approx(2 / 6)
    assert tune.recall_at_k(truth, truth, 4) == pytest.approx(7 / 8)  # the missing result never counts


def _hand_recall(found, truth, k):
    return np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found.tolist(), truth.tolist())])


def test_tune_ivf_takes_the_cheapest_nprobe_reaching_the_target(ivf, queries, truth):
    settings = IndexSettings(target_recall=0.95, max_query_latency_ms=1000)
    result = tune.tune(ivf, queries, truth, settings)
    tuning = result["tuning"]
    assert [r["params"] for r in tuning] == [f"nprobe={2**i}" for i in range(len(tuning))]
    assert tuning[0]["recall_at_k"] < 0.95  # the sweep had something to find
    assert result["recall_at_k"] >= 0.95 and result["k"] == 10
    first = next(r for r in tuning if r["recall_at_k"] >= 0.95)
    assert result["params"] == first["params"]
    assert faiss.extract_index_ivf(ivf).nprobe == int(result["params"].split("=")[1])  # left set
    _, found = ivf.search(queries, 10)
    assert result["recall_at_k"] == pytest.approx(_hand_recall(found, truth, 10), abs=1e-4)
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_tune_opq_pq_sets_nprobe_and_quantizer_ef_search(opq, queries, truth):
    result = tune.tune(opq, queries, truth, IndexSettings(target_recall=0.55, max_query_latency_ms=1000))
    assert result["recall_at_k"] >= 0.55
    nprobe, ef = (int(p.split("=")[1]) for p in result["params"].split(","))
    ivf = faiss.extract_index_ivf(opq)
    assert ivf.nprobe == nprobe and faiss.downcast_index(ivf.quantizer).hnsw.efSearch == ef
    _, found = opq.search(queries, 10)
    assert result["recall_at_k"] == pytest.approx(_hand_recall(found, truth, 10), abs=1e-4)


def test_tune_hnsw_and_flat(parts, queries, truth):
    hnsw, key = train.build(parts, IndexSettings(index_key="HNSW32"))
    result = tune.tune(hnsw, queries, truth, IndexSettings(target_recall=0.9, max_query_latency_ms=1000))
    assert key == "HNSW32" and result["params"].startswith("efSearch=") and result["recall_at_k"] >= 0.9
    assert hnsw.hnsw.efSearch == int(result["params"].split("=")[1])
    flat, key = train.build(parts, IndexSettings())  # 4000 x 32: exact search is cheapest
    assert key == "Flat" and flat.ntotal == sum(SIZES)
    result = tune.tune(flat, queries, truth, IndexSettings())
    assert result["params"] == "" and result["recall_at_k"] == 1.0 and len(result["tuning"]) == 1


def test_tune_over_the_latency_budget_stops_and_takes_the_fastest(ivf, queries, truth):
    result = tune.tune(ivf, queries, truth, IndexSettings(max_query_latency_ms=1e-6))
    assert [r["params"] for r in result["tuning"]] == ["nprobe=1"] == [result["params"]]
    assert faiss.extract_index_ivf(ivf).nprobe == 1


def test_build_rejects_a_training_sample_smaller_than_the_lists(parts):
    with pytest.raises(ValueError, match="64 inverted lists"):
        train.build(parts, IndexSettings(index_key="IVF64,SQfp16", train_vectors=10))


def test_add_continues_ids_after_ntotal(shards, parts):
    built, _ = train.build(parts[:2], IndexSettings(index_key="IVF16,SQfp16"))
    before = built.ntotal
    assert before == SIZES[0] + SIZES[1]
    assert train.add(built, parts[2:], 400) == SIZES[2]
    assert built.ntotal == sum(SIZES)
    tune.apply_params(built, "nprobe=16")
    new = shards[0][2][::50].astype(np.float32)
    similarities, ids = built.search(new, 1)
    np.testing.assert_array_equal(ids[:, 0], before + np.arange(0, SIZES[2], 50))
    assert np.all(similarities[:, 0] > 0.99)


@pytest.mark.parametrize("kind", ["path", "file", "memory"])
def test_write_read_round_trip(ivf, queries, tmp_path, kind):
    uri = {
        "path": str(tmp_path / "image.index"),
        "file": f"file://{tmp_path}/image.index",
        "memory": f"memory://index-{uuid.uuid4().hex}/image.index",
    }[kind]
    train.write_index(ivf, uri)
    back = train.read_index(uri)
    assert back.ntotal == ivf.ntotal and back.metric_type == faiss.METRIC_INNER_PRODUCT
    tune.apply_params(back, "nprobe=4")
    tune.apply_params(ivf, "nprobe=4")
    np.testing.assert_array_equal(back.search(queries, 10)[1], ivf.search(queries, 10)[1])
    if kind != "memory":
        assert os.listdir(tmp_path) == ["image.index"]  # no temporary file left


def test_set_threads():
    train.set_threads(IndexSettings(threads=1))
    assert faiss.omp_get_max_threads() == 1


def test_index_gpus_follows_the_device_setting(monkeypatch):
    assert train.index_gpus(IndexSettings(device="cpu")) == 0
    if not hasattr(faiss, "StandardGpuResources"):  # faiss-cpu: auto finds none, cuda names the missing build
        assert train.index_gpus(IndexSettings()) == 0
        with pytest.raises(ValueError, match="without GPU support: install faiss-gpu"):
            train.index_gpus(IndexSettings(device="cuda"))
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    assert train.index_gpus(IndexSettings()) == 2 and train.index_gpus(IndexSettings(device="cuda")) == 2
    assert train.index_gpus(IndexSettings(device="cpu")) == 0
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(ValueError, match=r"get_num_gpus\(\) is 0"):
        train.index_gpus(IndexSettings(device="cuda"))


class Cloned(list):
    used = None  # the last index handed out as a GPU index


@pytest.fixture
def stand_in_gpu(monkeypatch):
    """faiss as faiss-gpu on a machine with one GPU, its GPU flat index stood in by the CPU one (the same
    exact search): records what the build hands to the GPU."""
    cloned = Cloned()

    def index_cpu_to_all_gpus(cpu_index, co=None, ngpu=-1):
        cloned.append((type(cpu_index).__name__, cpu_index.d, cpu_index.metric_type, ngpu))
        cloned.used = cpu_index
        return cpu_index

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", type("Options", (), {}), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", index_cpu_to_all_gpus, raising=False)
    return cloned


def test_ivf_k_means_and_exact_search_run_on_the_gpu(parts, queries, truth, stand_in_gpu):
    settings = IndexSettings(index_key="IVF64,SQfp16")
    on_gpu, _ = train.build(parts, settings)
    assert stand_in_gpu == [("IndexFlat", D, faiss.METRIC_INNER_PRODUCT, 1)]  # the coarse k-means' assignments
    assert stand_in_gpu.used.ntotal == 64  # k-means searched it and left its 64 centroids in it
    ivf = faiss.extract_index_ivf(on_gpu)
    assert ivf.clustering_index is None  # not kept on the index: it is written as a CPU index
    on_cpu, _ = train.build(parts, IndexSettings(index_key="IVF64,SQfp16", device="cpu"))
    assert len(stand_in_gpu) == 1
    # the same k-means (same sample and seed, exact assignments either way): the same centroids and lists
    np.testing.assert_array_equal(
        ivf.quantizer.reconstruct_n(0, 64), faiss.extract_index_ivf(on_cpu).quantizer.reconstruct_n(0, 64)
    )
    for built in (on_gpu, on_cpu):
        tune.apply_params(built, "nprobe=64")
    np.testing.assert_array_equal(on_gpu.search(queries, 10)[1], on_cpu.search(queries, 10)[1])

    _, found = tune.exact_knn(queries, parts, 10, 1000, gpus=train.index_gpus(settings))
    assert stand_in_gpu[-1] == ("IndexFlat", D, faiss.METRIC_INNER_PRODUCT, 1)
    np.testing.assert_array_equal(found, truth)


def test_opq_ivf_pq_trains_its_coarse_k_means_on_the_gpu(parts, stand_in_gpu):
    built, _ = train.build(parts, IndexSettings(index_key="OPQ8_16,IVF16_HNSW32,PQ8x8", train_vectors=2000))
    assert stand_in_gpu == [("IndexFlat", 16, faiss.METRIC_INNER_PRODUCT, 1)]  # after OPQ: 16 dimensions
    assert stand_in_gpu.used.ntotal == 16 and built.ntotal == sum(SIZES)


def test_an_index_without_inverted_lists_trains_on_the_cpu(parts, stand_in_gpu):
    built, _ = train.build(parts, IndexSettings(index_key="HNSW32,SQ8"))  # needs training, has no k-means
    assert not stand_in_gpu and built.is_trained and built.ntotal == sum(SIZES)
