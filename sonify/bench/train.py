"""`python -m sonify.bench train`: training samples/s against a bare loop doing the same model work.

By default a PixArt transformer at the real PixArt-XL-2 width (1152 wide, 16 heads x 72, patch 2,
4 -> 8 channels, 64 x 64 latents, caption_channels 768 for AST) at reduced depth (`--depth 2`), built
from a `PixArtTransformer2DModel` config and saved, so the trainer loads it through `from_pretrained`
(`--width tiny`: the tiny random PixArt). Generated shards in the shards stage's layout, one process:
  train_dit  the real loop: shard streaming (tar header index, keyed window shuffle), .npy decode, latent
             sampling from mean/std, conditioning dropout, noise and timesteps, forward, loss, backward,
             clipping, AdamW, LR schedule, EMA of every trained parameter; samples/s over the last
             `--measure` steps (after as many warm-up steps)
  bare       the same forward + loss (MSE + variational bound) + backward + clipping + AdamW + EMA on the
             same batches already in memory as tensors
Target: train_dit/bare time <= 1.1 (the data path and the bookkeeping keep the model fed).
`--plan --gpu-memory 80GB [141GB]`: the compute plan instead (`train_plan.py`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from sonify.bench.common import peak_rss_mib
from sonify.engine.cli import command_parser

XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, patch_size=2, sample_size=64,
           caption_channels=768, cross_attention_dim=1152, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
           norm_elementwise_affine=False, norm_eps=1e-6, activation_fn="gelu-approximate", attention_bias=True,
           upcast_attention=False, use_additional_conditions=False)


def main(argv=None) -> None:
    if argv and "--plan" in argv:   # the compute plan from a memory budget (train_plan.py)
        from sonify.bench.train_plan import main as plan_main

        return plan_main(argv)
    ap = command_parser("bench train", __doc__, settings=False)
    ap.add_argument("--width", choices=["xl2", "tiny"], default="xl2")
    ap.add_argument("--depth", type=int, default=2, help="transformer blocks at the XL-2 width (the real model has 28)")
    ap.add_argument("--samples", type=int, default=None, help="samples in the generated shards (default: 2 steps' worth more than run)")
    ap.add_argument("--batch", type=int, default=None, help="default 2 at XL-2 width, 16 tiny")
    ap.add_argument("--measure", type=int, default=None, help="measured steps (the same number runs first as warm-up); default 4 / 30")
    ap.add_argument("--dit", default=None, help="any transformer id or path instead (with --ast-dim and --latent)")
    ap.add_argument("--ast-dim", type=int, default=None)
    ap.add_argument("--latent", type=int, default=None)
    a = ap.parse_args(argv)
    xl2 = a.width == "xl2" and a.dit is None
    a.batch = a.batch or (2 if xl2 else 16)
    a.measure = a.measure or (4 if xl2 else 30)
    a.ast_dim = a.ast_dim or (768 if xl2 else 32)
    a.latent = a.latent or (64 if xl2 else 32)
    a.samples = a.samples or max(64, (2 * a.measure + 2) * a.batch)

    import torch

    from sonify.training.config import load_train_config
    from sonify.training.data import expand_shards, plan_streams, stream_items
    from sonify.training.dit import AudioConditioner, load_dit
    from sonify.training.loop import train_loop
    from sonify.training.speed import make_ema, make_optimizer

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        tmp = Path(tmp)
        dit = a.dit or "tiny:dit"
        if xl2:
            from diffusers import PixArtTransformer2DModel

            torch.manual_seed(0)
            PixArtTransformer2DModel(num_layers=a.depth, **XL2).save_pretrained(tmp / "xl2" / "transformer")
            dit = str(tmp / "xl2")
        _write_shards(tmp / "shards", a.samples, 64, a.ast_dim, (4, a.latent, a.latent))
        steps = 2 * a.measure            # one log window of warm-up, one measured
        cfg = load_train_config([f"shards={tmp}/shards/train.txt", f"output_dir={tmp}/out", f"tiny_dir={tmp}/tiny",
                                 f"dit={dit}", f"ast_dim={a.ast_dim}", f"steps={steps}", f"per_device_batch={a.batch}",
                                 f"global_batch={a.batch}", f"log_every={a.measure}", "checkpoint_every=1000000",
                                 "progress=false", "gradient_checkpointing=false", "warmup_steps=0", "val_every=0"])
        t0 = time.perf_counter()
        metrics = train_loop(cfg)
        total = time.perf_counter() - t0
        train_sps = metrics["samples_per_s"]

        model = load_dit(dit, f"{tmp}/tiny", a.ast_dim)
        model.train()
        cond = AudioConditioner(a.ast_dim)
        params = list(model.parameters()) + list(cond.parameters())
        opt = make_optimizer(params, 1e-4, 3e-2, "cpu")   # what the trainer uses: fused AdamW where supported
        batches, epoch = [], 0
        while len(batches) < steps:
            stream = plan_streams(expand_shards(cfg.shards), cfg.seed, epoch, 1)[0]
            batches += [it.batch for it in stream_items(stream, (0, 0), 0, epoch, cfg, 0.18215, 0.1) if it.batch is not None]
            epoch += 1
        gen = torch.Generator().manual_seed(0)
        from sonify.training.forward import noise_scheduler, predict
        from sonify.training.loss import DiffusionLoss

        sched = noise_scheduler(1000)
        loss_fn = DiffusionLoss(sched.betas)
        ema = make_ema(params, 0.9999)                    # foreach, as in the trainer

        def bare_step(b):
            noise = torch.randn(b.latents.shape, generator=gen)
            t = torch.randint(0, 1000, (b.latents.shape[0],), generator=gen)
            noisy = sched.add_noise(b.latents, noise, t)
            pred = predict(model, cond, noisy, b.tokens, b.mask, b.drop, t)   # the trainer's forward
            loss_fn(pred, noise, b.latents, noisy, t)["loss"].backward()   # the same loss as the train loop
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(params)

        for b in batches[:a.measure]:
            bare_step(b)
        t1, c1 = time.perf_counter(), time.process_time()
        for b in batches[a.measure:steps]:
            bare_step(b)
        bare_sps = a.measure * a.batch / (time.perf_counter() - t1)
        bare_cpu = (time.process_time() - c1) / a.measure
        n_params = sum(p.numel() for p in model.parameters())

    name = f"PixArt-XL-2 width (1152, 16x72 heads, patch 2), {a.depth} blocks" if xl2 else dit
    print(f"{name}: {n_params / 1e6:.1f}M parameters; batch {a.batch}, latents 4x{a.latent}x{a.latent}, AST 49x{a.ast_dim}; "
          f"{a.measure} warm-up steps, {a.measure} measured; torch threads {torch.get_num_threads()}")
    print(f"{'measurement':<72} {'samples/s':>10} {'ratio':>6}")
    print(f"{'train_dit loop (stream shards, sample latents, step, clip, EMA)':<72} {train_sps:>10.3f} {bare_sps / train_sps:>6.2f}")
    print(f"{'  bare: forward + backward + clip + AdamW + EMA on in-memory tensors':<72} {bare_sps:>10.3f} {1.0:>6.2f}")
    print(f"train/bare wall-time ratio: {bare_sps / train_sps:.3f}; CPU seconds per step (this process, all threads): "
          f"train {metrics['step_cpu_s']:.2f}, bare {bare_cpu:.2f}, ratio {metrics['step_cpu_s'] / bare_cpu:.3f} (target <= 1.1; "
          f"on a shared machine the CPU-time ratio is the steadier one); whole train_loop call {total:.1f}s incl. model load; "
          f"peak RSS {peak_rss_mib():.0f} MiB")


def _write_shards(d: Path, n: int, per_shard: int, ast_dim: int, latent: tuple) -> None:
    import io

    import numpy as np

    from sonify.media.tar import TarStream

    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    for s in range(0, n, per_shard):
        with open(d / f"train-{s // per_shard:06d}.tar", "wb") as f:
            tar = TarStream(f)
            for i in range(s, min(n, s + per_shard)):
                key = f"{i:016x}_bench"
                tar.add(f"{key}.latent.npy", npy(np.stack([rng.standard_normal(latent), np.full(latent, 0.1)]).astype(np.float16)))
                tar.add(f"{key}.ast.npy", npy(rng.standard_normal((49, ast_dim)).astype(np.float16)))
                tar.add(f"{key}.json", json.dumps({"scaling_factor": 0.18215}).encode())
            tar.close()
    (d / "train.txt").write_text("".join(f"train-{s // per_shard:06d}.tar\n" for s in range(0, n, per_shard)))


if __name__ == "__main__":
    main()
