"""The one forward (conditioner -> transformer), shared by the training loop, validation and sampling, the
loss on top of it, the bf16 autocast they run under, and the one definition of the noise schedule.

The schedule is DDPM's linear betas from 1e-4 to 0.02 over `num_train_timesteps` (Ho et al. 2020, 4:
"a linear schedule from beta_1 = 1e-4 to beta_T = 0.02", as PixArt-alpha trains). Training noises with a
`DDPMScheduler` built here and saves it in each checkpoint (`scheduler/`, as diffusers' trainers do); the
sampler reads it from there and builds its DPM-Solver from the same betas.
"""

from __future__ import annotations

SCHEDULE = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas")


def noise_scheduler(num_train_timesteps: int):
    """The training noise scheduler (DDPM, the linear schedule above)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **SCHEDULE)


def solver(trained):
    """A DPM-Solver on the betas of `trained` (the training scheduler); its own defaults for the rest
    (timestep spacing, order), so only the schedule carries over."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**{k: trained.config[k] for k in SCHEDULE_KEYS if k in trained.config})


def autocast(device: str, enabled: bool):
    import torch

    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=enabled)


def predict(model, conditioner, noisy, tokens, mask, drop, t):
    """The transformer's output for noised latents: the AST tokens (B, T, D) with their mask (B, T), rows where
    `drop` (B,) is true replaced by the null token (conditioning dropout in training, the unconditional half
    of classifier-free guidance in sampling), projected and attended to by the DiT at timestep `t`."""
    tokens, mask = conditioner(tokens, mask, drop)
    return model(noisy, encoder_hidden_states=tokens, encoder_attention_mask=mask, timestep=t,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample


def forward_loss(model, conditioner, loss_fn, noise_scheduler, batch, noise, t, device: str, bf16: bool) -> dict:
    """One micro-batch's loss terms (on the device; nothing here waits for the device): noised latents, the
    forward under bf16 autocast when on, and the hybrid loss in float32."""
    noisy = noise_scheduler.add_noise(batch.latents, noise, t)
    with autocast(device, bf16):
        pred = predict(model, conditioner, noisy, batch.tokens, batch.mask, batch.drop, t)
    return loss_fn(pred, noise, batch.latents, noisy, t)   # MSE(eps), + the variational bound for learned sigma
