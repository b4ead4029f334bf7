"""The trainer's speed settings change how fast a step runs, never what it computes (issue 29)."""

import threading

import pytest
import torch

from sonify.training.config import load_train_config
from sonify.training.loop import train_loop
from tests.test_train_dit import _cfg, _params, shards, tiny_dir, write_shards  # noqa: F401 (fixtures)


def test_mixed_precision_no_is_accepted_as_written(tmp_path):
    assert load_train_config(["mixed_precision=no"]).mixed_precision == "no"
    (tmp_path / "c.yaml").write_text("mixed_precision: no\n")
    assert load_train_config([f"config={tmp_path / 'c.yaml'}"]).mixed_precision == "no"
    from sonify.engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"key 'mixed_precision'; valid choices: auto, bf16, no"):
        load_train_config(["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match=r"key 'checkpoint_blocks_every'; valid values: an integer >= 1"):
        load_train_config(["checkpoint_blocks_every=0"])


def test_ddp_options_pass_through_and_a_static_graph_is_refused_with_accumulation():
    from sonify.engine.errors import ConfigError
    from sonify.training.config import ddp_kwargs

    cfg = load_train_config(["ddp_bucket_mb=50", "ddp_static_graph=true", "per_device_batch=80", "global_batch=640"])
    assert ddp_kwargs(cfg, 8) == {"bucket_cap_mb": 50, "gradient_as_bucket_view": True, "static_graph": True}
    cfg = load_train_config(["ddp_static_graph=true", "per_device_batch=20", "global_batch=640"])
    with pytest.raises(ConfigError, match=r"^ddp_static_graph=true needs no gradient accumulation \(here 4 micro-steps"):
        ddp_kwargs(cfg, 8)


def _losses(monkeypatch):
    """Records every training and validation loss and the dtype of the transformer's prediction."""
    from sonify.training.loss import DiffusionLoss

    seen = {"loss": [], "dtype": set(), "graphs": []}
    real = DiffusionLoss.__call__

    def record(self, pred, *args):
        import torch._dynamo

        terms = real(self, pred, *args)
        seen["loss"].append(terms["loss"].item())
        seen["dtype"].add(pred.dtype)
        seen["graphs"].append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        return terms

    monkeypatch.setattr(DiffusionLoss, "__call__", record)
    return seen


def test_bf16_training_and_validation_run_on_cpu_within_1e3_of_fp32(tmp_path, tiny_dir, monkeypatch):
    """lr=0 keeps the weights, so both runs score the same model: the bf16 losses (autocast on the CPU)
    stay within 1e-3 of the fp32 ones, in training and in validation (loss and grid)."""
    train = write_shards(tmp_path / "shards", n_samples=8, per_shard=4)
    val = write_shards(tmp_path / "shards", n_samples=6, per_shard=3, split="val", seed=1)
    got = {}
    for mp in ("no", "bf16"):
        seen = _losses(monkeypatch)
        cfg = load_train_config(["config=train_demo", f"shards={train}", f"val_shards={val}", f"output_dir={tmp_path / mp}",
                                 f"tiny_dir={tiny_dir}", "progress=false", "steps=1", "val_every=1", "checkpoint_every=1",
                                 "val_images=2", "val_sample_steps=1", "lr=0", f"mixed_precision={mp}"])
        metrics = train_loop(cfg)
        got[mp] = (seen["loss"][0], metrics["val_loss"], seen["dtype"])
        monkeypatch.undo()
        assert (tmp_path / mp / "validation" / "step-1" / "grid.png").exists()
    assert got["no"][2] == {torch.float32} and got["bf16"][2] == {torch.bfloat16}   # autocast really ran
    assert got["bf16"][0] == pytest.approx(got["no"][0], abs=1e-3) and got["bf16"][0] != got["no"][0]
    assert got["bf16"][1] == pytest.approx(got["no"][1], abs=1e-3)


class _CrossDeviceCopies(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that copy a tensor from one device to another."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            dst = args[0] if func is torch.ops.aten.copy_.default else out
            self.n += src.device != dst.device
        return out


def test_the_loss_makes_no_host_to_device_copy_once_its_tables_are_on_the_device():
    """The meta device stands in for the GPU: a copy from the host's tables to it would be counted."""
    from sonify.training.forward import noise_scheduler
    from sonify.training.loss import DiffusionLoss

    sched = noise_scheduler(1000)
    with _CrossDeviceCopies() as probe:
        torch.ones(3).to("meta")
    assert probe.n == 1                                    # the probe sees a host-to-device copy
    loss = DiffusionLoss(sched.betas, "meta")
    x = torch.empty(4, 4, 8, 8, device="meta")
    pred, t = torch.empty(4, 8, 8, 8, device="meta"), torch.empty(4, dtype=torch.long, device="meta")
    with _CrossDeviceCopies() as probe:
        for _ in range(3):
            terms = loss(pred, x, x, x, t)
    assert probe.n == 0 and terms["loss"].device.type == "meta" and set(terms) == {"loss", "mse", "vb"}


def test_pin_memory_pins_the_batch_types(monkeypatch):
    """DataLoader(pin_memory=True) calls `pin_memory()` on what it yields: the item pins its batch's tensors
    (without the method torch returns the object as it is, pinning nothing)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from sonify.training.data import Batch, Item

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: (pinned.append(self.shape), self.clone())[1])
    batch = Batch(["a", "b"], torch.zeros(2, 4, 8, 8), torch.zeros(2, 5, 3), torch.ones(2, 5), torch.tensor([True, False]))
    out = pin_memory(Item(batch, 0, (0, 1), 0, 2))
    assert isinstance(out, Item) and out.pos == (0, 1) and out.batch.keys == ["a", "b"]
    assert pinned == [(2, 4, 8, 8), (2, 5, 3), (2, 5)]
    assert pin_memory(Item(None, 1, (3, 0), 1, 0)).batch is None


def test_fused_adamw_and_foreach_ema_equal_the_defaults_after_5_steps():
    """Weights at a transformer's scale (std 0.02, as PixArt initialises them): the fused and multi-tensor
    kernels only round differently, far below 1e-7 (a float32 ulp there is ~2e-9)."""
    from sonify.training.speed import make_ema, make_optimizer

    torch.manual_seed(0)
    init = [0.02 * torch.randn(64, 32), 0.02 * torch.randn(32), 0.02 * torch.randn(7, 3, 3)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(5)]
    runs = {}
    for fast in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opt = make_optimizer(params, 1e-2, 3e-2, "cpu", fused=fast)
        ema = make_ema(params, 0.9, foreach=fast)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
            ema.step(params)
        runs[fast] = ([p.detach() for p in params], ema.shadow_params)
    assert make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, 0, "cpu").defaults["fused"]   # the CPU has the kernel
    for a, b in zip(runs[False][0] + runs[False][1], runs[True][0] + runs[True][1]):
        assert (a - b).abs().max().item() <= 1e-7
    assert not torch.equal(runs[False][1][0], init[0])      # the EMA moved


def test_selective_checkpointing_trains_the_same_parameters(shards, tiny_dir, tmp_path, monkeypatch):
    """3 steps with checkpointing off, on every block, and on every 2nd block (block 0 of the tiny model's 2):
    the same parameters within float tolerance; the recompute really happens on the chosen blocks."""
    import torch.utils.checkpoint as ckpt

    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda fn, *a, **k: (calls.append(fn.__self__), real(fn, *a, **k))[1])
    results = {}
    for name, extra in (("off", []), ("all", ["gradient_checkpointing=true"]),
                        ("every2", ["gradient_checkpointing=true", "checkpoint_blocks_every=2"])):
        calls.clear()
        train_loop(_cfg(shards, tiny_dir, tmp_path / name, "steps=3", "checkpoint_every=3", "lr=1e-2", *extra))
        results[name] = (_params(tmp_path / name / "checkpoint-3" / "transformer"), len(calls), len(set(map(id, calls))))
    assert results["off"][1:] == (0, 0) and results["all"][1:] == (3 * 2, 2) and results["every2"][1:] == (3, 1)
    for name in ("all", "every2"):
        a, b = results["off"][0], results[name][0]
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name


def test_checkpoints_are_written_off_the_training_thread_with_the_ema_stored_once(shards, tiny_dir, tmp_path, monkeypatch):
    import sonify.training.checkpoint as checkpoint

    threads = []
    real = checkpoint.write
    monkeypatch.setattr(checkpoint, "write", lambda *a: (threads.append(threading.current_thread().name), real(*a))[1])
    train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=2", "checkpoint_every=1"))
    assert threads == ["checkpoint-1", "checkpoint-2"]
    state = torch.load(tmp_path / "o/checkpoint-2/training_state.pt", weights_only=False)
    assert "shadow_params" not in state["ema"] and state["ema"]["optimization_step"] == 2
    ema, trained = _params(tmp_path / "o/checkpoint-2/transformer_ema"), _params(tmp_path / "o/checkpoint-2/transformer")
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)


def test_a_failed_background_write_is_raised_in_the_training_run(shards, tiny_dir, tmp_path, monkeypatch):
    import sonify.training.checkpoint as checkpoint

    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        train_loop(_cfg(shards, tiny_dir, tmp_path / "o", "steps=2", "checkpoint_every=1"))


def test_fixed_token_length_under_compile():
    """With `compile` the AST tokens are padded to `max_audio_frames` in every batch: one shape, no recompiles."""
    import io

    import numpy as np

    from sonify.training.data import collate

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    samples = [{"__key__": f"k{i}", "latent.npy": npy(np.zeros((2, 4, 2, 2), np.float16)),
                "ast.npy": npy(np.ones((n, 3), np.float16))} for i, n in enumerate((5, 9))]
    assert collate(samples, 0, 0, 1.0, 0.0, 12).tokens.shape == (2, 9, 3)
    fixed = collate(samples, 0, 0, 1.0, 0.0, 12, fixed=True)
    assert fixed.tokens.shape == (2, 12, 3) and fixed.mask.sum(1).tolist() == [5, 9]


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_do_not_recompile(shards, tiny_dir, tmp_path, monkeypatch):
    """Regional compilation (each block compiled in place, Inductor on the CPU): losses within 1e-5 of eager
    over 4 steps, no graph compiled after the first step's backward, and the checkpoint loads with plain
    from_pretrained under the eager model's keys."""
    from diffusers import PixArtTransformer2DModel

    got = {}
    for name in ("eager", "compiled"):
        seen = _losses(monkeypatch)
        train_loop(_cfg(shards, tiny_dir, tmp_path / name, "steps=4", "checkpoint_every=4", "lr=1e-3",
                        f"compile={name == 'compiled'}", "max_audio_frames=49"))
        got[name] = seen
        monkeypatch.undo()
    assert len(got["eager"]["loss"]) == 4
    assert all(abs(a - b) <= 1e-5 for a, b in zip(got["eager"]["loss"], got["compiled"]["loss"])), got
    graphs = got["compiled"]["graphs"]
    assert graphs[0] >= 1 and graphs[1] == graphs[2] == graphs[3], graphs       # compiled once, reused every step
    model = PixArtTransformer2DModel.from_pretrained(tmp_path / "compiled/checkpoint-4/transformer")
    assert set(model.state_dict()) == set(_params(tmp_path / "eager/checkpoint-4/transformer"))


def test_the_plan_fits_the_largest_micro_batch_and_prefers_no_recompute():
    """The memory arithmetic on round numbers, worked by hand: 10 blocks of 1 GB a sample, 0.5 GB the rest,
    0.1 GB a checkpointed block's input, 100M parameters (2 GB of fp32 state), 1 GB fixed, 40 GB, no reserve."""
    from sonify.training.memory import Activations, choose, options, parse_memory, per_sample_bytes

    gb = 1e9
    act = Activations(block=1 * gb, rest=0.5 * gb, fixed=1 * gb, ckpt_input=0.1 * gb, params_block=9_000_000,
                      params_rest=10_000_000, blocks=10, flops_block=10, flops_rest=1)
    assert act.params == 100_000_000 and act.flops_per_sample(0) == 3 * 101 and act.flops_per_sample(5) == 3 * 101 + 50
    assert per_sample_bytes(act, 0) == 10.5 * gb
    assert per_sample_bytes(act, 5) == pytest.approx((5 * 1 + 5 * 0.1 + 0.5 + 1) * gb)   # + one block recomputed
    opts = {o.every: o for o in options(act, 40 * gb, per_gpu=8, reserve=0.0, everies=(None, 1, 2))}
    # free 40 - 2 (weights, grads, AdamW, EMA: 20 bytes x 100M) - 1 = 37 GB
    assert (opts[None].max_micro, opts[None].micro, opts[None].accum) == (3, 2, 4)          # 37 // 10.5
    assert (opts[1].max_micro, opts[1].micro, opts[1].accum) == (14, 8, 1)                  # 37 // 2.5
    assert (opts[2].max_micro, opts[2].micro, opts[2].accum) == (5, 4, 2)                   # 37 // 7
    assert choose(list(opts.values()), min_micro=2).every is None                           # no recompute when it fits
    assert choose(list(opts.values()), min_micro=4).every == 2                              # then the least recompute
    assert choose(list(opts.values()), min_micro=16).every == 1                             # else the largest micro-batch
    assert parse_memory("80GB") == 80e9 and parse_memory("80GiB") == 80 * 2**30


def test_the_saved_tensor_count_sees_what_autograd_keeps(tiny_dir):
    """The tiny PixArt under bf16 autocast: more is kept at batch 2 than at 1, FLOPs double, and the first
    block's input is the bf16 hidden states (batch x tokens x width x 2 bytes)."""
    from diffusers import PixArtTransformer2DModel

    from sonify.models.tiny import build_tiny
    from sonify.training.memory import saved_bytes

    model = PixArtTransformer2DModel.from_pretrained(build_tiny("dit", tiny_dir) / "transformer")
    one, _, flops1 = saved_bytes(model, 1, 5, model.config.caption_channels)
    two, first_input, flops2 = saved_bytes(model, 2, 5, model.config.caption_channels)
    assert two > one > 0 and flops2 == 2 * flops1
    tokens = (model.config.sample_size // model.config.patch_size) ** 2
    assert first_input == 2 * tokens * model.inner_dim * 2             # batch 2, bf16 hidden states into block 0


def test_train_sam_uses_the_80gb_plan():
    from sonify.training.config import grad_accum_steps

    cfg = load_train_config(["config=train_sam"])
    assert (cfg.per_device_batch, grad_accum_steps(cfg, cfg.num_workers), cfg.gradient_checkpointing) == (20, 4, False)
    assert cfg.num_workers * cfg.per_device_batch * grad_accum_steps(cfg, cfg.num_workers) == cfg.global_batch == 640
    assert cfg.compile and cfg.mixed_precision == "auto" and cfg.ddp_gradient_as_bucket_view


def _val_loss(rank, world, args, out):
    """One rank's validation loss for the tiny DiT (the same seed-built weights on every rank)."""
    import json

    import torch.distributed as dist
    from diffusers import PixArtTransformer2DModel

    from sonify.models.tiny import build_tiny
    from sonify.training.data import expand_shards
    from sonify.training.dit import AudioConditioner
    from sonify.training.forward import noise_scheduler
    from sonify.training.loss import DiffusionLoss
    from sonify.training.validation import Validator

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out}/init", rank=rank, world_size=world)
    cfg = load_train_config(args)
    model = PixArtTransformer2DModel.from_pretrained(build_tiny("dit", cfg.tiny_dir) / "transformer")
    sched = noise_scheduler(1000)
    import sonify.training.validation as validation

    scored, real = [], validation.forward_loss
    validation.forward_loss = lambda *a: (scored.append(a[4].keys), real(*a))[1]
    v = Validator(cfg, expand_shards(cfg.val_shards), 0.18215, "cpu", rank, world)
    loss = v.loss(model, AudioConditioner(cfg.ast_dim), sched, DiffusionLoss(sched.betas))
    with open(f"{out}/val-{world}-{rank}.json", "w") as f:
        json.dump({"loss": loss, "vae": v.vae is not None, "scored": scored}, f)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_validation_split_across_two_ranks_gives_the_single_process_loss(tmp_path, tiny_dir):
    """3 validation batches on 2 gloo ranks (2 on rank 0, 1 on rank 1): every rank ends with the loss one
    process computes over all 3; only rank 0 loads the VAE (it alone draws the grid)."""
    import json

    import torch.multiprocessing as mp

    val = write_shards(tmp_path / "s", n_samples=6, per_shard=3, split="val", seed=1)
    args = ["config=train_demo", f"val_shards={val}", f"tiny_dir={tiny_dir}", "per_device_batch=2", "val_batches=3", "val_images=1"]
    _val_loss(0, 1, args, str(tmp_path))
    mp.spawn(_val_loss, args=(2, args, str(tmp_path)), nprocs=2, join=True)
    one, *two = (json.loads((tmp_path / f"val-{n}.json").read_text()) for n in ("1-0", "2-0", "2-1"))
    assert [r["vae"] for r in (one, *two)] == [True, True, False]
    assert len(one["scored"]) == 3 and two[0]["scored"] == one["scored"][0::2] and two[1]["scored"] == one["scored"][1::2]
    for r in two:
        assert r["loss"] == pytest.approx(one["loss"], rel=1e-6)
