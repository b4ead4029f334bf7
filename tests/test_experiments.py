"""`python -m sonify.experiments`: the paper's studies on the demo run and a demo checkpoint (tiny models),
their data checked against independent recomputations."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyloudnorm
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from sonify.experiments import main

NAMES = ("mixing", "loudness", "sequence")


@pytest.fixture(scope="module")
def demo(full_run, tmp_path_factory):
    """The shared demo run and a checkpoint trained for one step on its shards, as `make demo` trains one."""
    from sonify.training.config import load_train_config
    from sonify.training.loop import train_loop

    cfg, _ = full_run
    out = tmp_path_factory.mktemp("experiments_ckpt") / "dit"
    train_loop(load_train_config(["config=train_demo", f"shards={cfg.run.dir}/shards/train.txt", "val_shards=",
                                  f"output_dir={out}", f"tiny_dir={cfg.models.tiny_dir}", "steps=1", "checkpoint_every=1",
                                  "progress=false"]))
    return Path(cfg.run.dir), out


def _run(demo, tmp_path, name, *args):
    run_dir, ckpt = demo
    out = tmp_path / name
    assert main([name, f"run={run_dir}", f"--checkpoint={ckpt}", f"--out={out}", "--steps=1", "--num-images=1",
                 "--device=cpu", *args]) == 0
    assert {"data.parquet", "figure.png", "summary.md", "params.json"} <= {p.name for p in out.iterdir()}
    return out, pq.read_table(out / "data.parquet").to_pylist()


def test_help_lists_every_experiment(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(n in text for n in NAMES)


def test_mixing_sources_are_algorithm1s_choices_and_a_rerun_reuses_the_images(demo, tmp_path, paper_algorithm1):
    from sonify.engine.keys import keyed_rng
    from sonify.models.clap import ClapEmbedder

    run_dir, _ = demo
    queries = ["a dog barking", "a bell ringing"]
    out, rows = _run(demo, tmp_path, "mixing", "--trials=2", *[f"--query={q}" for q in queries])
    # the reference: the pool read from the audio_embeddings table, the query by the run's CLAP text tower
    t = pq.read_table(run_dir / "manifests" / "audio_embeddings").to_pylist()
    pool = sorted((r["id"], r["embedding"]) for r in t if r["status"] == "ok")
    ids, vectors = [i for i, _ in pool], np.asarray([v for _, v in pool], np.float32)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    clap = ClapEmbedder(cfg["models"]["clap"], cfg["models"]["tiny_dir"], "cpu", "float32")
    sources = [r for r in rows if r["role"] != "mix"]
    assert len(sources) == 4 and len(rows) == 6
    for r in sources:
        q = clap.embed_text([r["query"]])[0]
        eligible, chosen = paper_algorithm1(q / np.linalg.norm(q), vectors, cfg["stages"]["retrieve"]["k"],
                                            keyed_rng(0, "experiments", r["trial"], r["source"], r["query"]))
        assert r["query"] == queries[r["source"]]
        assert r["n_eligible"] == eligible.size and r["chunk_id"] == ids[chosen]
        lo, hi = cfg["stages"]["mix"]["lufs_min"], cfg["stages"]["mix"]["lufs_max"]
        assert lo <= r["target_lufs"] <= hi
    image = out / rows[0]["images"][0]
    before = image.stat().st_mtime_ns
    _run(demo, tmp_path, "mixing", "--trials=2", *[f"--query={q}" for q in queries])
    assert image.stat().st_mtime_ns == before                       # resumed: the cell was not generated again


@pytest.mark.parametrize("constant", [False, True])
def test_loudness_sweep_renders_the_requested_relative_gains(demo, tmp_path, constant):
    out, rows = _run(demo, tmp_path, "loudness", "--points=7", "--range-db=18", *(["--constant-loudness"] if constant else []))
    assert [r["relative_gain_db"] for r in rows] == pytest.approx([-18, -12, -6, 0, 6, 12, 18])
    meter = pyloudnorm.Meter(16000)
    mix_levels = []
    for r in rows:
        folder = out / Path(r["audio"]).parent
        a, _ = sf.read(folder / "a.wav")
        b, _ = sf.read(folder / "b.wav")
        mix, _ = sf.read(folder / "mix.flac")
        level = meter.integrated_loudness(mix)
        assert meter.integrated_loudness(b) - meter.integrated_loudness(a) == pytest.approx(r["relative_gain_db"], abs=0.1)
        np.testing.assert_allclose(a + b, mix, atol=2 ** -22)        # the mixture is the two components as measured
        if r["mix_gain_db"] == 0.0:
            mix_levels.append(level)
    if constant:   # every step the peak guard left alone sits at the reference loudness
        assert mix_levels and all(lv == pytest.approx(-23.0, abs=0.1) for lv in mix_levels)


def test_sequence_gives_each_source_its_own_ast_slot(demo, tmp_path):
    _, rows = _run(demo, tmp_path, "sequence", "--trials=1", "--sources=3")
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["superposed"]["ast_slots"] == 1 and by_mode["superposed"]["seconds"] == 5.0
    assert by_mode["sequential"]["ast_slots"] == 3 and by_mode["sequential"]["seconds"] == 15.0
    assert by_mode["sequential"]["chunk_ids"] == by_mode["superposed"]["chunk_ids"]


def test_bad_arguments_fail_in_one_line(demo, tmp_path, capsys):
    run_dir, ckpt = demo
    assert main(["mixing", f"--out={tmp_path}/x"]) == 2
    assert main(["mixing", f"run={run_dir}", f"--checkpoint={ckpt}", f"--out={tmp_path}/y", "--query=one", "--sources=2"]) == 2
    assert main(["mixing", f"run={tmp_path}", f"--out={tmp_path}/z"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "run=<run dir> is required" in err[0] and "1 queries for 2 sources" in err[1]
    assert "config.yaml is missing" in err[2]
