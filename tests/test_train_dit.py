"""The audio-conditioned DiT: training on tiny shards, exact resume, Ray Train, generation."""

import io
import json
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
    return load_train_config([f"shards={shards}", f"output_dir={out}", f"tiny_dir={tiny_dir}", "progress=false", *extra])


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
    assert "valid choices: train_demo, train_sam" in capsys.readouterr().err


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


@pytest.mark.ray
def test_ray_train_with_two_cpu_workers(shards, tiny_dir, tmp_path):
    import ray

    from sonify.training.loop import run_ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        metrics = run_ray(_cfg(shards, tiny_dir, tmp_path / "o", "trainer=ray", "num_workers=2", "steps=2",
                               "per_device_batch=2", "global_batch=4", "checkpoint_every=2"))
    finally:
        ray.shutdown()
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

    from sonify.training.loop import sync_grads

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = None if rank == 1 else torch.tensor([2.0, 4.0, 6.0])   # rank 1 dropped no sample: no gradient
    sync_grads([p], world)
    torch.save(p.grad, f"{out_dir}/grad{rank}.pt")
    dist.destroy_process_group()


def test_sync_grads_averages_parameters_outside_ddp_across_ranks(tmp_path):
    """The null-audio token lives outside the DDP module: every rank must end with the same averaged gradient."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = torch.load(tmp_path / "grad0.pt"), torch.load(tmp_path / "grad1.pt")
    assert torch.equal(g0, g1) and torch.equal(g0, torch.tensor([1.0, 2.0, 3.0]))


def _diffusion():
    from diffusers import DDPMScheduler

    from sonify.training.loss import DiffusionLoss

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
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
