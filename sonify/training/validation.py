"""Validation during training, as diffusers' `log_validation` does it: every `val_every` steps the loss
on a fixed set of `val` batches, and a grid of images drawn (with the EMA weights, as `generate` would)
from a fixed set of `val` samples' audio features, written to TensorBoard and to
`<output_dir>/validation/step-<N>/` (`grid.png`, `metrics.json`) beside the checkpoints.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sonify.engine.files import atomic_path

log = logging.getLogger("sonify.train")


class Validator:
    """Holds the fixed validation batches, the VAE, and the noise each batch is scored with."""

    def __init__(self, cfg, urls: list[str], scaling: float, device: str):
        import math

        import torch
        from diffusers import AutoencoderKL

        from sonify.models.loading import load_pretrained
        from sonify.training.data import fixed_batches

        self.cfg, self.device = cfg, device
        need = max(cfg.val_batches, math.ceil(cfg.val_images / cfg.per_device_batch))
        self.batches = fixed_batches(urls, cfg, scaling, need)
        if not self.batches:
            raise ValueError(f"no validation batch in {len(urls)} val shards (per_device_batch={cfg.per_device_batch})")
        gen = torch.Generator().manual_seed(cfg.seed)
        self.noise = [(torch.randn(b.latents.shape, generator=gen), torch.randint(0, cfg.num_train_timesteps, (b.latents.shape[0],),
                                                                                   generator=gen)) for b in self.batches]
        self.vae = load_pretrained(AutoencoderKL, cfg.vae, cfg.tiny_dir, role="vae", subfolder="vae").to(device).eval()

    def loss(self, model, conditioner, noise_scheduler, loss_fn) -> float:
        """The mean loss over the fixed batches (conditioning kept, fixed noise and timesteps)."""
        import torch

        total, n = 0.0, 0
        with torch.no_grad():
            for b, (noise, t) in zip(self.batches[:self.cfg.val_batches], self.noise):
                latents = b.latents.to(self.device)
                noisy = noise_scheduler.add_noise(latents, noise.to(self.device), t.to(self.device))
                tokens, mask = conditioner(b.tokens.to(self.device), b.mask.to(self.device), b.drop)
                pred = model(noisy, encoder_hidden_states=tokens, encoder_attention_mask=mask, timestep=t.to(self.device),
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
                total += float(loss_fn(pred, noise.to(self.device), latents, noisy, t.to(self.device))["loss"]) * len(b.keys)
                n += len(b.keys)
        return total / n

    def grid(self, model, conditioner, latent_size: int):
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
                               self.cfg.seed, latent_size, self.cfg.num_train_timesteps)
        return make_grid(images, min(4, len(images)))

    def run(self, step: int, model, conditioner, ema, ema_params, noise_scheduler, loss_fn, writer, out: Path) -> dict:
        """Loss with the trained weights, grid with the EMA ones (what `generate` uses); logged and saved."""
        import numpy as np

        was_training = model.training
        model.eval()
        try:
            val_loss = self.loss(model, conditioner, noise_scheduler, loss_fn)
            ema.store(ema_params)
            ema.copy_to(ema_params)
            try:
                grid = self.grid(model, conditioner, self.batches[0].latents.shape[-1])
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
