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

NAMES = ("mixing", "loudness", "sequence", "memorisation", "loudness-retention", "projector-pretraining")


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


def test_a_new_checkpoint_in_the_output_dir_makes_new_images(demo, tmp_path):
    """The images are keyed by the concrete checkpoint-N an output_dir stands for: training on, then rerunning,
    does not reuse the images of the older checkpoint."""
    import shutil

    run_dir, ckpt = demo
    dit = tmp_path / "dit"
    shutil.copytree(ckpt / "checkpoint-1", dit / "checkpoint-1")
    shutil.copy(ckpt / "train_config.json", dit / "train_config.json")
    args = ["mixing", f"run={run_dir}", f"--checkpoint={dit}", f"--out={tmp_path / 'm'}", "--trials=1", "--sources=1",
            "--steps=1", "--num-images=1", "--device=cpu"]
    assert main(args) == 0
    image = tmp_path / "m" / pq.read_table(tmp_path / "m" / "data.parquet").to_pylist()[0]["images"][0]
    before = image.stat().st_mtime_ns
    shutil.copytree(dit / "checkpoint-1", dit / "checkpoint-2")       # "trained on"
    assert main(args) == 0
    assert image.stat().st_mtime_ns != before and "checkpoint-2" in (tmp_path / "m" / "summary.md").read_text()


@pytest.mark.parametrize("constant", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_loudness_sweep_renders_the_requested_relative_gains(demo, tmp_path, constant):
    out, rows = _run(demo, tmp_path, "loudness", "--points=7", "--range-db=18", *(["--constant-loudness"] if constant else []))
    assert [r["relative_gain_db"] for r in rows] == pytest.approx([-18, -12, -6, 0, 6, 12, 18])
    meter = pyloudnorm.Meter(16000)
    mix_levels, a_levels = [], []
    assert len({r["mix_gain_db"] for r in rows}) == 1                 # one peak-guard gain for the whole sweep
    for r in rows:
        folder = out / Path(r["audio"]).parent
        a, _ = sf.read(folder / "a.wav")
        b, _ = sf.read(folder / "b.wav")
        mix, _ = sf.read(folder / "mix.flac")
        level = meter.integrated_loudness(mix)
        assert meter.integrated_loudness(b) - meter.integrated_loudness(a) == pytest.approx(r["relative_gain_db"], abs=0.1)
        np.testing.assert_allclose(a + b, mix, atol=2 ** -22)        # the mixture is the two components as measured
        mix_levels.append(level)
        a_levels.append(meter.integrated_loudness(a))
    reference = -23.0 + rows[0]["mix_gain_db"]                        # the middle of the demo's LUFS range, guarded
    if constant:   # every mixture at the reference loudness
        assert all(lv == pytest.approx(reference, abs=0.1) for lv in mix_levels)
    else:          # Fig. 5: A fixed, only B moves
        assert all(lv == pytest.approx(reference, abs=0.1) for lv in a_levels)


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
    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    _png(tmp_path / "one" / "g.png", 0)
    assert main(["mixing-typo", f"run={run_dir}"]) == 2
    assert main(["mixing", f"run={run_dir}", f"--checkpoint={tmp_path}/no_ckpt", f"--out={tmp_path}/c"]) == 2
    assert main(["mixing", f"run={run_dir}", f"--checkpoint={ckpt}", f"--out={tmp_path}/q", "--query= ", "--query=x"]) == 2
    assert main(["sequence", f"run={run_dir}", f"--checkpoint={ckpt}", f"--out={tmp_path}/s", "--sources=1"]) == 2
    assert main(["memorisation", f"run={run_dir}", f"--images={tmp_path / 'empty'}", f"--out={tmp_path}/m"]) == 2
    assert main(["memorisation", f"run={run_dir}", f"--images={tmp_path / 'one'}", "--reference=/no/such/dir", f"--out={tmp_path}/m"]) == 2
    assert main(["memorisation", f"--images={tmp_path / 'empty'}", f"--out={tmp_path}/m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and "--sources must be at least 2" in err[3] and err.pop(3)
    assert "--checkpoint" in err[1] and "no such folder" in err[1] and "an empty --query" in err[2]
    assert not (tmp_path / "c").exists() and err.pop(1) and err.pop(1)
    assert "unknown experiment 'mixing-typo'; valid choices: mixing, loudness" in err[0]
    assert "no .png/.jpg images in it" in err[1] and "--reference /no/such/dir: no such folder" in err[2]


def _bands(clip, bands=8):
    """Log energies of equal-width spectral bands: a clip's identity, and its level (every band moves with gain)."""
    spec = np.abs(np.fft.rfft(clip)) ** 2
    return np.log10(np.array([b.sum() for b in np.array_split(spec, bands)]) + 1e-20)


def _clips(n=6, rate=16000, seconds=1.0):
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    return [0.1 * np.sin(2 * np.pi * (200 + 450 * i) * t) + 0.02 * rng.standard_normal(t.size) for i in range(n)]


def test_loudness_retention_falls_for_an_encoder_that_hears_gain_and_stays_at_100_for_one_that_does_not():
    from sonify.studies.loudness_retention import accuracy, shifts

    gains = shifts(30, 10)
    assert gains == [-30, -20, -10, 0, 10, 20, 30]
    clips = _clips()
    moving = lambda cs: np.stack([_bands(c) for c in cs])                        # moves with gain: +g dB adds g/10 to each band
    invariant = lambda cs: np.stack([_bands(c) - _bands(c).mean() for c in cs])  # the level removed
    acc = accuracy(moving, clips, gains)
    assert acc[3] == 1.0 and acc[0] < 1.0 and acc[-1] < 1.0
    assert acc[0] <= acc[1] <= acc[2] and acc[-1] <= acc[-2] <= acc[-3]          # falls away from 0 dB on both sides
    assert accuracy(invariant, clips, gains) == [1.0] * len(gains)
    assert accuracy(invariant, clips, gains, "cosine") == [1.0] * len(gains)


def test_loudness_retention_command_on_a_folder_with_ast_and_hubert(tmp_path, capsys):
    from sonify.studies.loudness_retention import accuracy

    audio = tmp_path / "clips"
    audio.mkdir()
    for i, c in enumerate(_clips(4)):
        sf.write(audio / f"c{i}.wav", c, 16000)
    (audio / "broken.wav").write_bytes(b"not audio")
    sf.write(audio / "silent.wav", np.zeros(16000), 16000)
    sf.write(audio / "c1_copy.wav", _clips(4)[1], 16000)            # a copy is not a class of its own
    out = tmp_path / "lr"
    assert main(["loudness-retention", f"--audio-dir={audio}", "--ast=tiny:ast", "--hubert=tiny:hubert", f"--tiny-dir={tmp_path / 'tiny'}",
                 "--max-shift=20", "--step-db=10", "--seconds=1", f"--out={out}", "--device=cpu"]) == 0
    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert sorted({r["encoder"] for r in rows}) == ["AST (tiny:ast)", "HuBERT (tiny:hubert)"]
    assert all(r["clips"] == 4 for r in rows) and len(rows) == 10
    at_zero = [r["accuracy"] for r in rows if r["shift_db"] == 0]
    assert at_zero == [1.0, 1.0]                                       # each clip is its own nearest neighbour
    bad = {r["clip"]: r["error"] for r in pq.read_table(out / "clips.parquet").to_pylist() if r["status"] == "error"}
    assert bad["broken.wav"].startswith("decode_error") and bad["silent.wav"].startswith("below_gate")
    assert bad["c1_copy.wav"] == "duplicate: the same audio as c1.wav"
    assert (out / "figure.png").is_file() and (out / "data.csv").read_text().count("\n") == 11
    before = (out / "data.parquet").stat().st_mtime_ns
    assert main(["loudness-retention", f"--audio-dir={audio}", "--ast=tiny:ast", "--hubert=tiny:hubert", f"--tiny-dir={tmp_path / 'tiny'}",
                 "--max-shift=20", "--step-db=10", "--seconds=1", f"--out={out}", "--device=cpu"]) == 0
    assert (out / "data.parquet").stat().st_mtime_ns == before                        # a rerun on the same inputs: done


def _png(path, seed, size=48):
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def test_memorisation_finds_copies_of_training_images_at_cosine_1(demo, tmp_path):
    """Copies of the run's kept training images among noise images: each copy's nearest training image is itself."""
    from PIL import Image

    from sonify.publish.data import Run
    from sonify.sources.images import load_image

    run_dir, _ = demo
    run = Run(run_dir)
    kept = [r["id"] for r in run.rows("kept_images", ["id", "kept"]) if r["kept"]][:3]
    images = {r["id"]: r for r in run.rows("images")}
    gen = tmp_path / "generated"
    gen.mkdir()
    for i in kept:
        load_image(images[i], run.paths("images"), max_pixels=89_478_485, max_side=1024).save(gen / f"copy_{i}.png")
    for s in range(3):
        _png(gen / f"noise_{s}.png", s)
    (gen / "broken.png").write_bytes(b"no image")
    out = tmp_path / "mem"
    # the tiny random CLIP puts every image near every other (noise at ~0.98): the threshold tells copies apart
    # no --clip: a run built with tiny models gets the tiny CLIP (evaluate's default cannot load offline)
    assert main(["memorisation", f"run={run_dir}", f"--images={gen}", "--threshold=0.9999", f"--out={out}"]) == 0
    rows = {r["id"]: r for r in pq.read_table(out / "data.parquet").to_pylist() if r["kind"] == "nearest"}
    for i in kept:
        assert rows[f"copy_{i}"]["match"] == i and rows[f"copy_{i}"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["id"] for e in errors] == ["broken"]
    assert all(r["cosine"] < 0.9999 for i, r in rows.items() if i.startswith("noise"))
    assert "3 of 6 generated images (50.0%)" in (out / "summary.md").read_text() and "CLIP `tiny:clip`" in (out / "summary.md").read_text()
    args = ["memorisation", f"run={run_dir}", f"--images={gen}", "--threshold=0.9999", f"--out={out}"]
    before = (out / "data.parquet").stat().st_mtime_ns
    assert main(args) == 0 and (out / "data.parquet").stat().st_mtime_ns == before      # done: nothing recomputed
    _png(gen / "noise_9.png", 9)                                                       # the inputs changed: recomputed
    assert main(args) == 0 and "3 of 7 generated images" in (out / "summary.md").read_text()
    assert Image.open(out / "figure.png").size[0] > 0


def test_memorisation_shows_each_generated_image_beside_its_benchmark_frame(tmp_path):
    import shutil

    import pyarrow as pa

    from sonify.evaluation.benchmarks import CLIPS_FILE, CLIPS_SCHEMA

    bench, gen = tmp_path / "bench", tmp_path / "gen"
    (bench / "frames").mkdir(parents=True)
    gen.mkdir()
    rows = []
    for k in range(3):
        _png(bench / "frames" / f"v{k}.jpg", 10 + k)
        rows.append({"id": f"v{k}", "benchmark": "vggsound", "label": "dog", "split": "test", "video": f"v{k}.mp4",
                     "frame_time": 1.0, "start": 0.0, "seconds": 5.0, "image": f"frames/v{k}.jpg", "audio": None,
                     "status": "ok", "error": None})
    pq.write_table(pa.Table.from_pylist(rows, schema=CLIPS_SCHEMA), bench / CLIPS_FILE)
    shutil.copy(bench / "frames" / "v0.jpg", gen / "v0.jpg")           # a copy of its ground truth
    _png(gen / "v1.png", 99)                                            # another image
    out = tmp_path / "mem"
    assert main(["memorisation", f"--images={gen}", f"--clips={bench}", "--clip=tiny:clip", f"--tiny-dir={tmp_path / 'tiny'}",
                 f"--out={out}"]) == 0
    got = {r["id"]: r["cosine"] for r in pq.read_table(out / "data.parquet").to_pylist() if r["kind"] == "ground_truth"}
    assert set(got) == {"v0", "v1"} and got["v0"] == pytest.approx(1.0, abs=1e-6) and got["v1"] < got["v0"]
    assert (out / "ground_truth.png").is_file()


def test_hubert_shape_has_the_papers_base_architecture():
    """HuBERT Base (Hsu et al. 2021, Table 1 / Sec. IV-C): 12 transformer layers, width 768, 12 heads, FFN 3072,
    a CNN front end of 7 layers with total stride 320 (20 ms frames at 16 kHz), group norm in the first layer."""
    from sonify.models.shape import hf_config

    cfg = hf_config("facebook/hubert-base-ls960")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (12, 768, 12, 3072)
    assert len(cfg.conv_stride) == 7 and int(np.prod(cfg.conv_stride)) == 320 and cfg.feat_extract_norm == "group"
    assert hf_config("facebook/hubert-base-ls960?layers=1").num_hidden_layers == 1


@pytest.mark.slow
def test_hubert_shape_model_loads_and_is_nearly_gain_invariant(tmp_path):
    from sonify.models.hubert import HubertEncoder

    enc = HubertEncoder("shape:facebook/hubert-base-ls960?layers=1", str(tmp_path), "cpu")
    x = 0.05 * np.random.default_rng(0).standard_normal(80000)
    quiet, loud = enc.encode([x, 10 * x])
    assert quiet.shape == (249, 768)                                  # 5 s at 20 ms per frame
    assert np.abs(quiet.mean(0) - loud.mean(0)).max() < 1e-2 * np.abs(quiet).mean()


def test_the_report_shows_the_experiments_a_run_holds(full_run, tmp_path):
    """A run's experiments/<name>/summary.md and figures appear in `sonify.report`; a run without any shows none."""
    import shutil

    from sonify.publish.site import build_report
    from sonify.studies.common import line_plot, write_summary

    cfg, _ = full_run
    run_dir = tmp_path / "run"
    shutil.copytree(cfg.run.dir, run_dir, ignore=shutil.ignore_patterns("experiments", "report"))
    plain = build_report(run_dir, tmp_path / "r0").read_text()
    assert "<h2>Experiments</h2>" not in plain
    exp = run_dir / "experiments" / "loudness-retention"
    exp.mkdir(parents=True)
    line_plot(exp / "figure.png", [0, 10], {"AST": [100, 50]}, "t", "x", "y")
    write_summary(exp / "summary.md", "Loudness retention", ["- 4 clips", "", "| encoder | 0 dB |", "|---|---|", "| AST | 100% |",
                                                          "", "![accuracy](figure.png)"])
    page = build_report(run_dir, tmp_path / "r1").read_text()
    assert "<h2>Experiments</h2>" in page and "<h3>Loudness retention</h3>" in page and "<li>4 clips</li>" in page
    assert "<td>AST</td><td>100%</td>" in page
    assert "src='assets/experiments/loudness-retention/figure.png'" in page
    assert (tmp_path / "r1" / "assets" / "experiments" / "loudness-retention" / "figure.png").is_file()


@pytest.mark.slow
def test_projector_pretraining_trains_both_variants_on_the_same_data_and_grids_each_epoch(demo, tmp_path):
    run_dir, _ = demo
    out = tmp_path / "pp"
    args = ["projector-pretraining", f"run={run_dir}", f"--out={out}", "--epochs=2", "--pretrain-steps=3", "--prompts=1",
            "--steps=1", "--num-images=1", "--device=cpu", "--set=per_device_batch=16", "--set=global_batch=16"]
    assert main(args) == 0
    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert sorted((r["variant"], r["epoch"]) for r in rows) == [("pretrained", 1), ("pretrained", 2), ("scratch", 1), ("scratch", 2)]
    assert {r["step"] for r in rows if r["epoch"] == 2} == {2 * rows[0]["step"]}          # the same steps per epoch for both
    assert (out / "pretrained" / "projector_pretrain" / "projector.safetensors").is_file()
    assert not (out / "scratch" / "projector_pretrain").exists()
    assert all((out / f).is_file() for f in ("epoch1.png", "epoch2.png", "figure.png", "losses.png", "pretrain_loss.png"))
    before = (out / rows[0]["images"][0]).stat().st_mtime_ns
    assert main(args) == 0                                                    # a rerun trains and draws nothing again
    assert (out / rows[0]["images"][0]).stat().st_mtime_ns == before
