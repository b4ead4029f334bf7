"""Validation during training, as diffusers' `log_validation` does it: every `val_every` steps the loss
on a fixed set of `val` batches, and a grid of images drawn (with the EMA weights, as `generate` would)
from a fixed set of `val` samples' audio features, written to TensorBoard and to
`<output_dir>/validation/step-<N>/` (`grid.png`, `metrics.json`) beside the checkpoints.

Under DDP every rank scores its share of the batches (batch i on rank i mod world) and the sums are
all-reduced, so the other ranks do not wait idle for rank 0; rank 0 alone loads the VAE and draws the
grid. Both run under bf16 autocast when training does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sonify.engine.files import atomic_path
from sonify.training.distributed import reduce_sum
from sonify.training.forward import autocast, forward_loss

log = logging.getLogger("sonify.train")


class Validator:
    """Holds the fixed validation batches, the VAE, and the noise each batch is scored with."""

    def __init__(self, cfg, urls: list[str], scaling: float, device: str, rank: int = 0, world: int = 1, bf16: bool = False):
        import math

        import torch
        from diffusers import AutoencoderKL

        from sonify.models.loading import load_pretrained
        from sonify.training.data import fixed_batches

        self.cfg, self.device, self.rank, self.world, self.bf16 = cfg, device, rank, world, bf16
        need = max(cfg.val_batches, math.ceil(cfg.val_images / cfg.per_device_batch))
        self.batches = fixed_batches(urls, cfg, scaling, need)
        if not self.batches:
            raise ValueError(f"no validation batch in {len(urls)} val shards (per_device_batch={cfg.per_device_batch})")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.noise = [(torch.randn(b.latents.shape, generator=gen), torch.randint(0, cfg.num_train_timesteps, (b.latents.shape[0],),
                                                                                   generator=gen)) for b in self.batches]
        self.vae = None
        if rank == 0:
            self.vae = load_pretrained(AutoencoderKL, cfg.vae, cfg.tiny_dir, role="vae", subfolder="vae").to(device).eval()

    def loss(self, model, conditioner, noise_scheduler, loss_fn) -> float:
        """The mean loss over the fixed batches (conditioning kept, fixed noise and timesteps), this rank's
        share of them summed on the device, the sums added over the ranks."""
        import torch

        total = torch.zeros((), device=self.device)
        n = 0
        pairs = list(zip(self.batches[:self.cfg.val_batches], self.noise))
        with torch.no_grad():
            for b, (noise, t) in pairs[self.rank::self.world]:
                terms = forward_loss(model, conditioner, loss_fn, noise_scheduler, b.to(self.device), noise.to(self.device),
                                     t.to(self.device), self.device, self.bf16)
                total += terms["loss"] * len(b.keys)
                n += len(b.keys)
        total_all, n_all = reduce_sum([float(total), n], self.device)
        return total_all / n_all

    def grid(self, model, conditioner, latent_size: int, noise_scheduler):
        """The grid drawn from the first `val_images` val samples' audio features (fixed seed)."""
        import torch

        from sonify.training.sampling import make_grid, sample_images

        tokens, masks, left = [], [], self.cfg.val_images
        for b in self.batches:
            take = min(left, len(b.keys))
            tokens += list(b.tokens[:take])
            masks += list(b.mask[:take])
            left -= take
        t_max = max(t.shape[0] for t in tokens)
        cond = torch.stack([torch.nn.functional.pad(t, (0, 0, 0, t_max - t.shape[0])) for t in tokens]).to(self.device)
        mask = torch.stack([torch.nn.functional.pad(m, (0, t_max - m.shape[0])) for m in masks]).to(self.device)
        images = sample_images(model, conditioner, self.vae, cond, mask, self.cfg.val_sample_steps, self.cfg.val_guidance,
                               self.cfg.seed, latent_size, noise_scheduler)
        return make_grid(images, min(4, len(images)))

    def run(self, step: int, model, conditioner, ema, ema_params, noise_scheduler, loss_fn, writer, out: Path) -> dict:
        """Loss with the trained weights, grid with the EMA ones (what `generate` uses); logged and saved."""
        import numpy as np

        was_training = model.training
        model.eval()
        try:
            val_loss = self.loss(model, conditioner, noise_scheduler, loss_fn)
            if self.rank != 0:
                return {"step": step, "val_loss": val_loss}
            ema.store(ema_params)
            ema.copy_to(ema_params)
            try:
                with autocast(self.device, self.bf16):
                    grid = self.grid(model, conditioner, self.batches[0].latents.shape[-1], noise_scheduler)
            finally:
                ema.restore(ema_params)
        finally:
            model.train(was_training)
        metrics = {"step": step, "val_loss": val_loss, "val_images": self.cfg.val_images}
        if writer:
            writer.add_scalar("val/loss", val_loss, step)
            writer.add_image("val/grid", np.asarray(grid), step, dataformats="HWC")
            writer.flush()
        with atomic_path(out / "validation" / f"step-{step}") as tmp:
            tmp.mkdir(parents=True, exist_ok=True)
            grid.save(tmp / "grid.png")
            (tmp / "metrics.json").write_text(json.dumps(metrics))
        log.info("step %d validation loss %.5f (grid in %s)", step, val_loss, out / "validation" / f"step-{step}")
        return metrics
