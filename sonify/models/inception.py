"""Inception-v3 as FID uses it, in plain torch (no torchvision): the TF-ported network of pytorch-fid.

The published definition (Szegedy et al. 2016; torchvision's `Inception3` layer names) with
pytorch-fid's FID patches: average pools that ignore padding (`FIDInceptionA/C/E_1`), a max pool in
the last block (`FIDInceptionE_2`), 1008 logits. The 2048-d output of the final average pool is the
FID feature. Weights load from a local file: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
(a plain state dict), or a folder holding `config.json` and `model.safetensors` (tiny test models,
whose `width` scales every channel count).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Conv(nn.Module):
    """BasicConv2d: conv without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.out_channels = cout

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)   # TF's pool: pads not counted


class BlockA(nn.Module):
    def __init__(self, cin, pool, w):
        super().__init__()
        self.branch1x1 = Conv(cin, w(64), kernel_size=1)
        self.branch5x5_1 = Conv(cin, w(48), kernel_size=1)
        self.branch5x5_2 = Conv(w(48), w(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, w(64), kernel_size=1)
        self.branch3x3dbl_2 = Conv(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = Conv(w(96), w(96), kernel_size=3, padding=1)
        self.branch_pool = Conv(cin, w(pool), kernel_size=1)
        self.out_channels = w(64) * 2 + w(96) + w(pool)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg(x))], 1)


class BlockB(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.branch3x3 = Conv(cin, w(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, w(64), kernel_size=1)
        self.branch3x3dbl_2 = Conv(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = Conv(w(96), w(96), kernel_size=3, stride=2)
        self.out_channels = w(384) + w(96) + cin

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockC(nn.Module):
    def __init__(self, cin, c7, w):
        super().__init__()
        c7 = w(c7)
        self.branch1x1 = Conv(cin, w(192), kernel_size=1)
        self.branch7x7_1 = Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, w(192), kernel_size=1)
        self.out_channels = w(192) * 4

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class BlockD(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        self.branch3x3_1 = Conv(cin, w(192), kernel_size=1)
        self.branch3x3_2 = Conv(w(192), w(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = Conv(cin, w(192), kernel_size=1)
        self.branch7x7x3_2 = Conv(w(192), w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(w(192), w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(w(192), w(192), kernel_size=3, stride=2)
        self.out_channels = w(320) + w(192) + cin

    def forward(self, x):
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockE(nn.Module):
    def __init__(self, cin, w, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool   # FIDInceptionE_2: the TF graph max-pools here
        self.branch1x1 = Conv(cin, w(320), kernel_size=1)
        self.branch3x3_1 = Conv(cin, w(384), kernel_size=1)
        self.branch3x3_2a = Conv(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, w(448), kernel_size=1)
        self.branch3x3dbl_2 = Conv(w(448), w(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = Conv(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, w(192), kernel_size=1)
        self.out_channels = w(320) + 4 * w(384) + w(192)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Input: RGB in [0, 1] at 299 x 299 (resizing is the caller's, clean-fid style); output: pool features."""

    def __init__(self, width: float = 1.0, num_classes: int = 1008):
        super().__init__()
        self.config = {"width": width, "num_classes": num_classes}

        def w(c: int) -> int:
            return max(1, int(round(c * width)))

        self.Conv2d_1a_3x3 = Conv(3, w(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = Conv(w(32), w(32), kernel_size=3)
        self.Conv2d_2b_3x3 = Conv(w(32), w(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = Conv(w(64), w(80), kernel_size=1)
        self.Conv2d_4a_3x3 = Conv(w(80), w(192), kernel_size=3)
        self.Mixed_5b = BlockA(w(192), 32, w)
        self.Mixed_5c = BlockA(self.Mixed_5b.out_channels, 64, w)
        self.Mixed_5d = BlockA(self.Mixed_5c.out_channels, 64, w)
        self.Mixed_6a = BlockB(self.Mixed_5d.out_channels, w)
        self.Mixed_6b = BlockC(self.Mixed_6a.out_channels, 128, w)
        self.Mixed_6c = BlockC(self.Mixed_6b.out_channels, 160, w)
        self.Mixed_6d = BlockC(self.Mixed_6c.out_channels, 160, w)
        self.Mixed_6e = BlockC(self.Mixed_6d.out_channels, 192, w)
        self.Mixed_7a = BlockD(self.Mixed_6e.out_channels, w)
        self.Mixed_7b = BlockE(self.Mixed_7a.out_channels, w, max_pool=False)
        self.Mixed_7c = BlockE(self.Mixed_7b.out_channels, w, max_pool=True)
        self.feature_dim = self.Mixed_7c.out_channels
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2 * x - 1   # pytorch-fid's scaling of [0, 1] to the [-1, 1] the TF weights expect
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def save_pretrained(self, out: str | Path) -> None:
        save_weights(self, out)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "FIDInceptionV3":
        return load_weights(cls, path)


def save_weights(model, out: str | Path) -> None:
    """`config.json` (the model's `config` dict) and `model.safetensors`: what `load_weights` reads back."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")


def load_weights(cls, path: str | Path, remap=None):
    """A model from a folder (`config.json` + `model.safetensors`) or one weights file (`.pth`/`.pt`/`.safetensors`).

    `remap(state_dict)` adapts a published checkpoint's keys; a key that is missing or left over fails.
    """
    path = Path(path)
    config = {}
    if path.is_dir():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        files = [p for p in (path / "model.safetensors", path / "model.pth") if p.exists()]
        if not files:
            raise OSError(f"{path} holds no model.safetensors or model.pth")
        path = files[0]
    if not path.exists():
        raise OSError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
    state = remap(state) if remap else state
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = cls(**config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {cls.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()
