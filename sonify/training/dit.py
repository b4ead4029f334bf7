"""The audio-conditioned PixArt DiT: every pretrained weight kept but the caption projection.

diffusers' `PixArtTransformer2DModel` projects its conditioning tokens with `caption_projection`
(an MLP from `caption_channels` to the model width). Loading a PixArt-alpha checkpoint with
`caption_channels` set to the AST width (768) replaces that MLP by a freshly initialised audio
projector (the paper trains it from scratch, A.11); the saved model is a plain
`PixArtTransformer2DModel` that loads with its own `from_pretrained`.

`AudioConditioner` holds the learned null-audio token used for conditioning dropout and
classifier-free guidance; a diffusers `ModelMixin, ConfigMixin`, saved beside the transformer
(`conditioner/`) by its `save_pretrained`. Conditioner folders written before that (`config.json` with
`dim`, `model.safetensors` with `null`) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from sonify.models.loading import load_pretrained


def load_dit(name: str, tiny_dir: str, ast_dim: int, subfolder: str = "transformer", fresh_projector: bool = True):
    """A PixArt transformer from `name` with an audio projector of input width `ast_dim`."""
    from diffusers import PixArtTransformer2DModel

    model = load_pretrained(PixArtTransformer2DModel, name, tiny_dir, role="dit", subfolder=subfolder,
                            caption_channels=ast_dim, ignore_mismatched_sizes=True, low_cpu_mem_usage=False)
    if fresh_projector:
        gen = torch.Generator().manual_seed(0)
        for module in model.caption_projection.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=gen)
                nn.init.zeros_(module.bias)
    return model


class AudioConditioner(ModelMixin, ConfigMixin):
    """The AST time series as conditioning tokens, with a learned null token for dropped/unconditional samples."""

    OLD_WEIGHTS = "model.safetensors"   # the hand-written format before this was a ModelMixin

    @register_to_config
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.null = nn.Parameter(torch.zeros(1, dim))
        nn.init.normal_(self.null, std=0.02, generator=torch.Generator().manual_seed(1))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, D), mask (B, T) of 1/0, drop (B,) bool -> tokens and mask with dropped rows nulled."""
        if not bool(drop.any()):
            return tokens, mask
        d = drop.to(tokens.device, non_blocking=True)
        tokens = torch.where(d[:, None, None], torch.zeros_like(tokens), tokens)
        tokens[:, 0] = torch.where(d[:, None], self.null.to(tokens.dtype).expand(tokens.shape[0], -1), tokens[:, 0])
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = 1
        return tokens, torch.where(d[:, None], null_mask, mask)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "AudioConditioner":
        """diffusers' loading; a folder in the old hand-written format (`model.safetensors`) read as it is."""
        from safetensors.torch import load_file

        old = Path(path) / cls.OLD_WEIGHTS
        if not old.is_file() or (Path(path) / "diffusion_pytorch_model.safetensors").is_file():
            return super().from_pretrained(path, **kwargs)
        module = cls(json.loads((Path(path) / "config.json").read_text())["dim"])
        module.null.data.copy_(load_file(old)["null"])
        return module
