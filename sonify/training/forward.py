"""The conditioner -> transformer -> loss forward of one micro-batch, shared by the training loop and
validation, and the bf16 autocast both run it under."""

from __future__ import annotations


def autocast(device: str, enabled: bool):
    import torch

    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=enabled)


def forward_loss(model, conditioner, loss_fn, noise_scheduler, batch, noise, t, device: str, bf16: bool) -> dict:
    """One micro-batch's loss terms (on the device; nothing here waits for the device): noised latents, the
    conditioning, the transformer under bf16 autocast when on, and the hybrid loss in float32."""
    noisy = noise_scheduler.add_noise(batch.latents, noise, t)
    tokens, mask = conditioner(batch.tokens, batch.mask, batch.drop)
    with autocast(device, bf16):
        pred = model(noisy, encoder_hidden_states=tokens, encoder_attention_mask=mask, timestep=t,
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    return loss_fn(pred, noise, batch.latents, noisy, t)   # MSE(eps), + the variational bound for learned sigma
