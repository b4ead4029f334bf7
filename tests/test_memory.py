"""Memory at scale: retrieve workers of one node share one copy of the pool; `sonify.mix` streams a release."""

import hashlib
import shutil
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

from sonify.engine.partitions import work_table
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
                variant="v", concept_index=0, text="a dog", model="m")
    build_matrix(store, "audio_embeddings", float32=True)    # as the embed_audio stage's finalize does
    build_matrix(store, "concept_embeddings")
    pool_bytes = pool_path(store, "audio_embeddings").stat().st_size
    assert pool_bytes > POOL_ROWS * DIM * 4
    work = work_table(RetrieveStage.work_list(cfg, store))
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


def test_each_matrix_row_holds_the_vector_of_the_id_beside_it(tmp_path):
    """Ids unsorted within and across partitions, error rows between them: row r of the matrix is the
    vector stored for ids[r], and error rows take no row."""
    from sonify.retrieval.matrices import matrix_paths

    import pyarrow.parquet as pq

    store, rng = TableStore(tmp_path), np.random.default_rng(3)
    stored = {}
    names = rng.permutation([f"c{i:04d}" for i in range(90)])
    for n, part in enumerate(np.array_split(names, 3)):
        vec = rng.standard_normal((len(part), DIM)).astype(np.float16)
        status = ["ok" if i % 4 else "decode_error" for i in range(len(part))]
        stored.update({c: v for c, v, s in zip(part, vec, status) if s == "ok"})
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), DIM)
        store.write_partition("audio_embeddings", f"part-{n}", pa.table({"id": list(part), "embedding": emb, "status": status}))
    build_matrix(store, "audio_embeddings")
    npy, ids_path, _ = matrix_paths(store, "audio_embeddings")
    mat, ids = np.load(npy), pq.read_table(ids_path)
    assert ids.column("id").to_pylist() == sorted(stored) and ids.column("row").to_pylist() == list(range(len(stored)))
    for r, c in enumerate(ids.column("id").to_pylist()):
        assert np.array_equal(mat[r], stored[c]), c


def _manifest(folder, rows, distinct=48, seed=0):
    """A valid release manifest of `rows` mixtures over a few generated 16 kHz files (0.1 s mixtures of two
    components), cycling through `distinct` combinations; each hash computed here from the definition:
    components summed in float64 with 10^(gain/20), rounded to 24-bit integers, sha256 of the int32 LE samples."""
    import pyarrow.parquet as pq
    import soundfile as sf

    from sonify.mixing.release import RELEASE_ROW_GROUP, RELEASE_SCHEMA

    rng = np.random.default_rng(seed)
    audio = folder / "audio" / "sfx"
    audio.mkdir(parents=True)
    files = {f"f{n}.wav": (0.2 * rng.standard_normal(16000)).astype(np.float32) for n in range(3)}
    for name, x in files.items():
        sf.write(audio / name, x, 16000, subtype="FLOAT")
    combos = []
    for c in range(distinct):
        comps = [{"source": "sfx", "uri": f"f{(c + j) % 3}.wav", "source_rate": 16000, "start_frame": int(s),
                  "num_frames": 1600, "offset": s / 16000, "duration": 0.1, "concept_index": j, "text": "x",
                  "cosine": 0.5, "target_lufs": -23.0, "measured_lufs": -20.0, "gain_db": float(g)}
                 for j, (s, g) in enumerate(zip(rng.integers(0, 14000, 2), rng.uniform(-9, 0, 2)))]
        mix = sum(files[k["uri"]][k["start_frame"]:k["start_frame"] + 1600].astype(np.float64) * 10.0 ** (k["gain_db"] / 20.0)
                  for k in comps)
        q = np.clip(np.round(mix * 2 ** 23), -2 ** 23, 2 ** 23 - 1).astype("<i4")
        combos.append({"mix_id": "", "path": "", "image_id": f"img{c}", "image_source": "s", "image_uri": "x.jpg",
                       "variant": "v", "sample_rate": 16000, "chunk_seconds": 0.1, "duration": 0.1, "mix_gain_db": 0.0,
                       "lufs": -23.0, "peak_dbfs": -3.0, "pcm24_sha256": hashlib.sha256(q.tobytes()).hexdigest(),
                       "flac_sha256": None, "components": comps})
    base = pa.Table.from_pylist(combos, schema=RELEASE_SCHEMA)
    table = base.take(np.arange(rows) % distinct)
    ids = pa.array([f"m{i:07d}" for i in range(rows)])
    table = table.set_column(0, "mix_id", ids).set_column(1, "path", pa.array([f"{i % 97}/m{i:07d}.flac" for i in range(rows)]))
    path = folder / "release.parquet"
    pq.write_table(table, path, row_group_size=RELEASE_ROW_GROUP)
    return path, folder / "audio"


def _mix_cli(*args):
    """`python -m sonify.mix ARGS` in a child of a fresh interpreter: (its exit code, stdout, peak RSS in MiB of
    the command and the processes it started, from the wrapper's RUSAGE_CHILDREN)."""
    import subprocess

    wrapper = ("import resource, subprocess, sys; p = subprocess.run([sys.executable, '-m', 'sonify.mix', *sys.argv[1:]], "
               "capture_output=True, text=True); sys.stderr.write(p.stderr); "
               "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.stdout)")
    p = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=900)
    code, rss = p.stdout.splitlines()[0].split()
    return int(code), p.stdout, int(rss) / 1024, p.stderr


def _in_flight(stdout):
    import re

    peak, bound = re.search(r"batches in flight: at most (\d+), bound (\d+)", stdout).groups()
    return int(peak), int(bound)


@pytest.mark.slow        # ~2.5 min on 2 shared cores: 110K mixtures rendered
def test_mix_streams_a_100k_row_release_with_bounded_memory_and_tasks_in_flight(tmp_path):
    """--verify renders every mixture (in memory) through the real reading and scheduling loop: the peak RSS
    at 100K rows stays within a small margin of 10K rows', and never more than two batches per worker run.
    (Measured: 170 and 176 MiB; with the manifest read whole as an Arrow table, 162 and 211 MiB, and this fails.)"""
    import pyarrow.parquet as pq

    small, audio = _manifest(tmp_path / "small", 10_000)
    big, audio_big = _manifest(tmp_path / "big", 100_000)
    runs = {}
    for name, manifest, root in (("small", small, audio), ("big", big, audio_big)):
        out = tmp_path / f"out_{name}"
        code, stdout, rss, err = _mix_cli("--manifest", str(manifest), "--audio-root", str(root), "--out", str(out),
                                          "--verify", "--workers", "2", "--no-progress")
        assert code == 0, err[-2000:]
        report = pq.read_table(out / "render_report.parquet")
        assert report.num_rows == pq.ParquetFile(manifest).metadata.num_rows
        assert set(report.column("status").to_pylist()) == {"ok"} and not any(out.rglob("*.flac"))
        runs[name] = (rss, _in_flight(stdout))
    (rss_small, (peak_small, bound_small)), (rss_big, (peak_big, bound_big)) = runs["small"], runs["big"]
    assert bound_small == bound_big == 4 and 1 <= peak_small <= 4 and 1 <= peak_big <= 4
    assert rss_big < rss_small + 24, (rss_small, rss_big)      # MiB; ten times the rows


def test_mix_keeps_at_most_two_batches_per_worker_in_flight_and_writes_every_mixture(tmp_path):
    """A manifest of 25 batches rendered to files by 2 workers: the run reports its peak of batches in flight
    (counted where they are submitted and collected) within its bound, and every file holds its mixture."""
    import pyarrow.parquet as pq
    import soundfile as sf

    manifest, audio = _manifest(tmp_path, 400, distinct=8)
    out = tmp_path / "out"
    code, stdout, _, err = _mix_cli("--manifest", str(manifest), "--audio-root", str(audio), "--out", str(out),
                                    "--workers", "2", "--no-progress")
    assert code == 0, err[-2000:]
    peak, bound = _in_flight(stdout)
    assert bound == 4 and 1 <= peak <= bound
    rows = pq.read_table(manifest).to_pylist()
    for r in rows[:8] + rows[-3:]:
        pcm = sf.read(out / r["path"], dtype="int32")[0] >> 8
        assert hashlib.sha256(pcm.astype("<i4").tobytes()).hexdigest() == r["pcm24_sha256"]
    assert len(list(out.rglob("*.flac"))) == 400


def test_verify_reports_a_mixture_that_does_not_match_and_writes_no_audio(tmp_path):
    import pyarrow.parquet as pq

    from sonify.mix import main as mix_main

    manifest, audio = _manifest(tmp_path, 40, distinct=4)
    table = pq.read_table(manifest)
    hashes = table.column("pcm24_sha256").to_pylist()
    hashes[3], hashes[7] = "0" * 64, None
    pq.write_table(table.set_column(table.schema.get_field_index("pcm24_sha256"), "pcm24_sha256", pa.array(hashes)), manifest)
    out = tmp_path / "out"
    assert mix_main(["--manifest", str(manifest), "--audio-root", str(audio), "--out", str(out), "--verify",
                     "--workers", "1", "--no-progress"]) == 1
    report = {r["mix_id"]: r for r in pq.read_table(out / "render_report.parquet").to_pylist()}
    bad = {i for i, r in report.items() if r["status"] != "ok"}
    assert bad == {"m0000003", "m0000007"} and "differs" in report["m0000003"]["error"]
    assert "nothing to verify against" in report["m0000007"]["error"] and not any(out.rglob("*.flac"))
