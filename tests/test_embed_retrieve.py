"""Stages `embed` and `retrieve` on the demo data with tiny CLAP."""

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import copy_run

from sonify.engine.executor import run_stage
from sonify.engine.keys import keyed_rng
from sonify.engine.partitions import work_table
from sonify.engine.store import TableStore
from sonify.media.audio import load_chunk
from sonify.retrieval.matrices import load_matrix
from sonify.sources import SourcePaths
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
    direct, _, _ = normalise(clap.embed_audio([load_chunk(SourcePaths.of(cfg, "audio").locate(chunk), chunk["start_frame"], chunk["num_frames"], 48000,
                                                          cfg.stages.audio.chunk_seconds)]))
    stored = next(r for r in store.read("audio_embeddings").to_pylist() if r["id"] == chunk["id"])["embedding"]
    assert np.allclose(direct[0], np.array(stored, np.float32), atol=2e-3)


def _clap_inputs(cfg, rows, monkeypatch):
    """The clips the embed stage hands CLAP for these work rows."""
    from sonify.models.clap import ClapEmbedder
    from sonify.stages.embed import EmbedAudioStage

    seen = []
    real = ClapEmbedder.embed_audio

    def spy(self, clips, *keys):
        seen.extend(np.array(c, copy=True) for c in clips)
        return real(self, clips, *keys)

    monkeypatch.setattr(ClapEmbedder, "embed_audio", spy)
    columns = ("id", "file_id", "source", "uri", "start_frame", "num_frames")
    EmbedAudioStage(cfg).process_batch(pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows]))
    return seen


def test_clap_hears_the_last_chunk_zero_padded_as_mixed(base_run, monkeypatch):
    cfg, _ = base_run
    store = TableStore(cfg.run.dir)
    last = next(r for r in store.read("audio_chunks").to_pylist() if r["status"] == "ok" and r["padding"] > 0.5)
    (clip,) = _clap_inputs(cfg, [last], monkeypatch)
    secs = cfg.stages.audio.chunk_seconds
    assert clip.shape == (int(round(48000 * secs)),)                     # the full chunk, not the short tail
    real = int(round(last["duration"] * 48000))
    assert not clip[real + 64:].any() and np.abs(clip[: real - 64]).max() > 0   # zero padding, no repeat
    source = SourcePaths.of(cfg, "audio").locate(last)
    mixed = load_chunk(source, last["start_frame"], last["num_frames"], cfg.stages.mix.sample_rate, secs)
    assert mixed.size / cfg.stages.mix.sample_rate == clip.size / 48000  # the mix uses the same 5 s
    mixed_real = int(round(last["duration"] * cfg.stages.mix.sample_rate))
    assert not mixed[mixed_real + 32:].any()                           # padded with zeros there too
    assert np.array_equal(clip, load_chunk(source, last["start_frame"], last["num_frames"], 48000, secs))


def test_paper16k_gives_clap_16k_summed_mono(base_run, tmp_path, monkeypatch):
    import soundfile as sf
    import soxr
    from omegaconf import OmegaConf

    cfg, _ = base_run
    sr, n = 44100, 44100 * 3
    t = np.arange(n) / sr
    left, right = 0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 5000 * t)   # 5 kHz: inside 16 kHz's band
    right[: sr] += 0.1 * np.sin(2 * np.pi * 11000 * t[: sr])                               # 11 kHz: above 8 kHz Nyquist
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1).astype(np.float32), sr, subtype="FLOAT")
    row = {"id": "x-00000", "file_id": "x", "source": "t", "uri": str(path), "start_frame": 0, "num_frames": n}
    paper = OmegaConf.merge(cfg, {"stages": {"embed": {"audio_input": "paper16k"}}})
    (clip,) = _clap_inputs(paper, [row], monkeypatch)
    # the paper's A.7 path written out: sum the channels, 16 kHz, then CLAP's 48 kHz, zero-padded to 5 s
    summed = (np.float32(left) + np.float32(right)).astype(np.float32)
    want = soxr.resample(soxr.resample(summed, sr, 16000, quality="HQ"), 16000, 48000, quality="HQ")
    want = np.pad(want, (0, 5 * 48000 - want.size))
    assert clip.shape == want.shape and np.allclose(clip, want, atol=1e-6)
    spectrum = np.abs(np.fft.rfft(clip[: 48000]))
    freqs = np.fft.rfftfreq(48000, 1 / 48000)
    assert spectrum[freqs > 8100].max() < 1e-3 * spectrum.max()       # band-limited by the 16 kHz pool
    (default,) = _clap_inputs(cfg, [row], monkeypatch)
    mean = ((np.float32(left) + np.float32(right)) / 2).astype(np.float32)             # the default: averaged, at 48 kHz
    want_default = soxr.resample(mean, sr, 48000, quality="HQ")
    want_default = np.pad(want_default, (0, 5 * 48000 - want_default.size))
    assert np.allclose(default, want_default, atol=1e-6) and not np.allclose(default, clip, atol=1e-2)
    assert cfg.stages.embed.audio_input == "source48k"


def test_audio_input_is_a_checked_choice_recorded_in_the_run_config(make_cfg, tmp_path):
    from omegaconf import OmegaConf

    from sonify.engine.config import save_config
    from sonify.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.embed.audio_input.*source48k, paper16k"):
        make_cfg("stages.embed.audio_input=16k")
    cfg = make_cfg("stages.embed.audio_input=paper16k")
    save_config(cfg, tmp_path / "config.yaml")
    assert OmegaConf.load(tmp_path / "config.yaml").stages.embed.audio_input == "paper16k"
    from sonify.stages.embed import EmbedAudioStage
    assert EmbedAudioStage.lineage(cfg) != EmbedAudioStage.lineage(make_cfg())


def test_nan_zero_and_undecodable_become_error_rows(base_run, tmp_path, monkeypatch):
    from sonify.models.clap import ClapEmbedder
    from sonify.stages.embed import EmbedAudioStage

    cfg = _copy_run(base_run, tmp_path)
    work = work_table(EmbedAudioStage.work_list(cfg, TableStore(cfg.run.dir)))
    audio = work.to_pylist()[:3]
    audio[2]["uri"] = str(tmp_path / "gone.wav")
    real = ClapEmbedder.embed_audio

    def broken(self, clips, *keys):
        out = real(self, clips, *keys)
        out[0] = np.nan
        out[1] = 0.0
        return out

    monkeypatch.setattr(ClapEmbedder, "embed_audio", broken)
    rows = EmbedAudioStage(cfg).process_batch(pa.Table.from_pylist(audio, schema=work.schema))["audio_embeddings"].to_pylist()
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
                                              cfg.stages.retrieve.k, keyed_rng(cfg.run.seed, m["image_id"], m["variant"], m["concept_index"]))
        assert m["chunk_id"] == chunk_ids[choice] and m["n_eligible"] == eligible.size and m["k"] == cfg.stages.retrieve.k


def _matches(cfg):
    return {r["id"]: (r["chunk_id"], r["n_eligible"]) for r in TableStore(cfg.run.dir).read("matches").to_pylist()}


def test_matches_do_not_depend_on_blocks_batches_or_partitions(base_run, tmp_path):
    cfg, _ = base_run
    other = _copy_run(base_run, tmp_path, "stages.retrieve.partition_rows=5", "stages.retrieve.batch_size=3",
                      "stages.retrieve.block_mb=0")
    assert other.stages.retrieve.block_mb == 0  # one query per block
    assert run_stage(get_stage("retrieve"), other, progress_bar=False).computed == 0   # runtime settings: nothing stale
    store = TableStore(other.run.dir)
    for t in ("matches", "match_ablations"):
        store.remove_partitions(t, store.partitions(t))
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
def test_matches_do_not_depend_on_worker_count(base_run, tmp_path, ray_head):
    import ray

    from sonify.engine.cluster import connect_ray

    cfg, _ = base_run
    other = _copy_run(base_run, tmp_path, "run.executor=ray", f"ray.address={ray_head}", "stages.retrieve.concurrency=2",
                      "stages.retrieve.partition_rows=9")
    store = TableStore(other.run.dir)
    for t in ("matches", "match_ablations"):   # recomputed from scratch, cut into partitions of 9
        store.remove_partitions(t, store.partitions(t))
    connect_ray(other)
    try:
        run = run_stage(get_stage("retrieve"), other, progress_bar=False)
    finally:
        ray.shutdown()
    assert run.computed > 2 and _matches(other) == _matches(cfg)


def _by_variant(cfg):
    out = {}
    for r in TableStore(cfg.run.dir).read("matches").to_pylist():
        out.setdefault(r["id"].rsplit("-", 1)[0], {})[r["concept_index"]] = r
    return out


def test_retrieve_partitions_hold_whole_variants(base_run, tmp_path):
    from sonify.stages.retrieve import RetrieveStage

    cfg, _ = base_run
    from sonify.engine.partitions import PlanReader, plan, planner_connection, write_work

    work = write_work(RetrieveStage.work_list(cfg, TableStore(cfg.run.dir)), tmp_path / "work.parquet")
    n = pq.read_metadata(work).num_rows
    for rows in (1, 2, 4, 7):
        planned = plan(planner_connection(), work, tmp_path / "plan.parquet", "fp", [], rows,
                       together_column=RetrieveStage.keep_together)
        reader, part_of = PlanReader(planned.path), {}
        for p in planned.partitions:
            for cid in reader.read(p.offset, p.rows).column("concept_id").to_pylist():
                assert part_of.setdefault(cid, p.name) == p.name     # a variant never spans two
        assert max(p.rows for p in planned.partitions) <= rows + 2     # a cut waits for the variant's end (3 concepts at most)
        assert sum(p.rows for p in planned.partitions) == n
    assert RetrieveStage.keep_together == "concept_id" and RetrieveStage.whole_partition


def test_distinct_within_variant_never_repeats_while_the_eligible_set_allows(base_run, tmp_path):
    cfg, _ = base_run
    paper = _copy_run(base_run, tmp_path / "paper", "stages.retrieve.k=8")
    distinct = _copy_run(base_run, tmp_path / "distinct", "stages.retrieve.k=8", "stages.retrieve.distinct_within_variant=true",
                         "stages.retrieve.partition_rows=4")
    for c in (paper, distinct):
        assert not run_stage(get_stage("retrieve"), c, progress_bar=False).failed
    a, b = _by_variant(paper), _by_variant(distinct)
    assert a.keys() == b.keys()
    repeats = 0
    for v, ms in b.items():
        chunks = [ms[i]["chunk_id"] for i in sorted(ms)]
        paper_chunks = [a[v][i]["chunk_id"] for i in sorted(ms)]
        repeats += len(set(paper_chunks)) < len(paper_chunks)
        if len(set(chunks)) < len(chunks):        # only where the eligible set ran out
            assert any("distinct_exhausted" in (m["fallback"] or "") for m in ms.values()), v
        if len(set(paper_chunks)) == len(paper_chunks):
            assert chunks == paper_chunks          # no collision: exactly the paper's matches
    assert repeats > 0, "the paper's rule repeats chunks in this run: the check above can fail"
    assert any("distinct_redraw" in (m["fallback"] or "") for ms in b.values() for m in ms.values())
