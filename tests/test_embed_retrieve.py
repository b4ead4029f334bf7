"""Stages `embed` and `retrieve` on the demo data with tiny CLAP."""

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from conftest import copy_run

from sonify.engine.executor import run_stage
from sonify.engine.keys import keyed_rng
from sonify.engine.store import TableStore
from sonify.media.audio import load_chunk
from sonify.retrieval.matrices import load_matrix
from sonify.stages import get_stage


@pytest.fixture
def base_run(full_run):
    return full_run


def _copy_run(base_run, tmp_path, *overrides):
    return copy_run(base_run, tmp_path, *overrides)


def test_embeddings_cover_usable_chunks_and_kept_concepts(base_run):
    cfg, _ = base_run
    store = TableStore(cfg.run.dir)
    ok_chunks = {r["id"] for r in store.read("audio_chunks").to_pylist() if r["status"] == "ok"}
    audio = store.read("audio_embeddings")
    assert set(audio.column("id").to_pylist()) == ok_chunks
    assert pa.types.is_fixed_size_list(audio.schema.field("embedding").type)
    assert audio.schema.field("embedding").type.value_type == pa.float16()
    kept = {r["id"] for r in store.read("kept_images").to_pylist() if r["kept"]}
    n_concepts = sum(r["n_concepts"] for r in store.read("concepts").to_pylist() if r["status"] == "ok" and r["image_id"] in kept)
    concepts = store.read("concept_embeddings")
    assert concepts.num_rows == n_concepts and set(concepts.column("image_id").to_pylist()) <= kept
    norms = duckdb.sql(f"SELECT list_dot_product(embedding::FLOAT[], embedding::FLOAT[]) AS n "
                       f"FROM read_parquet('{store.table_dir('audio_embeddings')}/*.parquet')").fetchnumpy()["n"]
    assert np.allclose(norms, 1.0, atol=5e-3)  # float16 storage, readable as numbers in DuckDB


def test_matrix_file_matches_the_table_sorted_by_id(base_run):
    cfg, _ = base_run
    store = TableStore(cfg.run.dir)
    mat, ids = load_matrix(store, "audio_embeddings")
    table = store.read("audio_embeddings").sort_by("id")
    assert ids == table.column("id").to_pylist() and mat.dtype == np.float16
    assert np.array_equal(np.asarray(mat), np.array(table.column("embedding").to_pylist(), dtype=np.float16))


def test_chunks_are_decoded_from_the_source_at_48k(base_run):
    from sonify.models.clap import ClapEmbedder, normalise

    cfg, _ = base_run
    store = TableStore(cfg.run.dir)
    chunk = next(r for r in store.read("audio_chunks").to_pylist() if r["status"] == "ok" and r["sample_rate"] == 22050)
    clap = ClapEmbedder(cfg.models.clap, cfg.models.tiny_dir, "cpu", "float32")
    direct, _, _ = normalise(clap.embed_audio([load_chunk(chunk["uri"], chunk["start_frame"], chunk["num_frames"], 48000)]))
    stored = next(r for r in store.read("audio_embeddings").to_pylist() if r["id"] == chunk["id"])["embedding"]
    assert np.allclose(direct[0], np.array(stored, np.float32), atol=2e-3)


def test_nan_zero_and_undecodable_become_error_rows(base_run, tmp_path, monkeypatch):
    from sonify.models.clap import ClapEmbedder
    from sonify.stages.embed import EmbedStage

    cfg = _copy_run(base_run, tmp_path)
    work = EmbedStage.work_list(cfg, TableStore(cfg.run.dir))
    audio = [r for r in work.to_pylist() if r["kind"] == "audio"][:3]
    audio[2]["uri"] = str(tmp_path / "gone.wav")
    real = ClapEmbedder.embed_audio

    def broken(self, clips):
        out = real(self, clips)
        out[0] = np.nan
        out[1] = 0.0
        return out

    monkeypatch.setattr(ClapEmbedder, "embed_audio", broken)
    rows = EmbedStage(cfg).process_batch(pa.Table.from_pylist(audio, schema=work.schema))["audio_embeddings"].to_pylist()
    errors = {r["id"]: r["error"].split(":")[0] for r in rows}
    assert errors == {audio[0]["id"]: "bad_embedding", audio[1]["id"]: "bad_embedding", audio[2]["id"]: "decode_error"}
    assert all(r["embedding"] is None for r in rows)


def test_matches_follow_algorithm_1_exactly(base_run, paper_algorithm1):
    cfg, _ = base_run
    store = TableStore(cfg.run.dir)
    pool, chunk_ids = load_matrix(store, "audio_embeddings")
    queries, query_ids = load_matrix(store, "concept_embeddings")
    row = {i: n for n, i in enumerate(query_ids)}
    matches = store.read("matches").to_pylist()
    assert len(matches) == len(query_ids) and all(m["status"] == "ok" for m in matches)
    for m in matches:
        eligible, choice = paper_algorithm1(np.asarray(queries[row[m["id"]]], np.float32), np.asarray(pool, np.float32),
                                              cfg.stages.retrieve.k, keyed_rng(cfg.run.seed, m["image_id"], m["vlm"], m["concept_index"]))
        assert m["chunk_id"] == chunk_ids[choice] and m["n_eligible"] == eligible.size and m["k"] == cfg.stages.retrieve.k


def _matches(cfg):
    return {r["id"]: (r["chunk_id"], r["n_eligible"]) for r in TableStore(cfg.run.dir).read("matches").to_pylist()}


def test_matches_do_not_depend_on_blocks_batches_or_partitions(base_run, tmp_path):
    cfg, _ = base_run
    other = _copy_run(base_run, tmp_path, "stages.retrieve.partition_rows=5", "stages.retrieve.batch_size=3",
                      "stages.retrieve.block_mb=0")
    assert other.stages.retrieve.block_mb == 0  # one query per block
    run = run_stage(get_stage("retrieve"), other, progress_bar=False)
    assert run.computed > 3
    assert _matches(other) == _matches(cfg)


def test_seed_changes_choices_but_not_eligibility(base_run, tmp_path):
    cfg, _ = base_run
    other = _copy_run(base_run, tmp_path, "run.seed=123")
    run_stage(get_stage("retrieve"), other, progress_bar=False)
    a, b = _matches(cfg), _matches(other)
    assert {k: v[1] for k, v in a.items()} == {k: v[1] for k, v in b.items()}
    assert any(a[k][0] != b[k][0] for k in a)


def test_pool_smaller_than_k_and_ablation_rows(base_run, tmp_path):
    other = _copy_run(base_run, tmp_path, "stages.retrieve.k=100000", "stages.retrieve.ablation_modes=[argmax]")
    run_stage(get_stage("retrieve"), other, progress_bar=False)
    store = TableStore(other.run.dir)
    pool_size = store.read("audio_embeddings").num_rows
    assert {r["k"] for r in store.read("matches").to_pylist()} == {pool_size}
    abl = store.read("match_ablations").to_pylist()
    assert len(abl) == store.read("matches").num_rows and all(r["mode"] == "argmax" and r["rank"] == 0 for r in abl)


@pytest.mark.ray
def test_matches_do_not_depend_on_worker_count(base_run, tmp_path):
    import ray

    from sonify.engine.cluster import connect_ray

    cfg, _ = base_run
    other = _copy_run(base_run, tmp_path, "run.executor=ray", "stages.retrieve.concurrency=2", "stages.retrieve.partition_rows=9")
    connect_ray(other)
    try:
        run = run_stage(get_stage("retrieve"), other, progress_bar=False)
    finally:
        ray.shutdown()
    assert run.computed > 2 and _matches(other) == _matches(cfg)
