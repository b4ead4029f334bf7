"""Memory at scale: retrieve workers of one node share one copy of the pool; `sonify.mix` streams a release."""

import shutil
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

from sonify.engine.store import TableStore
from sonify.retrieval.matrices import build_matrix, pool_path

POOL_ROWS, DIM = 100_000, 512      # float32: 205 MB, large enough to see in a process's memory


def _embeddings(store, table, ids, rng, prefix="part", **cols):
    """A table of unit float16 vectors written as the embed stage writes it, in 4 partitions."""
    vec = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float16)
    for n, part in enumerate(np.array_split(np.arange(len(ids)), 4)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vec[part].ravel()), DIM)
        t = pa.table({"id": pa.array([ids[i] for i in part]), "embedding": emb, "status": ["ok"] * len(part),
                      **{k: [v] * len(part) for k, v in cols.items()}})
        store.write_partition(table, f"{prefix}-{n}", t)


def _private_and_resident():
    """(anonymous = resident minus file-backed and shared pages, resident) bytes of this process.

    A mapped file's pages are the page cache's, one copy per node however many processes map them;
    a copy of the pool (np.load without mmap, astype) is anonymous memory of the process that made it.
    (USS would count file pages mapped by one process only as private, so it depends on timing.)
    """
    import psutil

    info = psutil.Process().memory_info()
    return info.rss - info.shared, info.rss


class _Retriever:
    """A retrieve worker as the executor runs one: its own process, the stage built from the run's config."""

    def __init__(self, cfg):
        import pyarrow.parquet as pq

        from sonify.retrieval.algorithm import BlockedRetriever, choose
        from sonify.retrieval.matrices import matrix_paths
        from sonify.stages.retrieve import RetrieveStage
        # libraries loaded and their first-call buffers (torch's BLAS, Arrow's allocator and Parquet reader
        # threads) made before the baseline: only what the pool adds is measured
        warm = BlockedRetriever(np.eye(64, dtype=np.float32), 4, "cpu")
        for vals, idx, ties in warm.topk(np.eye(64, dtype=np.float32)[:8]):
            choose(vals, idx, "ssr", np.random.default_rng(0))
        pq.read_table(matrix_paths(TableStore(cfg.run.dir), "concept_embeddings")[1])
        self.before = _private_and_resident()
        self.stage = RetrieveStage(cfg)
        self.built = _private_and_resident()

    def run(self, batch):
        import os

        out = self.stage.process_batch(batch)["matches"]
        after = _private_and_resident()
        return {"pid": os.getpid(), "anon": after[0] - self.before[0], "rss": after[1] - self.before[1],
                "built": self.built[0] - self.before[0],
                "chunks": out.column("chunk_id").to_pylist()}


@pytest.mark.slow        # ~40 s and 400 MB of files: a 205 MB pool, two actors
@pytest.mark.ray
def test_two_retrieve_actors_on_one_node_hold_the_pool_once(make_cfg):
    """Each actor's private memory grows by a small fraction of the pool while its resident memory
    takes in the whole pool (the matmul reads every row): the pages are the file's, shared.
    (Measured: +18 and +24 MB anonymous per actor for a 205 MB pool; with the pool loaded by a plain
    np.load, +229 MB each, and this test fails.)"""
    import ray

    from sonify.stages.retrieve import RetrieveStage

    cfg = make_cfg("stages.retrieve.device=cpu")
    store, rng = TableStore(cfg.run.dir), np.random.default_rng(0)
    _embeddings(store, "audio_embeddings", [f"c{i:06d}" for i in range(POOL_ROWS)], rng, file_id="f", model="m")
    _embeddings(store, "concept_embeddings", [f"i{i:03d}-v-0" for i in range(40)], rng, concept_id="x", image_id="i",
                vlm="v", concept_index=0, text="a dog", model="m")
    build_matrix(store, "audio_embeddings", float32=True)    # as the embed_audio stage's finalize does
    build_matrix(store, "concept_embeddings")
    pool_bytes = pool_path(store, "audio_embeddings").stat().st_size
    assert pool_bytes > POOL_ROWS * DIM * 4
    work = RetrieveStage.work_list(cfg, store)
    temp = tempfile.mkdtemp(prefix="ray_pool_", dir="/tmp")   # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=temp)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray workers cannot import a test module
    try:
        actor = ray.remote(num_cpus=1)(_Retriever)
        workers = [actor.remote(cfg) for _ in range(2)]
        results = ray.get([w.run.remote(work) for w in workers])
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert results[0]["pid"] != results[1]["pid"] and results[0]["chunks"] == results[1]["chunks"]
    for r in results:
        assert r["rss"] > 0.8 * pool_bytes, r          # the whole pool is mapped in and was read
        assert r["anon"] < 0.25 * pool_bytes, r        # but it is not this process's own copy


def test_the_pool_is_a_read_only_map_of_the_exact_float32_rows_and_follows_a_rebuild(tmp_path):
    from sonify.retrieval.matrices import load_pool, matrix_paths

    store, rng = TableStore(tmp_path), np.random.default_rng(1)
    ids = [f"c{i:04d}" for i in range(300)]
    _embeddings(store, "audio_embeddings", ids, rng, file_id="f", model="m")
    build_matrix(store, "audio_embeddings", float32=True)
    pool, pool_ids = load_pool(store, "audio_embeddings")
    half = np.load(matrix_paths(store, "audio_embeddings")[0])
    assert isinstance(pool, np.memmap) and not pool.flags.writeable and pool.dtype == np.float32
    assert np.array_equal(pool, half.astype(np.float32)) and pool_ids.to_pylist() == sorted(ids)
    # new rows: the matrix is rebuilt and the float32 copy with it (never the old rows with new ids)
    _embeddings(store, "audio_embeddings", [f"d{i:04d}" for i in range(40)], rng, prefix="new", file_id="f", model="m")
    build_matrix(store, "audio_embeddings", float32=True)
    pool, pool_ids = load_pool(store, "audio_embeddings")
    assert pool.shape[0] == 340 and np.array_equal(pool, np.load(matrix_paths(store, "audio_embeddings")[0]).astype(np.float32))
