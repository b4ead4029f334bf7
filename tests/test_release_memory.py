"""Memory at the edges: the release (DuckDB COPY) and the HF export (batched joins) stay flat from 10K to
100K mixtures.

The run's tables are built directly from their declared schemas (no audio is decoded, every mixture
and image points at one small file), then each edge runs in its own process under `run.plan_memory`
and reports its peak resident anonymous memory (mapped files' pages belong to the page cache). Holding
the tables' rows, as the release and the export did before, grows with the run; streaming does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sonify.engine.schemas import table_spec

COMPONENTS = 3            # per mixture
PARTITION_ROWS = 10_000   # rows per Parquet partition, as a stage writes them
PLAN_MEMORY = "128MB"


def _array(values, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.Array):
        return values
    a = pa.array(values, type_)
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a   # numpy strings may come back chunked


def _filled(name: str, n: int, given: dict) -> pa.Table:
    """Table `name` with `n` rows: the `given` columns, the others a constant of their declared type."""
    schema = table_spec(name).schema
    cols = []
    for f in schema:
        if f.name in given:
            cols.append(_array(given[f.name], f.type))
        elif pa.types.is_list(f.type):
            cols.append(pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.nulls(0, f.type.value_type)))
        elif pa.types.is_string(f.type):
            cols.append(pa.repeat(pa.scalar(f"{f.name} of {name}"), n))
        elif pa.types.is_boolean(f.type):
            cols.append(pa.repeat(pa.scalar(True), n))
        else:
            cols.append(pa.repeat(pa.scalar(1, f.type), n))
    return pa.Table.from_arrays(cols, schema=schema)


def _write(run: Path, name: str, table: pa.Table) -> None:
    d = run / "manifests" / name
    d.mkdir(parents=True, exist_ok=True)
    for i in range(0, table.num_rows, PARTITION_ROWS):
        pq.write_table(table.slice(i, PARTITION_ROWS), d / f"part-{i // PARTITION_ROWS:05d}.parquet", compression="zstd")


def _components(mix_ids: np.ndarray) -> pa.Array:
    """Each mixture's components: concept index 0..2, all included, text and paths unique per component."""
    spec = table_spec("mixes").schema.field("components").type.value_type
    n = len(mix_ids) * COMPONENTS
    k = np.tile(np.arange(COMPONENTS, dtype=np.int8), len(mix_ids))
    key = np.char.add(np.repeat(mix_ids, COMPONENTS).astype(str), np.char.add("-", k.astype(str)))
    given = {"concept_index": k, "text": np.char.add("the sound of ", key), "chunk_id": np.char.add("chunk-", key),
             "source": np.repeat("sfx", n), "uri": np.char.add(key, ".wav"),
             "source_rate": np.full(n, 16000, np.int32), "start_frame": np.arange(n, dtype=np.int64),
             "num_frames": np.full(n, 80000, np.int64), "offset": np.zeros(n), "duration": np.full(n, 5.0),
             "cosine": np.full(n, 0.3, np.float32), "pcm_sha256": np.repeat("0" * 64, n),
             "target_lufs": np.full(n, -25.0), "measured_lufs": np.full(n, -30.0), "gain_db": np.full(n, 5.0),
             "included": np.ones(n, bool), "reason": pa.nulls(n, pa.string())}
    structs = pa.StructArray.from_arrays([_array(given[f.name], f.type) for f in spec], fields=list(spec))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n + 1, COMPONENTS, dtype=np.int32)), structs)


def make_run(run: Path, n: int, media: Path) -> int:
    """A run folder with `n` ok mixtures (their images, concepts, captions, matches, shard index);
    returns the bytes of those tables as Arrow (what holding them whole takes, before any Python rows)."""
    import soundfile as sf
    from PIL import Image

    (run / "mixes").mkdir(parents=True, exist_ok=True)
    sf.write(run / "mixes" / "one.flac", np.zeros(1600, np.float32), 16000)
    Image.new("RGB", (4, 4)).save(media / "one.png")
    (run / "config.yaml").write_text(json.dumps({"run": {"plan_memory": PLAN_MEMORY},
                                                 "sources": {"images": [{"name": "pics", "kind": "folder", "path": str(media)}]}}))
    i = np.arange(n)
    image_ids = np.char.add("img-", np.char.zfill(i.astype(str), 7))
    mix_ids = np.char.add("v-", image_ids)
    match_ids = np.char.add(np.repeat(mix_ids, COMPONENTS), np.char.add("-", np.tile(np.arange(COMPONENTS), n).astype(str)))
    m = n * COMPONENTS
    concept = table_spec("concepts").schema.field("concepts").type.value_type
    texts = _array(np.char.add("the sound of ", match_ids), pa.string())
    tables = {
        "images": _filled("images", n, {"id": image_ids, "source": np.repeat("pics", n), "uri": np.repeat("one.png", n),
                                        "tar_offset": pa.nulls(n, pa.int64()),
                                        "nbytes": np.full(n, (media / "one.png").stat().st_size), "status": np.repeat("ok", n)}),
        "mixes": _filled("mixes", n, {"id": mix_ids, "image_id": image_ids, "variant": np.repeat("v", n),
                                      "components": _components(mix_ids), "path": np.repeat("mixes/one.flac", n),
                                      "sample_rate": np.full(n, 16000, np.int32), "status": np.repeat("ok", n),
                                      "error": pa.nulls(n, pa.string())}),
        "matches": _filled("matches", m, {"id": match_ids, "concept_index": np.tile(np.arange(COMPONENTS, dtype=np.int8), n),
                                          "score": np.full(m, 0.5, np.float32), "threshold": np.full(m, 0.4, np.float32),
                                          "n_eligible": np.full(m, 7, np.int32), "status": np.repeat("ok", m)}),
        "concepts": _filled("concepts", n, {"id": mix_ids, "image_id": image_ids, "concepts": pa.ListArray.from_arrays(
            pa.array(np.arange(0, m + 1, COMPONENTS, dtype=np.int32)),
            pa.StructArray.from_arrays([texts, texts, texts], fields=list(concept)))}),
        "captions": _filled("captions", n, {"id": mix_ids, "image_id": image_ids, "caption": np.char.add("a picture of ", image_ids)}),
        "shard_index": _filled("shard_index", n, {"id": image_ids, "mix_id": mix_ids,
                                                  "split": np.where(i % 10 == 0, "val", "train")}),
    }
    for name, t in tables.items():
        _write(run, name, t)
    return sum(t.nbytes for t in tables.values())


CHILD = r"""
import sys, threading, time
edge, run_dir, out = sys.argv[1:]


def anon():   # resident anonymous memory: what the process holds (mapped files' pages are the page cache's)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:")) * 1024


peak, done = [anon()], threading.Event()


def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], anon())


threading.Thread(target=sample, daemon=True).start()
from types import SimpleNamespace as NS
from sonify.engine.store import TableStore
t0 = time.perf_counter()
if edge == "release":
    from sonify.mixing.release import write_release
    cfg = NS(run=NS(dir=run_dir, plan_memory="%s"), stages=NS(audio=NS(chunk_seconds=5.0), mix=NS(release_jsonl=True)))
    write_release(cfg, TableStore(run_dir))
else:
    from sonify.publish.hf import export_hf
    export_hf(run_dir, out, rows_per_parquet=20000)
done.set()
print(max(peak[0], anon()), time.perf_counter() - t0)
""" % PLAN_MEMORY


def peak_memory(edge: str, run: Path, out: Path) -> tuple[int, float]:
    """(peak resident anonymous bytes, sampled every 5 ms; seconds) of one edge run in a fresh process."""
    p = subprocess.run([sys.executable, "-c", CHILD, edge, str(run), str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-12000:]
    peak, secs = p.stdout.split()[-2:]
    return int(peak), float(secs)


def test_release_and_export_sorted_in_ranges_match_one_sort(full_run, tmp_path, monkeypatch):
    """Cut into ranges of 4 rows (`copy_in_order`), the release and the export come out as from one sort."""
    import sonify.engine.partitions as partitions
    from conftest import copy_run
    from sonify.engine.store import TableStore
    from sonify.mixing.release import RELEASE_SCHEMA, build_release, release_paths, write_release
    from sonify.publish.hf import examples

    cfg = copy_run(full_run, tmp_path)
    store = TableStore(cfg.run.dir)
    whole = build_release(cfg, store)          # one ORDER BY over the demo's rows
    expected = list(examples(cfg.run.dir))
    monkeypatch.setattr(partitions, "SORT_RANGE_ROWS", 4)
    write_release(cfg, store)
    parquet, jsonl = release_paths(cfg.run.dir)
    ranged = pq.read_table(parquet)
    assert whole.num_rows > 8 and ranged.cast(RELEASE_SCHEMA).equals(whole)
    assert pq.read_schema(parquet).metadata[b"sonify.release_version"] == RELEASE_SCHEMA.metadata[b"sonify.release_version"]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == whole.to_pylist()
    assert not list(parquet.parent.glob(".tmp-*"))   # the work folder (ranges, spill) is gone
    assert list(examples(cfg.run.dir, "64MB", str(tmp_path / "work"))) == expected


def test_export_with_a_bad_plan_memory_fails_in_one_line(full_run, tmp_path, capsys):
    from conftest import copy_run
    from sonify import export

    cfg = copy_run(full_run, tmp_path)
    saved = Path(cfg.run.dir) / "config.yaml"
    saved.write_text(saved.read_text().replace("plan_memory: 1GB", "plan_memory: lots"))
    assert export.main(["hf", f"run={cfg.run.dir}", "--out", str(tmp_path / "hf")]) == 2
    assert "run.plan_memory='lots' is not a memory size" in capsys.readouterr().err and not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_release_and_export_memory_stays_flat_from_10k_to_100k_mixtures(tmp_path):
    pytest.importorskip("datasets")
    media = tmp_path / "media"
    media.mkdir()
    peaks, held = {}, {}
    for n in (10_000, 100_000):
        run = tmp_path / f"run{n}"
        held[n] = make_run(run, n, media)
        for edge in ("release", "hf"):
            peaks[edge, n], secs = peak_memory(edge, run, tmp_path / f"hf{n}")
            print(f"{edge} {n} mixtures: peak memory {peaks[edge, n] / 2**20:.0f} MiB in {secs:.1f} s "
                  f"(the tables as Arrow: {held[n] / 2**20:.0f} MiB)")
        release = pq.ParquetFile(run / "release" / "release.parquet")
        assert release.metadata.num_rows == n and release.num_row_groups >= n // 8192
        last = pq.read_table(run / "release" / "release.parquet").slice(n - 1).to_pylist()[0]
        assert last["mix_id"] == f"v-img-{n - 1:07d}" and [c["text"] for c in last["components"]] == [
            f"the sound of v-img-{n - 1:07d}-{k}" for k in range(COMPONENTS)]
        hf = pq.read_table(sorted((tmp_path / f"hf{n}" / "parquet").glob("*.parquet"))[-1], columns=["id", "components", "split"])
        assert hf.slice(hf.num_rows - 1).to_pylist()[0]["components"][2]["n_eligible"] == 7
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / f"hf{n}" / "parquet").glob("*.parquet")) == n
    grown = held[100_000] - held[10_000]
    for edge in ("release", "hf"):
        growth = peaks[edge, 100_000] - peaks[edge, 10_000]
        print(f"{edge}: peak grew {growth / 2**20:.0f} MiB from 10K to 100K mixtures; the tables grew {grown / 2**20:.0f} MiB")
        # flat: within a margin of the 10K run (allocators keep some freed memory; the 10x more rows add
        # about a tenth of the 10K peak), and far below what holding the added rows, even as Arrow, would take
        assert growth < 0.3 * peaks[edge, 10_000] and growth < grown / 4, (edge, growth, grown)


if __name__ == "__main__":   # build a run by hand: python tests/test_release_memory.py RUN_DIR N
    Path(sys.argv[1], "media").mkdir(parents=True, exist_ok=True)
    print(make_run(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[1], "media")))
