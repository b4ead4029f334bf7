"""`python -m sonify.bench train`: training samples/s against a bare forward + backward loop.

Tiny PixArt (or `--dit` any transformer) on generated shards in the shards stage's layout, one process:
  train_dit  the real loop: WebDataset streaming and decoding, latent sampling from mean/std,
             conditioning dropout, noise and timesteps, forward, loss, backward, clipping, AdamW,
             LR schedule, EMA; samples/s over the last `--measure` steps (after warm-up)
  bare       forward + the same loss (MSE + variational bound) + backward + AdamW step on the same
             batches already in memory as tensors
Target: train_dit/bare time <= 1.2 (the data path keeps the model fed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sonify.bench.common import peak_rss_mib


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sonify.bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--measure", type=int, default=30, help="measured steps (the same number runs first as warm-up)")
    ap.add_argument("--dit", default="tiny:dit")
    ap.add_argument("--ast-dim", type=int, default=32)
    ap.add_argument("--latent", type=int, default=32)
    a = ap.parse_args(argv)

    import torch

    from sonify.training.config import load_train_config
    from sonify.training.data import SkippedShards, epoch_batches, expand_shards
    from sonify.training.dit import AudioConditioner, load_dit
    from sonify.training.loop import train_loop

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        tmp = Path(tmp)
        _write_shards(tmp / "shards", a.samples, 64, a.ast_dim, (4, a.latent, a.latent))
        a.warmup = a.measure            # one log window of warm-up, one measured
        steps = 2 * a.measure
        cfg = load_train_config([f"shards={tmp}/shards/train-*.tar", f"output_dir={tmp}/out", f"tiny_dir={tmp}/tiny",
                                 f"dit={a.dit}", f"ast_dim={a.ast_dim}", f"steps={steps}", f"per_device_batch={a.batch}",
                                 f"global_batch={a.batch}", f"log_every={a.measure}", "checkpoint_every=1000000",
                                 "progress=false", "gradient_checkpointing=false", "warmup_steps=0"])
        t0 = time.perf_counter()
        metrics = train_loop(cfg)
        total = time.perf_counter() - t0
        train_sps = metrics["samples_per_s"]

        model = load_dit(a.dit, f"{tmp}/tiny", a.ast_dim)
        model.train()
        cond = AudioConditioner(a.ast_dim)
        opt = torch.optim.AdamW(list(model.parameters()) + list(cond.parameters()), lr=1e-4)
        batches = []
        it = epoch_batches(expand_shards(cfg.shards), 0, cfg, 0, 1, SkippedShards(), 0.18215)
        for _ in range(steps):
            b = next(it, None)
            if b is None:
                it = epoch_batches(expand_shards(cfg.shards), 1, cfg, 0, 1, SkippedShards(), 0.18215)
                b = next(it)
            batches.append(b)
        gen = torch.Generator().manual_seed(0)
        from diffusers import DDPMScheduler, PixArtTransformer2DModel

        from sonify.training.loss import DiffusionLoss

        sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
        loss_fn = DiffusionLoss(sched.betas)
        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=0.9999, model_cls=PixArtTransformer2DModel, model_config=model.config)
        params = list(model.parameters()) + list(cond.parameters())

        def bare_step(b, full=False):
            noise = torch.randn(b.latents.shape, generator=gen)
            t = torch.randint(0, 1000, (b.latents.shape[0],), generator=gen)
            tokens, mask = cond(b.tokens, b.mask, b.drop)
            noisy = sched.add_noise(b.latents, noise, t)
            pred = model(noisy, encoder_hidden_states=tokens, encoder_attention_mask=mask, timestep=t,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            loss_fn(pred, noise, b.latents, noisy, t)["loss"].backward()   # the same loss as the train loop
            if full:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if full:
                ema.step(model.parameters())

        def measure(full):
            for b in batches[:a.warmup]:
                bare_step(b, full)
            t1 = time.perf_counter()
            for b in batches[a.warmup:]:
                bare_step(b, full)
            return a.measure * a.batch / (time.perf_counter() - t1)

        bare_sps, full_sps = measure(False), measure(True)

    print(f"{a.dit}, batch {a.batch}, latents 4x{a.latent}x{a.latent}, AST 49x{a.ast_dim}; {a.measure} warm-up steps, "
          f"{a.measure} measured; torch threads {torch.get_num_threads()}")
    print(f"{'measurement':<64} {'samples/s':>10} {'ratio':>6}")
    print(f"{'train_dit loop (stream shards, sample latents, step, clip, EMA)':<64} {train_sps:>10.1f} {bare_sps / train_sps:>6.2f}")
    print(f"{'  bare: forward + backward + AdamW on in-memory tensors':<64} {bare_sps:>10.1f} {1.0:>6.2f}")
    print(f"{'  reference: the same plus gradient clipping and EMA':<64} {full_sps:>10.1f} {bare_sps / full_sps:>6.2f}")
    print(f"train/bare time ratio: {bare_sps / train_sps:.2f} (target <= 1.2); data path alone (train vs reference): "
          f"{full_sps / train_sps:.2f}; whole train_loop call {total:.1f}s "
          f"incl. model load; peak RSS {peak_rss_mib():.0f} MiB")


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


if __name__ == "__main__":
    main()
