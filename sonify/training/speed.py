"""The trainer's per-step costs: selective gradient checkpointing, regional compilation, fused AdamW, foreach EMA.

Each setting changes how fast a step runs, never what it computes (the equality tests in
`tests/test_train_speed.py` hold them to that):
- gradient checkpointing on every k-th transformer block (`checkpoint_blocks_every`): a block is
  recomputed in the backward instead of keeping its activations, so memory falls by that block's
  activations and the step costs one more forward of it (`bench train --plan` picks k from a memory budget);
- `compile`: each transformer block compiled on its own (diffusers' "regional compilation": the 28
  blocks share one compiled graph, so compiling takes seconds, not minutes), in place, so the state dict
  keys and `save_pretrained` are unchanged; `dynamic=False` with shapes fixed per run (the AST token
  length padded to `max_audio_frames`), so the blocks do not recompile across steps;
- AdamW with `fused=True` where the device has the fused kernel (CUDA, CPU, ...): one kernel for all
  parameters instead of several per tensor;
- the EMA with `foreach=True`: two multi-tensor kernels per step instead of three per parameter tensor.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("sonify.train")


def _checkpointed(forward, *args, **kwargs):
    """`forward` recomputed in the backward (non-reentrant: keyword arguments and no-grad inputs work)."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(model, every: int) -> list[int]:
    """Gradient checkpointing on blocks 0, k, 2k, ... of `model.transformer_blocks`; returns their indices.
    The block's own `forward` is wrapped on the instance: its parameters and state dict keys stay as they are."""
    chosen = list(range(0, len(model.transformer_blocks), every))
    for i in chosen:
        block = model.transformer_blocks[i]
        block.forward = functools.partial(_checkpointed, type(block).forward.__get__(block))
    return chosen


def compile_blocks(model) -> int:
    """Compile every transformer block in place (`nn.Module.compile`); returns the number compiled."""
    for block in model.transformer_blocks:
        block.compile(dynamic=False)
    return len(model.transformer_blocks)


def fused_supported(device: str) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return torch.device(device).type in _get_fused_kernels_supported_devices()


def make_optimizer(params, lr: float, weight_decay: float, device: str, fused: bool | None = None):
    """AdamW, fused where the device supports it (`fused=None`), else torch's default implementation."""
    fused = fused_supported(device) if fused is None else fused
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))


def make_ema(params, decay: float, foreach: bool = True):
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=decay, foreach=foreach)


def setup_model(model, cfg, device: str) -> dict:
    """Checkpointing and compilation as configured; returns what was done, for the log."""
    done = {"checkpointed_blocks": [], "compiled_blocks": 0}
    if cfg.gradient_checkpointing:
        done["checkpointed_blocks"] = checkpoint_blocks(model, cfg.checkpoint_blocks_every)
    if cfg.compile:
        done["compiled_blocks"] = compile_blocks(model)
    return done
