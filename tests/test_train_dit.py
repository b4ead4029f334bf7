"""The audio-conditioned DiT: training on tiny shards, exact resume, Ray Train, generation."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sonify.engine.errors import ConfigError
from sonify.train_dit import main
from sonify.training.config import load_train_config
from sonify.training.dit import AudioConditioner
from sonify.training.loop import checkpoints, train_loop


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_shards(d: Path, n_samples=8, per_shard=4, ast_dim=32, latent=(4, 32, 32), seed=0, sizes=None, split="train"):
    """Tiny shards in the layout of the shards stage, and its shard list `<split>.txt` (names relative to
    the list's folder); `sizes` gives uneven shards. Returns the list file's path."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    sizes = sizes or [min(per_shard, n_samples - s) for s in range(0, n_samples, per_shard)]
    names, i = [], 0
    for n, size in enumerate(sizes):
        names.append(f"{split}-{n:06d}.tar")
        with tarfile.open(d / names[-1], "w") as tf:
            for i in range(i, i + size):
                key = f"{split}{i:012x}_abcd1234"
                mean = rng.standard_normal(latent).astype(np.float16)
                std = np.full(latent, 0.05, np.float16)
                members = {"latent.npy": _npy(np.stack([mean, std])),
                           "ast.npy": _npy(rng.standard_normal((49, ast_dim)).astype(np.float16)),
                           "json": json.dumps({"image_id": f"{i:016x}", "scaling_factor": 0.18215}).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            i += 1
    (d / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return str(d / f"{split}.txt")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tiny"))


def _cfg(shards, tiny_dir, out, *extra):
    return load_train_config([f"shards={shards}", f"output_dir={out}", f"tiny_dir={tiny_dir}", "progress=false", "val_every=0", *extra])


def _params(path):
    from diffusers import PixArtTransformer2DModel

    return {k: v.clone() for k, v in PixArtTransformer2DModel.from_pretrained(path).state_dict().items()}


def test_loss_falls_when_overfitting_a_handful_of_samples(shards, tiny_dir, tmp_path, monkeypatch):
    from sonify.training.loss import DiffusionLoss

    losses = []
    real = DiffusionLoss.__call__

    def record(self, *args):
        terms = real(self, *args)
        losses.append(terms["mse"].item())
        return terms

    monkeypatch.setattr(DiffusionLoss, "__call__", record)
    cfg = _cfg(shards, tiny_dir, tmp_path / "out", "steps=60", "cond_dropout=0", "lr=2e-3", "checkpoint_every=1000")
    train_loop(cfg)
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(shards, tiny_dir, tmp_path):
    full = _cfg(shards, tiny_dir, tmp_path / "full", "steps=6", "checkpoint_every=3", "global_batch=8", "per_device_batch=4")
    train_loop(full)
    part = _cfg(shards, tiny_dir, tmp_path / "part", "steps=3", "checkpoint_every=3", "global_batch=8", "per_device_batch=4")
    train_loop(part)
    resumed = _cfg(shards, tiny_dir, tmp_path / "part", "steps=6", "checkpoint_every=3", "global_batch=8",
                   "per_device_batch=4", "resume=latest")
    train_loop(resumed)
    assert [p.name for p in checkpoints(tmp_path / "part")] == ["checkpoint-3", "checkpoint-6"]
    for sub in ("transformer", "transformer_ema"):
        a, b = _params(tmp_path / "full/checkpoint-6" / sub), _params(tmp_path / "part/checkpoint-6" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    for sub in ("conditioner", "conditioner_ema"):
        a, b = (AudioConditioner.from_pretrained(tmp_path / f"{r}/checkpoint-6" / sub).null for r in ("full", "part"))
        assert torch.equal(a, b), sub
    state = torch.load(tmp_path / "part/checkpoint-6/training_state.pt", weights_only=False)
    assert state["step"] == 6 and state["data"]["ranks"][0]["epoch"] >= 1   # 8 samples / batch 4, accumulation 2: a step per epoch


def test_loader_workers_split_shards_and_resume_exactly(tmp_path, tiny_dir):
    """Two DataLoader workers over four shards: a resumed run matches an uninterrupted one."""
    pattern = write_shards(tmp_path / "s4", n_samples=16, per_shard=4)
    common = ["per_device_batch=2", "global_batch=2", "loader_workers=2", "checkpoint_every=3"]
    train_loop(_cfg(pattern, tiny_dir, tmp_path / "full", "steps=6", *common))
    train_loop(_cfg(pattern, tiny_dir, tmp_path / "part", "steps=3", *common))
    train_loop(_cfg(pattern, tiny_dir, tmp_path / "part", "steps=6", "resume=latest", *common))
    a, b = _params(tmp_path / "full/checkpoint-6/transformer"), _params(tmp_path / "part/checkpoint-6/transformer")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_transformer_loads_with_plain_diffusers(shards, tiny_dir, tmp_path):
    from diffusers import PixArtTransformer2DModel

    train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=2", "checkpoint_every=2"))
    model = PixArtTransformer2DModel.from_pretrained(tmp_path / "o/checkpoint-2/transformer")
    assert model.config.caption_channels == 32 and model.caption_projection.linear_1.in_features == 32


def test_a_checkpoint_folder_copied_elsewhere_generates_the_same_bytes(shards, tiny_dir, tmp_path):
    """A checkpoint holds its model, conditioner, noise scheduler and pipeline description: copied anywhere
    (the run folder gone) it generates the same image bytes as in place; the sampler reads the schedule from
    `scheduler/`; a checkpoint written before these (no `scheduler/`, no `pipeline.json`) still reads its run's
    `train_config.json` and generates the same bytes."""
    import shutil

    from diffusers import DDPMScheduler

    from sonify.generate import main as generate_main
    from sonify.training.forward import noise_scheduler

    train_loop(_cfg(shards, tiny_dir, tmp_path / "run", "steps=2", "checkpoint_every=2", "num_train_timesteps=500"))
    ckpt = tmp_path / "run" / "checkpoint-2"
    saved = DDPMScheduler.from_pretrained(ckpt / "scheduler")
    assert saved.config.num_train_timesteps == 500 and torch.equal(saved.betas, noise_scheduler(500).betas)
    assert torch.allclose(noise_scheduler(1000).betas, torch.linspace(1e-4, 0.02, 1000))   # DDPM's linear schedule (Ho et al. 2020, 4)
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)

    def images(checkpoint, name):
        args = ["--checkpoint", str(checkpoint), "--audio", str(wav), "--out", str(tmp_path / name), "--steps", "2",
                "--num-images", "2", "--seconds", "1", "--device", "cpu"]
        assert generate_main(args) == 0
        return [(tmp_path / name / f).read_bytes() for f in ("image_00.png", "image_01.png", "grid.png")]

    in_place = images(ckpt, "in_place")
    shutil.copytree(ckpt, tmp_path / "elsewhere" / "ckpt")
    (tmp_path / "run").rename(tmp_path / "gone")
    assert images(tmp_path / "elsewhere" / "ckpt", "copied") == in_place
    conf = tmp_path / "elsewhere" / "ckpt" / "scheduler" / "scheduler_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "beta_end": 0.03}))
    assert images(tmp_path / "elsewhere" / "ckpt", "other_schedule")[0] != in_place[0]
    old = tmp_path / "gone" / "checkpoint-2"   # the layout before: the run's train_config.json, no scheduler/
    shutil.rmtree(old / "scheduler")
    (old / "pipeline.json").unlink()
    assert images(old, "old_layout") == in_place
    shutil.rmtree(tmp_path / "elsewhere" / "ckpt" / "scheduler")
    (tmp_path / "elsewhere" / "ckpt" / "pipeline.json").unlink()
    assert generate_main(["--checkpoint", str(tmp_path / "elsewhere" / "ckpt"), "--audio", str(wav), "--out", str(tmp_path / "x")]) == 2


def test_the_conditioner_is_a_diffusers_model_and_old_folders_still_load(tmp_path):
    from safetensors.torch import save_file

    cond = AudioConditioner(8)
    cond.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["_class_name"] == "AudioConditioner"
    back = AudioConditioner.from_pretrained(tmp_path / "new")
    assert back.config.dim == back.dim == 8 and torch.equal(back.null, cond.null)
    old = tmp_path / "old"   # the hand-written format checkpoints had before
    old.mkdir()
    null = torch.randn(1, 8)
    save_file({"null": null}, old / "model.safetensors")
    (old / "config.json").write_text(json.dumps({"dim": 8}))
    loaded = AudioConditioner.from_pretrained(old)
    assert loaded.config.dim == 8 and torch.equal(loaded.null.detach(), null)


def test_keep_only_the_last_checkpoints(shards, tiny_dir, tmp_path):
    train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=4", "checkpoint_every=1", "keep_checkpoints=2"))
    assert [p.name for p in checkpoints(tmp_path / "o")] == ["checkpoint-3", "checkpoint-4"]


def test_bad_shard_is_logged_skipped_and_counted(tmp_path, tiny_dir, caplog):
    pattern = write_shards(tmp_path / "s", n_samples=8, per_shard=4)
    (tmp_path / "s" / "train-000009.tar").write_bytes(b"this is not a tar file" * 100)
    Path(pattern).write_text(Path(pattern).read_text() + "train-000009.tar\n")
    metrics = train_loop(_cfg(pattern, tiny_dir, tmp_path / "o", "steps=2", "checkpoint_every=10"))   # one epoch: read once
    assert metrics["skipped_shard_errors"] == 1 and metrics["step"] == 2
    assert "skipping unreadable shard data" in caplog.text and "1 unreadable shards or samples were skipped" in caplog.text


@pytest.mark.parametrize("override, message", [
    ("ast_dim=64", "ast_dim=64 but the shards' ast.npy are 32 wide"),
    ("latent_size=16", "the shards' latents are 4x32x32 but the transformer takes 4x16x16"),
    ("shards=/nonexistent/*.tar", "no shards match"),
    ("shards=/nonexistent/x.tar", "shards='/nonexistent/x.tar': no readable sample in 1 shards"),
    ("global_batch=6", "global_batch=6 is not a multiple of per_device_batch x workers = 4"),
])
def test_mismatched_config_fails_before_training_in_one_line(shards, tiny_dir, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")) as e:
        train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=1", override))
    assert "\n" not in str(e.value) and not checkpoints(tmp_path / "o")


def test_cli_errors_are_one_line(capsys):
    assert main(["stepz=3"]) == 2
    assert "unknown config key 'stepz'" in capsys.readouterr().err
    assert main(["config=nope"]) == 2
    assert "valid choices: train_demo, train_paper, train_sam" in capsys.readouterr().err


def test_generate_writes_images_of_the_configured_size(shards, tiny_dir, tmp_path):
    from PIL import Image

    from sonify.training.sampling import condition_audio, generate

    train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=2", "checkpoint_every=2"))
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    t = np.arange(16000 * 3) / 16000
    sf.write(a, 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    sf.write(b, 0.3 * np.random.default_rng(0).standard_normal(44100 * 2), 44100)
    paths = generate(str(tmp_path / "o"), [str(a), str(b)], str(tmp_path / "gen"), offsets=[0, -6], steps=3, num_images=3, device="cpu")
    assert [p.name for p in paths] == ["image_00.png", "image_01.png", "image_02.png", "grid.png"]
    assert Image.open(paths[0]).size == (64, 64)            # latent 32 x the tiny VAE's factor 2
    assert Image.open(paths[-1]).size == (3 * 64, 64)
    seq = condition_audio([str(a), str(b)], [0, 0], -23.0, True, 16000, 5.0)
    mixed = condition_audio([str(a), str(b)], [0, 0], -23.0, False, 16000, 5.0)
    assert seq.size == 2 * mixed.size == 160000
    again = generate(str(tmp_path / "o"), [str(a)], str(tmp_path / "gen2"), steps=3, num_images=1, device="cpu", sequential=True)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(
        generate(str(tmp_path / "o"), [str(a)], str(tmp_path / "gen3"), steps=3, num_images=1, device="cpu", sequential=True)[0])))


@pytest.mark.slow   # Ray Train's controller and a 2-rank gloo group on 2 cores: ~20 s; the loop itself runs in the fast tests
@pytest.mark.ray
def test_ray_train_with_two_cpu_workers(shards, tiny_dir, tmp_path, ray_driver):
    from sonify.training.loop import run_ray

    metrics = run_ray(_cfg(shards, tiny_dir, tmp_path / "o", "trainer=ray", "num_workers=2", "steps=2",
                           "per_device_batch=2", "global_batch=4", "checkpoint_every=2"))
    assert metrics["step"] == 2
    assert [p.name for p in checkpoints(tmp_path / "o")] == ["checkpoint-2"]


@pytest.mark.parametrize("array", [np.zeros((2, 4, 8, 8), np.float16), np.arange(12, dtype="<f4").reshape(3, 4),
                                   np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.float32(3.5), np.zeros((0, 5), np.float16)])
def test_fast_npy_reader_equals_np_load(array):
    from sonify.training.data import load_npy

    data = _npy(array)
    got, want = load_npy(data), np.load(io.BytesIO(data))
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def _sync_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from sonify.training.distributed import sync_grads

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = None if rank == 1 else torch.tensor([2.0, 4.0, 6.0])   # rank 1 dropped no sample: no gradient
    sync_grads([p], world)
    torch.save(p.grad, f"{out_dir}/grad{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow   # multi-rank (the project's rule for slow): two spawned processes importing torch, 3-9 s here
def test_sync_grads_averages_parameters_outside_ddp_across_ranks(tmp_path):
    """The null-audio token lives outside the DDP module: every rank must end with the same averaged gradient."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = torch.load(tmp_path / "grad0.pt"), torch.load(tmp_path / "grad1.pt")
    assert torch.equal(g0, g1) and torch.equal(g0, torch.tensor([1.0, 2.0, 3.0]))


def _diffusion():
    from sonify.training.forward import noise_scheduler
    from sonify.training.loss import DiffusionLoss

    sched = noise_scheduler(1000)
    return sched, DiffusionLoss(sched.betas)


def test_hybrid_loss_is_mse_without_learned_sigma_and_zero_vb_for_a_perfect_model():
    sched, loss = _diffusion()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    xt = sched.add_noise(x0, noise, t)
    eps_only = loss(noise + 0.1, noise, x0, xt, t)
    assert set(eps_only) == {"loss", "mse"} and eps_only["loss"].item() == pytest.approx(0.01, rel=1e-4)
    t_pos = torch.tensor([1, 2, 10, 100, 500, 999])   # t = 0 is the decoder NLL, not a KL
    xt_pos = sched.add_noise(x0, noise, t_pos)
    # eps exact and v = -1 (the posterior's own variance): the model's p equals the true q, so the KL is 0
    perfect = loss(torch.cat([noise, -torch.ones_like(noise)], 1), noise, x0, xt_pos, t_pos)
    assert perfect["mse"].item() == 0 and perfect["vb"].item() == pytest.approx(0.0, abs=1e-4)


def test_vb_is_positive_and_trains_only_the_variance_channels():
    sched, loss = _diffusion()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([3, 50, 400, 900])
    xt = sched.add_noise(x0, noise, t)
    pred = torch.randn(4, 8, 8, 8, generator=g).requires_grad_()
    terms = loss(pred, noise, x0, xt, t)
    assert terms["vb"].item() > 0
    terms["vb"].backward()
    assert pred.grad[:, :4].abs().sum() == 0 and pred.grad[:, 4:].abs().sum() > 0   # eps is stop-gradient in the bound


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_bytes(b"RIFF" + b"not audio at all" * 8), "cannot be decoded as audio (Format not recognised.)"),
    (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "is empty (0 audio frames)"),
    (lambda p: sf.write(p, np.zeros(16000, np.float32), 16000), "is silent (below the loudness gate)"),
    (lambda p: None, "no such file"),
])
def test_generate_bad_audio_fails_in_one_line(tmp_path, capsys, make, says):
    """Each bad input is named for what it is, in one line on stderr, before any model loads."""
    from sonify.generate import main as generate_main

    wav = tmp_path / "in.wav"
    make(wav)
    assert generate_main(["--checkpoint", str(tmp_path / "no_checkpoint"), "--audio", str(wav), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sonify.generate: ") and says in err, err
    assert "Traceback" not in err and not (tmp_path / "g").exists()


def test_generate_sequential_with_one_input_fails_in_one_line(tmp_path, capsys):
    from sonify.generate import main as generate_main

    wav = tmp_path / "in.wav"
    sf.write(wav, 0.1 * np.ones(16000, np.float32), 16000)
    assert generate_main(["--checkpoint", str(tmp_path / "no_checkpoint"), "--audio", str(wav), "--sequential"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give at least 2 --audio files" in err


def test_training_prints_no_warnings(shards, tiny_dir, tmp_path):
    """The trainer's own metrics read detached scalars: no autograd UserWarning, and no other warning either."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=2", "log_every=1", "checkpoint_every=2"))
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)   # Python's defaults hide these
    assert [f"{w.category.__name__}: {w.message}" for w in seen if not issubclass(w.category, hidden)] == []


def _data_cfg(**kw):
    from types import SimpleNamespace

    base = dict(seed=0, shuffle_window=4, per_device_batch=4, drop_last=True, max_audio_frames=256)
    return SimpleNamespace(**{**base, **kw})


def _epoch_batches(urls, epoch, cfg, streams=1):
    from sonify.training.data import plan_streams, stream_items

    return [[it.batch.keys for it in stream_items(st, (0, 0), s, epoch, cfg, 1.0, 0.0) if it.batch is not None]
            for s, st in enumerate(plan_streams(urls, cfg.seed, epoch, streams))]


def test_shard_list_file_names_are_relative_to_its_folder(tmp_path, monkeypatch):
    from sonify.training.data import expand_shards

    write_shards(tmp_path / "run" / "shards", n_samples=8, per_shard=4)
    monkeypatch.chdir(tmp_path)
    assert expand_shards("run/shards/train.txt") == ["run/shards/train-000000.tar", "run/shards/train-000001.tar"]
    assert expand_shards("run/shards/train-*.tar,run/shards/train.txt") == expand_shards("run/shards/train.txt") * 2
    with pytest.raises(ConfigError, match="shard list run/shards/nope.txt does not exist"):
        expand_shards("run/shards/nope.txt")


def test_shuffle_mixes_within_and_across_shards_and_is_fixed_by_the_seed(tmp_path):
    """64 samples in 8 shards of 8, batches of 4, windows of 4 shards. Read in order (the old loader), every
    pair sharing a batch in epoch 0 would share one in epoch 1 too; shuffled, fewer than 15% may."""
    from sonify.training.data import expand_shards

    urls = expand_shards(write_shards(tmp_path / "s", n_samples=64, per_shard=8, latent=(4, 2, 2)))
    cfg = _data_cfg()
    e0, e1 = _epoch_batches(urls, 0, cfg)[0], _epoch_batches(urls, 1, cfg)[0]
    for batches in (e0, e1):
        assert sorted(k for b in batches for k in b) == sorted(f"train{i:012x}_abcd1234" for i in range(64))
    pairs = [{frozenset((a, b)) for keys in batches for a in keys for b in keys if a < b} for batches in (e0, e1)]
    shared = len(pairs[0] & pairs[1]) / len(pairs[0])
    assert shared < 0.15, shared
    shard_of = {f"train{i:012x}_abcd1234": i // 8 for i in range(64)}
    mixed = sum(len({shard_of[k] for k in b}) > 1 for b in e0) / len(e0)
    assert mixed > 0.75, mixed                       # batches draw from several shards
    assert _epoch_batches(urls, 0, cfg) == _epoch_batches(urls, 0, _data_cfg())                 # same seed, same batches
    assert _epoch_batches(urls, 0, cfg) != _epoch_batches(urls, 0, _data_cfg(seed=1))


def test_a_stream_resumes_from_its_position_without_decoding_what_it_consumed(tmp_path, monkeypatch):
    import sonify.training.data as data

    urls = data.expand_shards(write_shards(tmp_path / "s", sizes=[5, 9, 3, 7, 6], latent=(4, 2, 2)))
    cfg = _data_cfg(shuffle_window=2, per_device_batch=3)
    stream = data.plan_streams(urls, 0, 0, 1)[0]
    decoded = []
    real = data.decode_sample
    monkeypatch.setattr(data, "decode_sample", lambda s: (decoded.append(s["__key__"]), real(s))[1])
    full = list(data.stream_items(stream, (0, 0), 0, 0, cfg, 1.0, 0.0))
    assert len(decoded) == 30 - 30 % 3 and full[-1].batch is None
    for k in range(1, len(full)):
        decoded.clear()
        rest = list(data.stream_items(stream, full[k - 1].pos, 0, 0, cfg, 1.0, 0.0))
        assert [it.batch and it.batch.keys for it in rest] == [it.batch and it.batch.keys for it in full[k:]]
        assert decoded == [key for it in full[k:] if it.batch for key in it.batch.keys]    # nothing consumed is decoded again
    assert list(data.stream_items(stream, full[-1].pos, 0, 0, cfg, 1.0, 0.0)) == []     # after the tail: nothing


def test_fewer_shards_than_streams_are_split_by_samples(tmp_path):
    from sonify.training.data import expand_shards, plan_streams

    urls = expand_shards(write_shards(tmp_path / "s", sizes=[7, 5], latent=(4, 2, 2)))
    assert [s.of for s in plan_streams(urls, 0, 0, 4)] == [4] * 4 and [s.of for s in plan_streams(urls, 0, 0, 2)] == [1, 1]
    per_stream = _epoch_batches(urls, 0, _data_cfg(per_device_batch=1), streams=4)
    keys = [k for batches in per_stream for b in batches for k in b]
    assert sorted(keys) == sorted(f"train{i:012x}_abcd1234" for i in range(12)) and all(len(b) == 3 for b in per_stream)


def test_a_corrupt_shard_read_by_every_loader_worker_is_counted_once(tmp_path, tiny_dir, caplog):
    """One good shard and one corrupt shard for 3 loader workers: fewer shards than streams, so every worker
    indexes both (a split by samples, said before the first step); the corrupt one is counted once."""
    caplog.set_level("INFO")
    listfile = write_shards(tmp_path / "s", sizes=[12], latent=(4, 16, 16))
    (tmp_path / "s" / "train-000001.tar").write_bytes(b"this is not a tar file" * 100)
    Path(listfile).write_text("train-000000.tar\ntrain-000001.tar\n")
    metrics = train_loop(_cfg(listfile, tiny_dir, tmp_path / "o", "steps=4", "per_device_batch=2", "global_batch=2",
                              "loader_workers=3", "latent_size=16", "checkpoint_every=100", "log_every=2"))
    assert metrics["skipped_shard_errors"] == 1 and metrics["samples_decoded"] == 8
    assert "2 shards for 1 ranks x 3 loader streams: every stream reads every shard" in caplog.text
    assert caplog.text.index("split by samples") < caplog.text.index("step 2 loss")
    assert "1 unreadable shards or samples were skipped" in caplog.text


def test_generate_uses_the_ema_transformer_and_ema_null_token_together(shards, tiny_dir, tmp_path, monkeypatch):
    import sonify.training.sampling as sampling

    out = tmp_path / "o"
    train_loop(_cfg(shards, tiny_dir, out, "steps=3", "checkpoint_every=3", "ema_decay=0.5", "cond_dropout=0.5", "lr=1e-2"))
    ckpt = out / "checkpoint-3"
    null = {s: AudioConditioner.from_pretrained(ckpt / s).null for s in ("conditioner", "conditioner_ema")}
    assert not torch.equal(null["conditioner"], null["conditioner_ema"])        # the null token has its own EMA
    seen = {}

    def capture(model, conditioner, *args):
        seen.update(model=model.state_dict(), null=conditioner.null.detach().clone())
        return real(model, conditioner, *args)

    real = sampling.sample_images
    monkeypatch.setattr(sampling, "sample_images", capture)
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)
    for use_ema, suffix in ((True, "_ema"), (False, "")):
        sampling.generate(str(out), [str(wav)], str(tmp_path / f"g{suffix}"), steps=2, num_images=1, device="cpu", use_ema=use_ema)
        want = _params(ckpt / f"transformer{suffix}")
        assert all(torch.equal(seen["model"][k], want[k]) for k in want) and torch.equal(seen["null"], null[f"conditioner{suffix}"])
    import shutil

    shutil.rmtree(ckpt / "conditioner_ema")     # half an EMA set: both trained weights, never a mix
    model, cond = sampling.load_weights(ckpt, True)
    assert torch.equal(cond.null, null["conditioner"]) and all(torch.equal(v, _params(ckpt / "transformer")[k])
                                                               for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"^checkpoint-3 was written by 1 ranks x 1 loader streams, this run has 1 x 2: "
                                          r"resume with num_workers=1 loader_workers=0$"):
        train_loop(_cfg(shards, tiny_dir, out, "steps=4", "resume=latest", "loader_workers=2"))


def test_validation_loss_and_grid_reach_tensorboard_in_a_demo_run(tmp_path, tiny_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = write_shards(tmp_path / "shards", n_samples=8, per_shard=4)
    val = write_shards(tmp_path / "shards", n_samples=6, per_shard=3, split="val", seed=1)
    cfg = load_train_config(["config=train_demo", f"shards={train}", f"val_shards={val}", f"output_dir={tmp_path / 'dit'}",
                             f"tiny_dir={tiny_dir}", "progress=false", "steps=4", "val_every=2", "checkpoint_every=4",
                             "val_images=3", "val_sample_steps=2"])
    metrics = train_loop(cfg)
    acc = EventAccumulator(str(tmp_path / "dit" / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    assert metrics["val_loss"] == pytest.approx(acc.Scalars("val/loss")[-1].value, rel=1e-5)
    grids = acc.Images("val/grid")
    assert [g.step for g in grids] == [2, 4] and (grids[0].width, grids[0].height) == (3 * 64, 64)
    from PIL import Image

    for step in (2, 4):
        saved = tmp_path / "dit" / "validation" / f"step-{step}"
        assert Image.open(saved / "grid.png").size == (3 * 64, 64)
        assert json.loads((saved / "metrics.json").read_text())["val_loss"] == pytest.approx(acc.Scalars("val/loss")[step // 2 - 1].value)


def _rank_worker(rank, world, init_file, listfile, tiny_dir, root):
    """One gloo rank: an uninterrupted run, a run stopped mid-epoch, and its resumption, tracing the keys
    each run trains on, the keys its loader workers decode, and the all-reduces DDP makes."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sonify.training.data as data

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    phase = {"name": ""}
    real_decode, real_loader = data.decode_sample, data.loader

    def decode(sample):   # runs in the forked loader workers, which inherit `phase`
        with open(f"{root}/decoded-{phase['name']}-{rank}-{os.getpid()}.txt", "a") as f:
            f.write(sample["__key__"] + "\n")
        return real_decode(sample)

    def traced_loader(*args):
        for item in real_loader(*args):
            if item.batch is not None:
                with open(f"{root}/trained-{phase['name']}-{rank}.txt", "a") as f:
                    f.write("".join(k + "\n" for k in item.batch.keys))
            yield item

    data.decode_sample, data.loader = decode, traced_loader
    allreduces = {"n": 0}

    def counting_hook(state, bucket):
        allreduces["n"] += 1
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0] / world)

    from sonify.training.config import ddp_kwargs

    # the trainer's DDP options as the config passes them: gradients as views of the buckets (a static graph
    # is refused with accumulation, as here)
    common = ["per_device_batch=2", "global_batch=8", "loader_workers=2", "checkpoint_every=3", "latent_size=16", "log_every=1",
              "ddp_gradient_as_bucket_view=true"]
    options = ddp_kwargs(_cfg(listfile, tiny_dir, root, *common), world)
    assert options["gradient_as_bucket_view"] and not options["static_graph"]

    def wrap(model):
        ddp = DDP(model, **options)
        ddp.register_comm_hook(None, counting_hook)
        return ddp

    for name, extra in (("full", ["steps=6"]), ("part", ["steps=3"]), ("resumed", ["steps=6", "resume=latest"])):
        phase["name"], allreduces["n"] = name, 0
        out = f"{root}/{'full' if name == 'full' else 'part'}"
        metrics = train_loop(_cfg(listfile, tiny_dir, out, *common, *extra), rank, world, wrap=wrap)
        Path(f"{root}/metrics-{name}-{rank}.json").write_text(json.dumps({**metrics, "allreduces": allreduces["n"]}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_two_loader_workers_resume_exactly_and_read_nothing_twice(tmp_path, tiny_dir):
    """2 gloo ranks x 2 loader workers on 5 uneven shards, gradient accumulation 2: stopped at step 3 (mid-epoch
    on both ranks) and resumed, the parameters equal an uninterrupted run's; the resumed run trains on exactly
    the rest of the uninterrupted run's batches and decodes no sample the interrupted run trained on; DDP
    all-reduces once per optimizer step, not per micro-step (no_sync)."""
    import torch.multiprocessing as mp

    listfile = write_shards(tmp_path / "s", sizes=[16, 13, 15, 14, 17], latent=(4, 16, 16))
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), listfile, tiny_dir, str(tmp_path)), nprocs=2, join=True)

    def lines(pattern):
        return [k for p in sorted(tmp_path.glob(pattern)) for k in p.read_text().split()]

    for sub in ("transformer", "transformer_ema"):
        a, b = _params(tmp_path / "full/checkpoint-6" / sub), _params(tmp_path / "part/checkpoint-6" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    for sub in ("conditioner", "conditioner_ema"):
        assert torch.equal(*(AudioConditioner.from_pretrained(tmp_path / f"{r}/checkpoint-6" / sub).null for r in ("full", "part")))
    for rank in (0, 1):
        full, part, resumed = (lines(f"trained-{n}-{rank}.txt") for n in ("full", "part", "resumed"))
        assert len(full) == 6 * 2 * 2 and part + resumed == full                  # the same batches, in the same order
        assert not set(lines(f"decoded-resumed-{rank}-*.txt")) & set(part)        # nothing trained on is read again
        assert len(set(full)) == len(full)                                        # six steps stay inside the first epoch
        for name, steps in (("full", 6), ("part", 3), ("resumed", 3)):
            m = json.loads((tmp_path / f"metrics-{name}-{rank}.json").read_text())
            assert m["allreduces"] == steps, (name, m)                             # one bucket, once per optimizer step
        assert json.loads((tmp_path / f"metrics-resumed-{rank}.json").read_text())["samples_decoded"] == 2 * 6 * 2 * 2
    state = torch.load(tmp_path / "part/checkpoint-3/training_state.pt", weights_only=False)["data"]
    assert (state["world"], state["workers"]) == (2, 2)
    for r in state["ranks"]:      # mid-epoch on both ranks: streams started, none finished
        assert r["epoch"] == 0 and any(p != [0, 0] for p in r["streams"])


def test_a_resumed_dataloader_continues_the_same_item_sequence(tmp_path):
    """Two loader workers on uneven streams (one runs dry early): restarted from the position after any
    item, a DataLoader yields exactly the rest of the uninterrupted sequence (its workers rotated so the
    stream due next comes first, a finished stream yielding nothing)."""
    from sonify.training.data import Position, expand_shards, loader, plan_streams

    urls = expand_shards(write_shards(tmp_path / "s", sizes=[2, 9, 5], latent=(4, 2, 2)))
    cfg = load_train_config(["val_every=0", "loader_workers=2", "per_device_batch=2", "shuffle_window=1", "cond_dropout=0"])
    streams = plan_streams(urls, cfg.seed, 0, 2)
    assert sorted(len(s.shards) for s in streams) == [1, 2]

    def run(pos):
        return [(it.role, it.batch and it.batch.keys) for it in loader(streams, pos, cfg, 1.0)]

    pos = Position(2)
    full = run(pos)
    per_role = [sum(r == role and b is not None for r, b in full) for role in (0, 1)]
    assert per_role[0] != per_role[1] and min(per_role) >= 2 and sum(b is None for _, b in full) == 2   # uneven; two tails
    items = list(loader(streams, Position(2), cfg, 1.0))
    for k in range(1, len(items)):
        pos = Position(2)
        for it in items[:k]:
            pos.consume(it)
        assert run(pos) == full[k:], k


def test_sequential_generates_from_any_number_of_inputs_one_ast_slot_each(shards, tiny_dir, tmp_path):
    """`--sequential` with 3 and 4 inputs: the clip holds N 5 s slots, each encoded by the AST at its trained
    length (the tiny AST's 512 frames hold one slot, not N), the tokens concatenated in time."""
    from PIL import Image

    from sonify.training.sampling import Sampler, condition_audio, generate

    out = tmp_path / "o"
    train_loop(_cfg(shards, tiny_dir, out, "steps=1", "checkpoint_every=1"))
    sampler = Sampler(str(out), 5.0, steps=2, device="cpu")
    rng = np.random.default_rng(0)
    for n in (3, 4):
        paths = []
        for i in range(n):
            paths.append(str(tmp_path / f"in{n}_{i}.wav"))
            sf.write(paths[-1], 0.2 * rng.standard_normal(16000 * (2 + i)), 16000)
        images = generate(str(out), paths, str(tmp_path / f"gen{n}"), sequential=True, steps=2, num_images=1, device="cpu")
        assert Image.open(images[0]).size == (64, 64)
        clip = condition_audio(paths, [0.0] * n, -23.0, True, 16000, 5.0)
        slots = sampler.slots(clip)
        assert len(slots) == n and all(s.size == 80000 for s in slots)
        assert sampler.ast.model.config.max_length < n * 498      # the whole clip would not fit one AST input
        cond = sampler.condition([clip]).cpu().numpy()[0]
        alone = sampler.ast.encode(slots)
        assert cond.shape[0] == n * alone[0].shape[0]
        for i, tokens in enumerate(alone):                        # slot i's tokens are the AST of slot i alone
            np.testing.assert_allclose(cond[i * tokens.shape[0]:(i + 1) * tokens.shape[0]], tokens, atol=1e-5)
