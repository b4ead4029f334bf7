"""Wav2CLIP's audio encoder (Wu et al., ICASSP 2022) in plain torch: 512-d audio embeddings in CLIP's space.

The published model (descriptinc/lyrebird-wav2clip, after VGGSound's ResNet): 16 kHz mono audio ->
power spectrogram (n_fft 512, hop 353, Hann, centred, reflect padding) -> log(x + 1e-7) -> standardised
(mean and std over the clip; the original takes them over the batch it is given, which for its
one-clip `embed_audio` is the same) -> a ResNet-18 with a one-channel 7x7 stem -> average pool (512)
-> the "transform" MLP (512-512-512, ReLU) that projects into CLIP ViT-B/32's image space.
The checkpoint (`Wav2CLIP.pt`/`ResNet_CX.ckpt`, `{"state_dict": {"audio_encoder.*", "audio_transform.*"}}`)
loads from a local file; the wav2clip package is not used (it downloads weights and imports librosa).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sonify.models.inception import load_weights, save_weights

SAMPLE_RATE = 16000
N_FFT, HOP = 512, 353


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Encoder(nn.Module):
    """ResNet-18 on a log spectrogram; key names follow the published checkpoint's `audio_encoder.*`."""

    def __init__(self, width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.conv1 = nn.Conv2d(1, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        chans = [width, width * 2, width * 4, width * 8]
        cin = width
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(Basic(cin, c, stride), Basic(c, c, 1)))
            cin = c
        self.fc = nn.Linear(cin, num_classes)   # in the checkpoint, unused by the embedding
        self.out_dim = cin

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="reflect", return_complex=True).abs() ** 2
        x = torch.log(spec + 1e-7)[:, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.flatten(1).std(dim=1)[:, None, None, None]
        x = (x - mean) / (std + 1e-9)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class Wav2CLIP(nn.Module):
    """Waveforms (B, samples) at 16 kHz -> (B, 512) embeddings in CLIP image space (not normalised)."""

    def __init__(self, width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.config = {"width": width, "num_classes": num_classes}
        self.audio_encoder = Encoder(width, num_classes)
        d = self.audio_encoder.out_dim
        self.audio_transform = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d))
        self.out_dim = d

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.audio_transform(self.audio_encoder(wave))

    def save_pretrained(self, out: str | Path) -> None:
        save_weights(self, out)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Wav2CLIP":
        return load_weights(cls, path, remap=_from_checkpoint)


def _from_checkpoint(state: dict) -> dict:
    """The published checkpoint nests `state_dict` and names the MLP `audio_transform.sequential.N`."""
    state = state.get("state_dict", state)
    out = {}
    for k, v in state.items():
        if not k.startswith(("audio_encoder.", "audio_transform.")) or k.endswith("spectrogram.window"):
            continue
        out[k.replace("audio_transform.sequential.", "audio_transform.")] = v
    return out
