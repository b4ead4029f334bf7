"""Loudness against pyloudnorm, the mix stage, the release manifest and `python -m sonify.mix`."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyloudnorm
import pytest
import soundfile as sf
from conftest import copy_run

from sonify.engine.config import load_config
from sonify.engine.executor import run_stage
from sonify.engine.schemas import RELEASE_COMPONENT_FIELDS
from sonify.engine.partitions import work_table
from sonify.engine.store import TableStore
from sonify.media.loudness import LoudnessMeter
from sonify.mix import main as mix_main
from sonify.mixing.release import read_release, release_paths
from sonify.mixing.render import apply_mix_gain, db_to_gain, peak_guard_db, sum_components
from sonify.stages import get_stage, stage_names


def _sine(sr, seconds, dbfs_peak, freq=1000.0):
    t = np.arange(int(sr * seconds)) / sr
    return db_to_gain(dbfs_peak) * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_meter_equals_pyloudnorm(sr):
    rng = np.random.default_rng(sr)
    meter, ref = LoudnessMeter(sr), pyloudnorm.Meter(sr)
    signals = [0.1 * rng.standard_normal(5 * sr), _sine(sr, 5, -20),
               np.concatenate([np.zeros(sr), 0.3 * rng.standard_normal(2 * sr), np.zeros(2 * sr)]),
               0.5 * rng.standard_normal(int(3.37 * sr)), 0.05 * rng.standard_normal(int(0.45 * sr))]
    for x in signals:
        assert meter.integrated(x) == pytest.approx(ref.integrated_loudness(x), abs=1e-6)


def test_known_sine_level():
    # STACK.md: a 1 kHz sine at -20 dBFS peak measures -23.05 LUFS at 48 kHz and -23.08 at 16 kHz
    assert LoudnessMeter(48000).integrated(_sine(48000, 5, -20)) == pytest.approx(-23.05, abs=0.01)
    assert LoudnessMeter(16000).integrated(_sine(16000, 5, -20)) == pytest.approx(-23.08, abs=0.01)


def test_silence_and_very_short_inputs():
    m = LoudnessMeter(16000)
    assert m.integrated(np.zeros(80000)) == float("-inf")
    assert m.integrated(np.zeros(100)) == float("-inf")
    short = 0.3 * np.random.default_rng(0).standard_normal(int(0.3 * 16000))   # 0.3 s < the 0.4 s gating block
    padded = np.pad(short, (0, 6400 - short.size))
    assert m.integrated(short) == pytest.approx(pyloudnorm.Meter(16000).integrated_loudness(padded), abs=1e-6)


@pytest.mark.parametrize("target", [-24.0, -23.0, -22.0, -30.0])
def test_normalised_component_measures_its_target(target):
    m = LoudnessMeter(16000)
    x = 0.2 * np.random.default_rng(1).standard_normal(80000)
    gain = target - m.integrated(x)
    assert pyloudnorm.Meter(16000).integrated_loudness(x * db_to_gain(gain)) == pytest.approx(target, abs=0.1)


def test_peak_guard_holds_on_loud_sums():
    loud = [_sine(16000, 5, -1.5), _sine(16000, 5, -1.5, 1000.0), 0.8 * np.sign(_sine(16000, 5, 0, 50))]
    summed = sum_components(loud, [6.0, 6.0, 6.0])
    g = peak_guard_db(summed, -1.0)
    final = apply_mix_gain(summed, g)
    assert g < 0 and np.max(np.abs(final)) <= db_to_gain(-1.0) + 1e-12
    quiet = sum_components([0.01 * np.ones(10)], [0.0])
    assert peak_guard_db(quiet, -1.0) == 0.0 and apply_mix_gain(quiet, 0.0) is quiet


@pytest.fixture
def mixed_run(full_run):
    return full_run


def test_mixes_hit_their_targets_and_record_everything(mixed_run):
    cfg, _ = mixed_run
    store = TableStore(cfg.run.dir)
    mixes = store.read("mixes").to_pylist()
    variants = {(m["image_id"], m["variant"]) for m in store.read("matches").to_pylist() if m["status"] == "ok"}
    assert variants and len(mixes) == len(variants)  # one mixture per (image, variant) with matches
    ok = [m for m in mixes if m["status"] == "ok"]
    assert ok and len({m["id"] for m in mixes}) == len(mixes)
    meter = LoudnessMeter(16000)
    for m in ok[:10]:
        audio, sr = sf.read(Path(cfg.run.dir) / m["path"], dtype="float64")
        assert sr == 16000 and audio.shape == (80000,) and sf.info(Path(cfg.run.dir) / m["path"]).subtype == "PCM_24"
        assert meter.integrated(audio) == pytest.approx(m["lufs"], abs=0.01)
        for c in m["components"]:
            assert -24.0 <= c["target_lufs"] <= -22.0 and c["included"]
            assert c["gain_db"] == pytest.approx(c["target_lufs"] - c["measured_lufs"])
            assert c["source"] and c["uri"] and "relpath" not in c and c["num_frames"] > 0
        if m["n_components"] == 1 and m["mix_gain_db"] == 0:
            assert m["lufs"] == pytest.approx(m["components"][0]["target_lufs"], abs=0.1)


def test_targets_are_keyed_by_ids_not_order(mixed_run, tmp_path):
    """Recomputed from scratch in other partitions and batches, every mixture is the same bytes.

    partition_rows and batch_size are runtime keys: without removing the copied partitions first
    nothing would be recomputed and the test would compare the table with itself."""
    cfg, _ = mixed_run
    other = copy_run(mixed_run, tmp_path, "stages.mix.partition_rows=3", "stages.mix.batch_size=2")
    store = TableStore(other.run.dir)
    store.remove_partitions("mixes", store.partitions("mixes"))
    assert not store.partitions("mixes")
    result = run_stage(get_stage("mix"), other, progress_bar=False)
    assert result.computed == result.partitions > 1 and result.skipped == 0   # all recomputed, in partitions of 3
    a = {m["id"]: (m["flac_sha256"], [c["target_lufs"] for c in m["components"]])
         for m in TableStore(cfg.run.dir).read("mixes").to_pylist()}
    b = {m["id"]: (m["flac_sha256"], [c["target_lufs"] for c in m["components"]])
         for m in store.read("mixes").to_pylist()}
    assert a and a == b
    # one fresh stage instance mixing the work rows in reverse order draws the same targets: the
    # draw depends on (seed, image, variant, concept), not on which rows came before it
    from sonify.stages.mix import MixStage

    stage = MixStage(other)
    stage.partition = "part-reversed"
    work = work_table(MixStage.work_list(other, store)).to_pylist()
    assert len(work) == len(a) > 2
    for row in reversed(work):
        assert [c["target_lufs"] for c in stage._mix(row)["components"]] == a[row["id"]][1], row["id"]


def test_silent_components_are_left_out_and_all_silent_is_an_error(mixed_run, tmp_path):
    from sonify.stages.mix import MixStage

    cfg = copy_run(mixed_run, tmp_path)   # _mix writes mixture files: never into the shared run
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 5, np.float32), 16000)
    work = work_table(MixStage.work_list(cfg, TableStore(cfg.run.dir))).to_pylist()
    row = next(r for r in work if len(r["components"]) >= 2)
    quiet = dict(source="quiet", uri=silent.name, start_frame=0, num_frames=80000)   # a source whose root is tmp_path
    row["components"][0].update(quiet)
    all_silent = {**row, "id": row["id"], "components": [dict(c, **quiet) for c in row["components"]]}
    stage = MixStage(cfg)
    stage.paths.roots["quiet"] = str(tmp_path)
    stage.partition = "part-test"
    partial = stage._mix(row)
    assert partial["status"] == "ok" and partial["n_components"] == len(row["components"]) - 1
    assert partial["components"][0]["reason"].startswith("below_gate:") and not partial["components"][0]["included"]
    failed = stage._mix(all_silent)
    assert failed["status"] == "error" and failed["error"].startswith("no_audible_component:")


def test_release_manifest_rebuilds_every_mixture_bit_for_bit(mixed_run, tmp_path, demo_dir):
    cfg, _ = mixed_run
    manifest, jsonl = release_paths(cfg.run.dir)
    rows = read_release(manifest)
    assert jsonl.exists() and len(read_release(jsonl)) == len(rows)
    ok = [m for m in TableStore(cfg.run.dir).read("mixes").to_pylist() if m["status"] == "ok"]
    assert len(rows) == len(ok)
    r = rows[0]
    assert r["image_source"] and r["image_uri"] and r["variant"] and r["components"][0]["text"] and r["components"][0]["cosine"] is not None
    assert set(r["components"][0]) == set(RELEASE_COMPONENT_FIELDS)  # nothing machine-specific: source + uri relative to its root
    out = tmp_path / "rebuilt"
    roots = ["--source", f"demo_sfx={demo_dir / 'audio'}", "--audio-root", f"demo_labelled={demo_dir}"]   # the flag and its alias
    assert mix_main(["--manifest", str(manifest), "--out", str(out), "--check", "--no-progress", "--workers", "2", *roots]) == 0
    import hashlib
    for m in ok:
        rebuilt = out / m["path"].split("/", 2)[2]   # mixes/<partition>/<variant key>/<image>.flac
        assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == m["flac_sha256"]
    report = pq.read_table(out / "render_report.parquet").to_pylist()
    assert all(r["status"] == "ok" and not r["error"] for r in report)
    # resumable: a second run skips everything
    assert mix_main(["--manifest", str(manifest), "--out", str(out), "--no-progress", "--workers", "1", *roots]) == 0
    assert all(r["skipped"] for r in pq.read_table(out / "render_report.parquet").to_pylist())


def test_missing_corrupt_and_escaping_sources_are_row_errors(mixed_run, tmp_path, demo_dir):
    import pyarrow as pa

    cfg, _ = mixed_run
    rows = read_release(release_paths(cfg.run.dir)[0])[:3]
    rows[0]["components"][0]["uri"] = "../../etc/passwd"
    rows[1]["components"][0]["uri"] = "nope/missing.wav"
    bad = tmp_path / "audio_root" / "demo_sfx"
    shutil.copytree(demo_dir / "audio", bad)
    (bad / rows[2]["components"][0]["uri"]).write_bytes(b"garbage, not audio")
    from sonify.mixing.release import RELEASE_SCHEMA
    manifest = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RELEASE_SCHEMA), manifest)
    out = tmp_path / "out"
    code = mix_main(["--manifest", str(manifest), "--out", str(out), "--no-progress", "--workers", "1",
                     "--audio-root", str(tmp_path / "audio_root"), "--audio-root", f"demo_labelled={demo_dir}"])
    assert code == 1
    report = {r["mix_id"]: r for r in pq.read_table(out / "render_report.parquet").to_pylist()}
    errs = [report[r["mix_id"]]["error"] or "" for r in rows]
    assert errs[0].startswith("refused:") and errs[1].startswith("not_found:") and errs[2].startswith("failed:")


def test_manifest_of_another_version_is_refused(tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), tmp_path / "old.parquet")
    assert mix_main(["--manifest", str(tmp_path / "old.parquet"), "--audio-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sonify.mix: manifest {tmp_path / 'old.parquet'}: release manifest version ?"), err
    assert err[0].count(str(tmp_path / "old.parquet")) == 1, err   # the path said once


@pytest.mark.parametrize("name", ["nope.parquet", "nope.jsonl"])
def test_a_missing_manifest_is_one_line_saying_its_path_once(tmp_path, name, capsys):
    assert mix_main(["--manifest", str(tmp_path / name), "--audio-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sonify.mix: manifest {tmp_path / name}: no such file"], err


@pytest.mark.ray
def test_render_on_ray_matches_the_pipeline(mixed_run, tmp_path, demo_dir, ray_driver):
    import hashlib

    cfg, _ = mixed_run
    manifest = release_paths(cfg.run.dir)[0]
    out = tmp_path / "ray_rebuilt"
    code = mix_main(["--manifest", str(manifest), "--out", str(out), "--ray", "--check", "--no-progress",
                     "--audio-root", f"demo_sfx={demo_dir / 'audio'}", "--audio-root", f"demo_labelled={demo_dir}"])
    assert code == 0
    for m in (m for m in TableStore(cfg.run.dir).read("mixes").to_pylist() if m["status"] == "ok"):
        assert hashlib.sha256((out / m["path"].split("/", 2)[2]).read_bytes()).hexdigest() == m["flac_sha256"]


def test_repeated_chunks_are_recorded_in_the_mixes_row(mixed_run, tmp_path):
    from sonify.stages.mix import MixStage

    cfg = copy_run(mixed_run, tmp_path)
    work = work_table(MixStage.work_list(cfg, TableStore(cfg.run.dir))).to_pylist()
    row = next(r for r in work if len(r["components"]) >= 2)
    stage = MixStage(cfg)
    stage.partition = "part-test"
    distinct = [c for c in row["components"] if c["chunk_id"] != row["components"][0]["chunk_id"]]
    clean = stage._mix({**row, "components": [row["components"][0]] + distinct[:1]})
    assert clean["repeated_chunks"] == []
    twice = [dict(row["components"][0]), dict(row["components"][0])]     # same target: an exact doubling
    doubled = stage._mix({**row, "components": twice})
    assert doubled["repeated_chunks"] == [row["components"][0]["chunk_id"]]
    single = stage._mix({**row, "components": twice[:1]})
    hot = doubled["lufs"] - doubled["mix_gain_db"] - (single["lufs"] - single["mix_gain_db"])
    assert hot == pytest.approx(20 * np.log10(2), abs=0.01)     # summed coherently: 6 dB hotter
    a, b = row["components"][0], distinct[0]       # apart, not only side by side; each id listed once, sorted
    assert stage._mix({**row, "components": [dict(a), dict(b), dict(a)]})["repeated_chunks"] == [a["chunk_id"]]
    both = stage._mix({**row, "components": [dict(b), dict(a), dict(b), dict(a)]})["repeated_chunks"]
    assert both == sorted([a["chunk_id"], b["chunk_id"]])


def test_toggling_release_jsonl_recomputes_no_mixture_and_writes_or_removes_the_copy(mixed_run, tmp_path):
    """`stages.mix.release_jsonl` only decides whether release/release.jsonl is written beside the release:
    toggling it recomputes no partition (it is not in the fingerprint), yet the file follows the setting."""
    off = copy_run(mixed_run, tmp_path, "stages.mix.release_jsonl=false")
    parquet, jsonl = release_paths(off.run.dir)
    assert jsonl.exists()   # the shared run was made with release_jsonl=true
    result = run_stage(get_stage("mix"), off, progress_bar=False)
    assert result.computed == 0 and result.skipped == result.partitions > 0
    assert parquet.exists() and not jsonl.exists()
    on = load_config([*mixed_run[1], f"run.root={tmp_path / 'runs'}", "stages.mix.release_jsonl=true"], stage_names())
    result = run_stage(get_stage("mix"), on, progress_bar=False)
    assert result.computed == 0 and result.skipped == result.partitions > 0
    assert len(jsonl.read_text().splitlines()) == pq.read_metadata(parquet).num_rows > 0
