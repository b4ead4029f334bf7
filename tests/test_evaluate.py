"""`python -m sonify.evaluate`: benchmark clip lists from fake layouts, feature models loaded from files,
resumable generation, scoring end to end, and the pair-quality audit against DuckDB."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from eval_fakes import fake_greatesthits, fake_intothewild, fake_landscapes, fake_vegas, fake_vggsound, vggsound_csv_only
from sonify.evaluate import main
from sonify.evaluation.benchmarks import balanced_sample, prepare
from sonify.evaluation.config import load_eval_config


# The small fakes below hold 1-3 s videos: their tests take 1 s windows, the test split, and every VGGSound class
SMALL = ["benchmarks.vggsound.seconds=1.0", "benchmarks.vggsound.classes=all", "benchmarks.vggsound.per_class=null",
         "benchmarks.vggsound.num_clips=12", "benchmarks.greatesthits.seconds=1.0", "benchmarks.greatesthits.split=test",
         "benchmarks.landscapes.split=test"]


@pytest.fixture
def cfg(tmp_path):
    return load_eval_config(["config=eval_demo", f"models.tiny_dir={tmp_path / 'tiny'}", *SMALL])


def test_vggsound_csv_and_clip_names(tmp_path):
    from sonify.sources.corpora.vggsound import clip_name, read_csv

    p = tmp_path / "vggsound.csv"
    p.write_text('---g-83_3_0,30,"people marching, band",test\nx_y,0,dog barking,train\n')
    t = read_csv(p)
    assert t.column_names == ["ytid", "start", "label", "split"]
    assert t.to_pylist()[0] == {"ytid": "---g-83_3_0", "start": 30, "label": "people marching, band", "split": "test"}
    assert clip_name("---g-83_3_0", 30) == "---g-83_3_0_000030"
    p.write_text("a,ten,dog,test\n")
    with pytest.raises(ValueError, match="line 1"):
        read_csv(p)


def test_balanced_sample_takes_classes_in_turn_and_is_seeded():
    labels = ["a"] * 10 + ["b"] * 3 + ["c"] * 6
    pick = balanced_sample(labels, 7, seed=0, purpose="t")
    counts = {lab: sum(labels[i] == lab for i in pick) for lab in "abc"}
    assert sorted(counts.values()) == [2, 2, 3]
    assert pick == balanced_sample(labels, 7, seed=0, purpose="t") != balanced_sample(labels, 7, seed=1, purpose="t")
    pick = balanced_sample(labels, 12, seed=0, purpose="t")
    counts = {lab: sum(labels[i] == lab for i in pick) for lab in "abc"}
    assert counts["b"] == 3 and sorted([counts["a"], counts["c"]]) == [4, 5]   # b runs out, the others share its turns


def test_prepare_vggsound_writes_wavs_and_jpegs_and_error_rows(tmp_path, cfg):
    root = fake_vggsound(tmp_path / "vgg", per_class=3, missing=1)
    t = prepare("vggsound", root, tmp_path / "out", cfg)
    rows = t.to_pylist()
    assert len(rows) == 9 and {r["split"] for r in rows} == {"test"}   # 12 test clips, sample of 12 -> all 9 test
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["error"].startswith("not_found:") and bad[0]["label"] == "dog barking"
    for r in rows:
        if r["status"] == "ok":
            x, sr = sf.read(tmp_path / "out" / r["audio"])
            assert sr == 16000 and x.ndim == 1 and len(x) == 16000 * cfg.benchmarks.vggsound.seconds
            assert 0.1 < np.abs(x).max() < 0.5   # the fake's 0.3 sine, decoded from AAC
            im = Image.open(tmp_path / "out" / r["image"])
            assert im.format == "JPEG" and im.size == (48, 32)
            assert r["frame_time"] == pytest.approx(1.0, abs=0.1)   # the middle of a 2 s clip
    red = np.asarray(Image.open(tmp_path / "out" / [r for r in rows if r["status"] == "ok" and r["label"] == "dog barking"][0]["image"]))
    assert red[:, -1, 0].mean() > 150 and red[:, -1, 2].mean() < 100   # the dog clip's colour, past the sweeping bar


def test_prepare_greatesthits_follows_the_clip_rule(tmp_path, cfg):
    root = fake_greatesthits(tmp_path / "gh")
    rows = prepare("greatesthits", root, tmp_path / "out", cfg).to_pylist()
    # test split only; the 'None' material and the hit 0.2 s after a kept one (min_gap 0.5) are left out
    assert [(r["id"].split("_")[0], r["frame_time"], r["label"]) for r in rows] == [
        ("2015-02-16-16-49-06", 0.4, "wood"), ("2015-02-16-16-49-06", 1.5, "metal"),
        ("2015-02-16-17-02-11", 1.0, "water"), ("2015-02-16-17-02-11", 2.4, "metal")]
    assert all(r["status"] == "ok" for r in rows)
    (tmp_path / "out" / "frames" / "stale.jpg").write_bytes(b"x")
    cfg.benchmarks.greatesthits.min_gap = 5.0   # a re-run with other settings: one clip per recording, nothing stale left
    again = prepare("greatesthits", root, tmp_path / "out", cfg).to_pylist()
    assert len(again) == 2 and sorted(p.name for p in (tmp_path / "out" / "frames").iterdir()) == sorted(
        Path(r["image"]).name for r in again)
    assert rows[0]["start"] == 0.0 and rows[1]["start"] == pytest.approx(1.0)   # a 1 s window centred on the hit, kept inside


def test_prepare_landscapes_windows_and_vegas_clips(tmp_path, cfg):
    cfg.benchmarks.landscapes.seconds = 1.0
    rows = prepare("landscapes", fake_landscapes(tmp_path / "ls"), tmp_path / "ls_out", cfg).to_pylist()
    # test split only; 2.5 s of rain gives two 1 s windows, 1 s of thunder one
    assert [(r["id"], r["label"], r["frame_time"]) for r in rows] == [
        ("test__raining__r1_00", "raining", 0.5), ("test__raining__r1_01", "raining", 1.5), ("test__thunder__t1_00", "thunder", 0.5)]
    assert all(r["status"] == "ok" for r in rows)
    rows = prepare("vegas", fake_vegas(tmp_path / "vg"), tmp_path / "vg_out", cfg).to_pylist()
    assert [(r["id"], r["label"], r["status"]) for r in rows] == [("d1", "dog", "ok"), ("x1", "drum", "error")]
    assert rows[1]["error"].startswith("no_audio")


def test_vggsound_takes_the_listed_classes_per_class_and_every_class_on_request(tmp_path, capsys):
    """62 classes in the CSV, Sound2Scene's 50 listed: 20 test clips of each listed class (all 7 of two short ones)."""
    from sonify.evaluation.benchmarks import read_class_list

    listed = read_class_list("pipelines/eval/vggsound_sound2scene_50.txt")
    assert len(listed) == 50 and "railroad car, train wagon" in listed
    counts = {c: (7 if c in listed[:2] else 23) for c in listed}
    counts.update({f"other class {i}": 23 for i in range(12)})
    root = vggsound_csv_only(tmp_path / "vgg", counts)
    common = ["config=eval_default", "progress=false"]
    assert main(["prepare", "vggsound", "--root", str(root), "--out", str(tmp_path / "p"), *common]) == 0
    printed = capsys.readouterr().out
    rows = pq.read_table(tmp_path / "p" / "clips.parquet").to_pylist()
    per = {c: sum(r["label"] == c for r in rows) for c in {r["label"] for r in rows}}
    assert set(per) == set(listed) and len(rows) == 48 * 20 + 2 * 7
    assert all(n == (7 if c in listed[:2] else 20) for c, n in per.items())
    assert {r["split"] for r in rows} == {"test"} and all(r["error"].startswith("not_found") for r in rows)   # no videos here
    assert f"fewer where a class has fewer: {listed[0]} (7), {listed[1]} (7)" in printed.replace(
        f"{listed[1]} (7), {listed[0]} (7)", f"{listed[0]} (7), {listed[1]} (7)")
    assert "974 clips" in printed
    cfg = load_eval_config([*common])
    from sonify.evaluation.benchmarks import clip_specs
    again = clip_specs("vggsound", root, cfg)
    assert [s["id"] for s in again] == [r["id"] for r in rows]   # seeded: the same sample again
    other = clip_specs("vggsound", root, load_eval_config([*common, "seed=1"]))
    assert [s["id"] for s in other] != [r["id"] for r in rows]
    every = clip_specs("vggsound", root, load_eval_config([*common, "benchmarks.vggsound.classes=all", "benchmarks.vggsound.per_class=2"]))
    assert len({s["label"] for s in every}) == 62 and len(every) == 124
    with pytest.raises(Exception, match="benchmarks.vggsound.classes"):
        clip_specs("vggsound", root, load_eval_config([*common, "benchmarks.vggsound.classes=nosuch.txt"]))
    # a class file that lists nothing, or only names no VGGSound label has: one line, exit 2, nothing prepared
    (tmp_path / "empty.txt").write_text("# a source line only\n\n")
    (tmp_path / "typos.txt").write_text("dog barkng\nbaby cryin\n")
    capsys.readouterr()
    for bad, says in [("empty.txt", "lists no class"), ("typos.txt", "none of the 2 classes in")]:
        assert main(["prepare", "vggsound", "--root", str(root), "--out", str(tmp_path / bad), *common,
                     f"benchmarks.vggsound.classes={tmp_path / bad}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sonify.evaluate prepare: benchmarks.vggsound.classes: ") and says in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / bad / "clips.parquet").exists()
    # listed classes with no clip in the chosen split: no empty clip list, one line saying why
    assert main(["prepare", "vggsound", "--root", str(root), "--out", str(tmp_path / "nosplit"), *common,
                 "benchmarks.vggsound.split=nosuch"]) == 2
    assert "vggsound: no clip to take from --root" in capsys.readouterr().err


def test_greatesthits_takes_every_split_and_counts_hits(tmp_path, capsys):
    root = fake_greatesthits(tmp_path / "gh")
    common = ["config=eval_demo", f"models.tiny_dir={tmp_path / 'tiny'}", "benchmarks.greatesthits.seconds=1.0"]
    assert main(["prepare", "greatesthits", "--root", str(root), "--out", str(tmp_path / "p"), *common]) == 0
    rows = pq.read_table(tmp_path / "p" / "clips.parquet").to_pylist()
    assert {r["split"] for r in rows} == {"train", "test"} and len(rows) == 5   # 4 test hits + the train recording's one
    assert ("2015-02-17-10-00-00", "train", "wood") in {(r["id"].split("_")[0], r["split"], r["label"]) for r in rows}
    assert "5 kept hits (one instance each) from 3 recordings; test: 4, train: 1" in capsys.readouterr().out


def test_landscapes_itw_is_one_set_over_the_union(tmp_path, capsys):
    """The union's FID is the FID of the two sets' features concatenated (not an average of two FIDs)."""
    from sonify.evaluation import metrics as M
    from sonify.evaluation.generation import index_folder
    from sonify.evaluation.scoring import score

    ls, itw = fake_landscapes(tmp_path / "ls"), fake_intothewild(tmp_path / "itw")
    common = ["config=eval_demo", f"models.tiny_dir={tmp_path / 'tiny'}"] + [
        f"benchmarks.{b}.{k}" for b in ("landscapes", "intothewild", "landscapes_itw") for k in ("seconds=1.0", "max_clips_per_video=2")]
    cfg = load_eval_config(common)
    assert main(["prepare", "landscapes_itw", "--root", f"landscapes={ls}", "--root", f"intothewild={itw}",
                 "--out", str(tmp_path / "u"), *common]) == 0
    assert "landscapes_itw: the union of 4 landscapes, 3 intothewild clips" in capsys.readouterr().out
    assert main(["prepare", "landscapes_itw", "--root", str(ls), "--out", str(tmp_path / "x"), *common]) == 2
    assert "--root landscapes=DIR --root intothewild=DIR" in capsys.readouterr().err
    prepare("landscapes", ls, tmp_path / "l", cfg)
    prepare("intothewild", itw, tmp_path / "i", cfg)

    def vec(path, flip=False):
        im = np.asarray(Image.open(path).convert("RGB").resize((4, 2)), np.float64)
        return (im[:, ::-1] if flip else im).ravel() / 255

    def features(gt, gen, audio, seconds, classes):
        g, f = np.stack([vec(p) for p in gt]), np.stack([vec(p, flip=True) for p in gen])
        c = np.eye(len(classes), 4)
        return {"inc_gt": g, "inc_gen": f, "clip_gen": f[:, :4], "clip_gt": g[:, :4], "iis_gen": f, "iis_gt": g,
                "audio": f[:, :4], "text": c, "logits_gt": g, "logits_gen": f}

    feats = {}
    for name in ("u", "l", "i"):
        index_folder(tmp_path / name, tmp_path / name / "frames", tmp_path / f"g{name}")
        feats[name] = score(tmp_path / name, tmp_path / f"g{name}", tmp_path / f"s{name}", cfg, features=features)
        rows = [r for r in pq.read_table(tmp_path / name / "clips.parquet").to_pylist() if r["status"] == "ok"]
        feats[name]["gt"] = np.stack([vec(tmp_path / name / r["image"]) for r in rows])
    u = feats["u"]
    assert u["benchmark"] == "landscapes_itw" and u["overall"]["n"] == 7 and u["classes"] == 4
    concat = M.fid(np.concatenate([feats["l"]["gt"], feats["i"]["gt"]]),
                   np.concatenate([feats["l"]["gt"][:, ::1].reshape(-1, 2, 4, 3)[:, :, ::-1].reshape(-1, 24),
                                   feats["i"]["gt"].reshape(-1, 2, 4, 3)[:, :, ::-1].reshape(-1, 24)]))
    assert u["overall"]["FID"] == pytest.approx(concat, rel=1e-9)
    assert u["overall"]["FID"] != pytest.approx((feats["l"]["overall"]["FID"] + feats["i"]["overall"]["FID"]) / 2, rel=1e-3)


def test_the_default_config_names_the_papers_models():
    cfg = load_eval_config(["config=eval_default"])
    assert cfg.models.clip == cfg.models.clip_iis == "openai/clip-vit-base-patch32"
    assert cfg.score.ndb_k == 50 and cfg.score.ks == [1, 5, 10] and not cfg.score.cs_clipped and cfg.score.text_template == "{}"
    b = cfg.benchmarks
    assert b.vggsound.per_class == 20 and b.vggsound.split == "test" and b.vggsound.classes.endswith("vggsound_sound2scene_50.txt")
    for name in ("greatesthits", "landscapes", "intothewild", "landscapes_itw", "vegas"):
        assert getattr(b, name).split is None, name   # the paper: every split
    for name in ("vggsound", "greatesthits", "landscapes", "intothewild", "landscapes_itw", "vegas"):
        assert getattr(b, name).seconds == 5.0, name   # the training chunk length


def test_wav2clip_loads_the_published_checkpoint_layout(tmp_path):
    from sonify.models.wav2clip import Wav2CLIP

    model = Wav2CLIP(width=4).eval()
    state = {f"audio_encoder.{k}": v for k, v in model.audio_encoder.state_dict().items()}
    state["audio_encoder.spectrogram.window"] = torch.hann_window(512)
    state.update({f"audio_transform.sequential.{k}": v for k, v in model.audio_transform.state_dict().items()})
    state["image_encoder.something"] = torch.zeros(1)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"width": 4}))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt" / "model.pth")
    loaded = Wav2CLIP.from_pretrained(tmp_path / "ckpt")
    x = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
        assert model(x).shape == (2, 32)
    full = Wav2CLIP()
    assert full.out_dim == 512 and sum(p.numel() for n, p in full.audio_encoder.named_parameters() if not n.startswith("fc")) == 11_170_240


def test_fid_inception_is_the_published_network(tmp_path):
    from sonify.models.inception import FIDInceptionV3

    full = FIDInceptionV3()
    # torchvision's inception_v3 without the aux head has 23,834,568 parameters with 1000 classes; FID's has 1008
    assert sum(p.numel() for p in full.parameters()) == 23_834_568 + 8 * 2049 and full.feature_dim == 2048
    with torch.no_grad():
        assert full.eval()(torch.rand(1, 3, 299, 299)).shape == (1, 2048)
    sd = {k: v for k, v in full.state_dict().items()}
    torch.save(sd, tmp_path / "pt_inception.pth")   # pytorch-fid's file: a plain state dict
    again = FIDInceptionV3.from_pretrained(tmp_path / "pt_inception.pth")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    sd.pop("fc.bias")
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        FIDInceptionV3.from_pretrained(tmp_path / "broken.pth")


def test_tiny_inception_features_are_alive(tmp_path):
    """The tiny Inception (the demo's FID / KID / IS / NDB network) tells two images apart: its pool features are
    not all zero (at 1/64 width with default batch-norm statistics every ReLU died and every image gave 0)."""
    from sonify.evaluation.features import InceptionFeatures

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    smooth = Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2, np.outer(ramp, ramp) / 255, 255 - np.add.outer(ramp, 0 * ramp)], -1).astype(np.uint8))
    noise = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    inc = InceptionFeatures("tiny:inception", str(tmp_path / "tiny"))
    f = inc([smooth, noise, smooth])
    assert f.shape == (3, 32) and np.isfinite(f).all()
    assert np.abs(f[:2]).max(axis=1).min() > 1e-3, f        # neither image's features are (nearly) all zero
    assert np.abs(f[0] - f[1]).max() > 1e-2 * np.abs(f[:2]).max(), f   # two different images: different features
    assert np.array_equal(f[0], f[2])                        # the same image: the same features
    assert np.std(inc.logits(f[:2]), axis=1).min() > 0       # IS sees non-uniform predictions


def test_tiny_wav2clip_tells_sounds_apart(tmp_path):
    """The tiny Wav2CLIP (the demo's AIS / CS audio tower): a tone, noise and a square wave are not one embedding
    (with default batch-norm statistics every pair was within cosine 0.998)."""
    from sonify.models.tiny import build_tiny
    from sonify.models.wav2clip import Wav2CLIP

    model = Wav2CLIP.from_pretrained(build_tiny("wav2clip", tmp_path))
    t = torch.arange(5 * 16000) / 16000
    waves = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t), 0.1 * torch.randn(len(t), generator=torch.Generator().manual_seed(0)),
                         0.5 * torch.sign(torch.sin(2 * torch.pi * 50 * t))])
    with torch.no_grad():
        e = torch.nn.functional.normalize(model(waves), dim=-1)
    cos = (e @ e.T)[torch.triu_indices(3, 3, 1).unbind()]
    assert torch.isfinite(e).all() and cos.max() < 0.99, cos


def test_clean_resize_keeps_float_precision():
    from sonify.evaluation.features import center_square, clean_resize

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    sq = center_square(im)
    assert sq.size == (40, 40)
    out = clean_resize(sq, 299)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert not np.allclose(out, np.round(out))   # not re-quantised to 8 bits


def test_bad_configuration_fails_in_one_line(tmp_path, capsys):
    assert main(["prepare", "nosuch", "--root", str(tmp_path), "config=eval_demo"]) == 2
    assert "valid choices: vggsound, greatesthits" in capsys.readouterr().err
    assert main(["score", "--clips", str(tmp_path), "--images", str(tmp_path), "score.nokey=1"]) == 2
    assert "nokey" in capsys.readouterr().err


class CountingSampler:
    """The real Sampler, counting what it draws; optionally interrupted after `stop_after` batches."""

    def __init__(self, real, stop_after=None):
        self.real, self.stop_after, self.batches, self.images_drawn = real, stop_after, 0, 0

    def initial_latents(self, n, generator):
        return self.real.initial_latents(n, generator)

    def images(self, clips, latents):
        if self.stop_after is not None and self.batches >= self.stop_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.images_drawn += len(clips)
        return self.real.images(clips, latents)


@pytest.fixture(scope="module")
def demo_checkpoint(full_run, tmp_path_factory):
    """The tiny DiT trained a few steps on the shared demo run's shards."""
    from sonify.training.config import load_train_config
    from sonify.training.loop import train_loop

    run_cfg, _ = full_run
    out = tmp_path_factory.mktemp("dit")
    train_loop(load_train_config(["config=train_demo", f"shards={run_cfg.run.dir}/shards/train.txt", f"val_shards={run_cfg.run.dir}/shards/val.txt", "val_every=1000", f"output_dir={out}",
                                  f"tiny_dir={run_cfg.models.tiny_dir}", "steps=2", "checkpoint_every=2", "progress=false"]))
    return out


@pytest.mark.slow
def test_end_to_end_prepare_generate_resume_score(tmp_path, demo_checkpoint, capsys):
    from sonify.evaluation.generation import generate_images
    from sonify.training.sampling import Sampler

    common = ["config=eval_demo", f"models.tiny_dir={tmp_path / 'tiny'}", *SMALL]
    vgg, gh = fake_vggsound(tmp_path / "vgg"), fake_greatesthits(tmp_path / "gh")
    assert main(["prepare", "vggsound", "--root", str(vgg), "--out", str(tmp_path / "p_vgg"), *common]) == 0
    assert main(["prepare", "greatesthits", "--root", str(gh), "--out", str(tmp_path / "p_gh"), *common]) == 0
    cfg = load_eval_config([*common, f"generate.checkpoint={demo_checkpoint}", "generate.batch_size=3"])
    real = Sampler(str(demo_checkpoint), 1.0, steps=2, device="cpu")
    first = CountingSampler(real, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        generate_images(tmp_path / "p_vgg", tmp_path / "g_vgg", cfg, sampler=first)
    second = CountingSampler(real)
    index = generate_images(tmp_path / "p_vgg", tmp_path / "g_vgg", cfg, sampler=second)
    ok = [r for r in index.to_pylist() if r["status"] == "ok"]
    assert first.images_drawn == 3 and second.images_drawn == len(ok) - 3 == 5   # 8 ok clips; none generated twice
    assert len({r["id"] for r in index.to_pylist()}) == index.num_rows == 9
    assert [r["error"].split(":")[0] for r in index.to_pylist() if r["status"] != "ok"] == ["not_found"]
    other = load_eval_config([*common, f"generate.checkpoint={demo_checkpoint}", "generate.guidance=1.0"])
    with pytest.raises(ValueError, match="other settings"):   # resuming with other settings would mix two models' images
        generate_images(tmp_path / "p_vgg", tmp_path / "g_vgg", other, sampler=second)
    # a row's image does not depend on its batch: one clip alone gives the same picture (within float rounding)
    alone = load_eval_config([*common, f"generate.checkpoint={demo_checkpoint}", "generate.batch_size=1"])
    third = CountingSampler(real)
    generate_images(tmp_path / "p_vgg", tmp_path / "g_again", alone, sampler=third)
    a = np.asarray(Image.open(tmp_path / "g_vgg" / ok[-1]["image"]), np.int16)
    b = np.asarray(Image.open(tmp_path / "g_again" / ok[-1]["image"]), np.int16)
    assert np.abs(a - b).max() <= 2
    # the command path: generation through the CLI for Greatest Hits, then score both
    assert main(["generate", "--clips", str(tmp_path / "p_gh"), "--out", str(tmp_path / "g_gh"),
                 f"generate.checkpoint={demo_checkpoint}", *common]) == 0
    for bench in ("vgg", "gh"):
        assert main(["score", "--clips", str(tmp_path / f"p_{bench}"), "--images", str(tmp_path / f"g_{bench}"), *common]) == 0
        result = json.loads((tmp_path / f"g_{bench}" / "scores.json").read_text())
        for scope in [result["overall"], *result["per_class"].values()]:
            for key, value in scope.items():
                if key == "details":
                    continue
                if isinstance(value, dict):
                    assert value["value"] is None and value["undefined"].startswith("n/a (needs >= "), (key, value)
                else:
                    assert np.isfinite(value), (key, value)
        md = (tmp_path / f"g_{bench}" / "scores.md").read_text()
        assert re.search(r"\| -?\d+\.\d+† \(n=\d+\) \|", md)   # FID at a few clips: a number, marked rank-deficient (n <= 32 dimensions)
        assert "nan" not in md.lower()
    assert json.loads((tmp_path / "g_vgg" / "scores.json").read_text())["retrieval_pool"] == 8
    # another model's folder, keyed by id, scores the same way
    assert main(["generate", "--clips", str(tmp_path / "p_gh"), "--images", str(tmp_path / "g_gh" / "images"),
                 "--out", str(tmp_path / "other"), *common]) == 0
    assert main(["score", "--clips", str(tmp_path / "p_gh"), "--images", str(tmp_path / "other"), "--name", "other", *common]) == 0
    assert "| other | greatesthits | 4 |" in (tmp_path / "other" / "scores.md").read_text()


def test_score_reports_finite_or_na_with_fixed_features(tmp_path, cfg, capsys):
    """The scoring path with known embeddings: identical sets give FID 0, IIS 1, R@1 1."""
    from sonify.evaluation.scoring import score

    root = fake_greatesthits(tmp_path / "gh")
    prepare("greatesthits", root, tmp_path / "p", cfg)
    clips = pq.read_table(tmp_path / "p" / "clips.parquet").to_pylist()
    from sonify.evaluation.generation import index_folder
    index_folder(tmp_path / "p", tmp_path / "p" / "frames", tmp_path / "g")   # the ground truth as the "model"
    rng = np.random.default_rng(0)
    e = rng.standard_normal((len(clips), 5))

    def features(gt, gen, audio, seconds, classes):
        assert [Path(p).name for p in gt] == [Path(p).name for p in gen] and classes == ["metal", "water", "wood"]
        text = np.stack([e[[r["label"] for r in clips].index(c)] for c in classes])   # each class text = its first clip's vector
        return {"inc_gt": e, "inc_gen": e, "clip_gen": e, "clip_gt": e, "iis_gen": e, "iis_gt": e, "audio": e, "text": text,
                "logits_gt": e, "logits_gen": e}

    r = score(tmp_path / "p", tmp_path / "g", tmp_path / "s", cfg, features=features)
    o = r["overall"]
    assert o["IIS"] == pytest.approx(1.0) and o["AIS"] == pytest.approx(1.0) and o["CS"] == pytest.approx(100.0)
    assert o["R@1 (image)"] == 1.0 and str(o["R@5 (image)"]) == "n/a (needs >= 5 images in the pool)"
    assert str(o["R@5"]) == "n/a (needs >= 6 classes)"   # Sound2Scene's R@K: 3 classes
    assert o["FID"] == pytest.approx(0, abs=1e-6) and o["details"]["fid_rank_deficient"]   # 4 clips in 5 dimensions: a number, marked
    assert set(r["per_class"]) == {"wood", "metal", "water"} and r["per_class"]["metal"]["n"] == 2
    assert r["per_class"]["metal"]["R@1 (image)"] == 1.0   # ranked in the whole pool of 4, not among the class's 2
    md = (tmp_path / "s" / "scores.md").read_text()
    assert "| Sound2Scene (published) | 184.2 |" in md and "† (n=4)" in md and "nan" not in md.lower()
    assert "| Sound2Scene (published) | 184.2 | 0.68 | 0.049 | 109.0 |" in md   # as printed, trailing zeros kept
    assert re.search(r"\| metal \| 2 \| -?\d+\.\d+† \|", md.split("per class")[1]), md   # a class's FID at n <= d is marked too
    # Sound2Scene's R@K through `score`: each image (generated and ground truth) lies on its own class's text axis
    axis = {"wood": 2, "metal": 0, "water": 1}   # not the sorted order the class texts are embedded in

    def on_class_axes(gt, gen, audio, seconds, classes):
        by_name = {r["id"]: r["label"] for r in clips}
        own = np.eye(3)[[axis[by_name[Path(p).stem]] for p in gen]] + 0.1
        return {**features(gt, gen, audio, seconds, classes), "clip_gen": own, "clip_gt": own, "iis_gen": own, "iis_gt": own,
                "audio": own, "text": np.eye(3)[[axis[c] for c in classes]]}

    r1 = score(tmp_path / "p", tmp_path / "g", tmp_path / "s1", cfg, features=on_class_axes)
    assert r1["overall"]["R@1"] == 1.0 and r1["ground_truth"]["R@1"] == 1.0, r1
    # `table` composes several scored folders into one Table 1, the published rows first
    score(tmp_path / "p", tmp_path / "g", tmp_path / "s2", cfg, name="other", features=features)
    assert main(["table", str(tmp_path / "s"), str(tmp_path / "s2" / "scores.json"), "--out", str(tmp_path / "t.md"), "config=eval_demo"]) == 0
    names = [ln.split(" | ")[0][2:] for ln in (tmp_path / "t.md").read_text().split("## The peers")[0].splitlines()
             if ln.startswith("| ") and not ln.startswith("| method")]
    assert names[-2:] == ["model", "other"] and names[0] == "Sound2Scene (published)" and len(names) == 7
    capsys.readouterr()
    assert main(["table", str(tmp_path / "s"), str(tmp_path / "s"), "config=eval_demo"]) == 2   # one cell, two results
    assert "two scored results for 'model' on greatesthits" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["table", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"sonify.evaluate table: no scores.json at {tmp_path / 'nothing'}; run `python -m sonify.evaluate score` first"
    # a scores.json that is not a result, or one from before KID / IS / CS: one line, no traceback
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "scores.json").write_text(json.dumps({"name": "x", "benchmark": "vggsound", "overall": {"n": 3, "FID": 1.0, "IIS": 0.5, "AIS": 0.1}}))
    (tmp_path / "odd.json").write_text(json.dumps({"name": "x", "benchmark": "vggsound", "overall": 3}))
    (tmp_path / "empty").mkdir()
    for bad, says in [("old", "(no KID, IS, CS, NDB, NDB/k); score it again"), ("odd.json", "is not a scores.json"),
                      ("empty", "no scores.json at")]:
        assert main(["table", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err, err
    (tmp_path / "bad.csv").write_text("model,benchmark,FID,IIS,AIS\nX,vegas,ten,0.5,0.1\n")
    assert main(["table", str(tmp_path / "s"), f"published={tmp_path / 'bad.csv'}"]) == 2
    assert "row 1 is not model,benchmark,FID,IIS,AIS with numbers" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--checkpoint", str(tmp_path / "no_ckpt")]) == 2
    assert "run `make demo` first" in capsys.readouterr().err
    (tmp_path / "not_a_ckpt").mkdir()   # a folder, but no checkpoint in it: refused before any benchmark is written
    assert main(["demo", "--out", str(tmp_path / "d"), "--checkpoint", str(tmp_path / "not_a_ckpt")]) == 2
    assert "run `make demo` first" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_pairs_audit_figures_match_duckdb(full_run, tmp_path, capsys):
    import duckdb

    run_cfg, _ = full_run
    run = Path(run_cfg.run.dir)
    assert main(["pairs", f"run={run}", "--out", str(tmp_path / "audit")]) == 0
    assert "Pair-quality audit" in capsys.readouterr().out
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    con = duckdb.connect()
    m = lambda t: f"read_parquet('{run}/manifests/{t}/[!.]*.parquet')"   # noqa: E731
    truth = con.execute(f"""SELECT mode, count(*) n, avg(cosine) c, count(DISTINCT chunk_id) d, median(n_eligible) e
                       FROM (SELECT * FROM {m('matches')} UNION ALL SELECT * FROM {m('match_ablations')}) WHERE status = 'ok'
                       GROUP BY mode ORDER BY mode""").fetchall()
    assert [r[0] for r in truth] == ["argmax", "raw", "softmax", "ssr"]
    modes = {r["mode"]: r for r in audit["modes"]}
    for mode, n, c, d, e in truth:
        assert modes[mode]["matches"] == n and modes[mode]["cosine_mean"] == pytest.approx(c)
        assert modes[mode]["distinct_chunks"] == d and modes[mode]["eligible_median"] == pytest.approx(e)
        assert sum(audit["figures"]["cosine"][mode]["counts"]) == n
        assert sum(int(k) * v for k, v in audit["figures"]["images_per_chunk"][mode].items()) == con.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT chunk_id, image_id FROM (SELECT * FROM {m('matches')} UNION ALL "
            f"SELECT * FROM {m('match_ablations')}) WHERE status = 'ok' AND mode = '{mode}')").fetchone()[0]
    # the ssr cosine histogram, bin by bin, from DuckDB's values and the figure's edges
    h = audit["figures"]["cosine"]["ssr"]
    vals = np.array([r[0] for r in con.execute(f"SELECT cosine FROM {m('matches')} WHERE status = 'ok'").fetchall()])
    assert np.histogram(vals, bins=np.array(h["edges"]))[0].tolist() == h["counts"]
    top = con.execute(f"SELECT text, count(*) FROM {m('matches')} WHERE status = 'ok' GROUP BY text ORDER BY 2 DESC, 1 LIMIT 20").fetchall()
    assert list(audit["figures"]["concept_frequency"].items()) == [tuple(t) for t in top]
    per_source = con.execute(f"""SELECT c.source, count(DISTINCT c.id) FILTER (WHERE c.id IN (SELECT chunk_id FROM {m('matches')}
                                  WHERE status = 'ok')) / count(DISTINCT c.id)
                              FROM {m('audio_chunks')} c JOIN {m('audio_embeddings')} e ON e.id = c.id AND e.status = 'ok'
                              GROUP BY c.source""").fetchall()
    assert {f"ssr/{src}": v for src, v in per_source} == pytest.approx(
        {k: v for k, v in audit["figures"]["coverage"].items() if k.startswith("ssr/")})
    n_mix = con.execute(f"SELECT count(*) FROM {m('mixes')} WHERE status = 'ok' AND isfinite(lufs)").fetchone()[0]
    assert sum(audit["figures"]["mix_lufs"]["counts"]) == n_mix
    for name in ("cosine", "score", "n_eligible", "images_per_chunk", "concept_frequency", "coverage", "mix_lufs"):
        assert Image.open(tmp_path / "audit" / f"{name}.png").format == "PNG"
    assert pq.read_table(tmp_path / "audit" / "modes.parquet").num_rows == 4


@pytest.mark.slow
def test_score_with_the_tiny_feature_models_is_finite_at_enough_samples(tmp_path):
    """33 clips scored against their own ground truth (another model's folder) through the real extractors:
    with more samples than the tiny Inception's 32 dimensions every metric is a number (R@5/10 over 3 class names: n/a);
    FID and NDB say 'same'."""
    common = ["config=eval_demo", f"models.tiny_dir={tmp_path / 'tiny'}", *SMALL, "benchmarks.vggsound.num_clips=33"]
    vgg = fake_vggsound(tmp_path / "vgg", per_class=11, missing=0)
    assert main(["prepare", "vggsound", "--root", str(vgg), "--out", str(tmp_path / "p"), *common]) == 0
    assert main(["generate", "--clips", str(tmp_path / "p"), "--images", str(tmp_path / "p" / "frames"),
                 "--out", str(tmp_path / "g"), *common]) == 0
    assert main(["score", "--clips", str(tmp_path / "p"), "--images", str(tmp_path / "g"), *common]) == 0
    o = json.loads((tmp_path / "g" / "scores.json").read_text())["overall"]
    undefined = {k for k, v in o.items() if isinstance(v, dict) and "undefined" in v}
    assert undefined == {"R@5", "R@10"}, o   # Sound2Scene's R@K over 3 class names says nothing at K >= 3
    assert o["n"] == 33 and all(isinstance(v, (int, float)) and np.isfinite(v) for k, v in o.items() if k not in undefined | {"details"}), o
    assert not o["details"]["fid_rank_deficient"]
    assert o["FID"] == pytest.approx(0, abs=1e-6) and o["IIS"] == pytest.approx(1) and o["NDB"] == 0


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, demo_checkpoint, capsys):
    """`python -m sonify.evaluate demo`: fake VGGSound / Greatest Hits / Landscapes + ITW, the demo model, one Table 1."""
    from sonify.evaluation.table import read_published

    out = tmp_path / "runs" / "eval_demo"
    assert main(["demo", "--out", str(out), "--checkpoint", str(demo_checkpoint), f"models.tiny_dir={tmp_path / 'tiny'}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out / "scores.md")
    md = Path(lines[-1]).read_text()
    table1 = md.split("## The peers")[0]
    rows = [ln.strip("| ").split(" | ") for ln in table1.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    published, _ = read_published("pipelines/eval/paper_table1.csv")
    assert [r[0] for r in rows] == [*[f"{m} (published)" for m in dict.fromkeys(p["model"] for p in published)], "demo"]
    for cells in rows:
        for c in cells[1:]:
            assert re.fullmatch(r"-?\d+(\.\d+)?†? \(n=\d+\)|-?\d+(\.\d+)?|n/a \(.+\)", c), c
    demo = dict(zip(table1.splitlines()[2].strip("| ").split(" | "), rows[-1]))
    for bench in ("greatesthits", "landscapes_itw", "vggsound"):
        assert re.fullmatch(r"\d+\.\d+† \(n=\d+\)", demo[f"{bench} FID ↓"]), demo   # a number at the demo's small n, marked
    assert demo["vegas FID ↓"] == "n/a (not scored)"
    assert "ground truth (upper bound)" in md and "nan" not in md.lower()
    for bench, n in (("vggsound", 11), ("greatesthits", 7), ("landscapes_itw", 12)):
        clips = pq.read_table(out / bench / "clips.parquet").to_pylist()
        assert len(clips) == n and all(r["status"] == "ok" and r["seconds"] == 5.0 for r in clips), bench
        assert all(sf.info(out / bench / r["audio"]).frames == 5 * 16000 for r in clips)
    vgg = {r["label"] for r in pq.read_table(out / "vggsound" / "clips.parquet").to_pylist()}
    assert vgg == {"dog barking", "baby crying", "railroad car, train wagon", "hail"}   # the unlisted class is left out
