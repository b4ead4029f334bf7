"""The two encoders of the training features: AST for mixtures, the PixArt VAE for images.

AST (`ASTModel`, `ASTFeatureExtractor`) is pretrained on 1024-frame (10.24 s) inputs. For shorter
clips the feature extractor's `max_length` is set to the clip's frame count and the position
embeddings are cropped along time from the middle, as the AST authors do when fine-tuning on
5 s audio (ESC-50), instead of padding every clip to 10.24 s. The last hidden state's patch tokens
(frequency-major) are pooled over frequency into a T x D time series. The filterbanks come from
`sonify.models.frontends.ASTFrontend` (batched, on the model's device) unless `frontend="transformers"`
asks for the feature extractor itself, the reference.

The VAE (`AutoencoderKL`, PixArt-alpha's) encodes a shorter-side-resized, centre-cropped image;
the latent distribution's mean and std are kept (PixArt-alpha samples a fresh latent each epoch).
"""

from __future__ import annotations

import numpy as np

from sonify.models.device import in_fixed_batches, pick_device, pick_dtype
from sonify.models.frontends import ASTFrontend, ast_mel_filters_as_designed
from sonify.models.loading import load_pretrained


def kaldi_frames(n_samples: int, rate: int = 16000, window_ms: float = 25.0, hop_ms: float = 10.0) -> int:
    win, hop = int(rate * window_ms / 1000), int(rate * hop_ms / 1000)
    return 1 + (n_samples - win) // hop if n_samples >= win else 1


class ASTEncoder:
    def __init__(self, name: str, tiny_dir: str, n_frames: int | None, pooling: str = "mean",
                 device: str = "auto", dtype: str = "auto", model_batch: int = 8, frontend: str = "torch"):
        import torch
        from transformers import ASTFeatureExtractor, ASTModel

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        with ast_mel_filters_as_designed():
            self.fe = load_pretrained(ASTFeatureExtractor, name, tiny_dir, role="ast")
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()   # the AudioSet classifier head is not used: no "UNEXPECTED keys" report per worker
        try:
            self.model = load_pretrained(ASTModel, name, tiny_dir, role="ast")
        finally:
            hf_logging.set_verbosity(verbosity)
        self.pooling = pooling
        self.model_batch = int(model_batch)
        cfg = self.model.config
        self.f_dim = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
        self.t_max = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
        if n_frames and n_frames != cfg.max_length:
            if n_frames > cfg.max_length:
                raise ValueError(f"clips of {n_frames} frames exceed the AST's {cfg.max_length}; use shorter mixtures")
            t_new = (n_frames - cfg.patch_size) // cfg.time_stride + 1
            pos = self.model.embeddings.position_embeddings.data
            grid = pos[:, 2:].reshape(1, self.f_dim, self.t_max, -1)
            start = self.t_max // 2 - t_new // 2          # crop the middle of the time axis (as AST does)
            grid = grid[:, :, start:start + t_new]
            self.model.embeddings.position_embeddings = torch.nn.Parameter(
                torch.cat([pos[:, :2], grid.reshape(1, self.f_dim * t_new, -1)], dim=1))
            cfg.max_length = n_frames
            self.t_max = t_new
            self.fe.max_length = n_frames
        self.model.to(self.device, self.dtype).eval()
        self.rate = int(self.fe.sampling_rate)
        self.dim = int(cfg.hidden_size)
        self.frontend = ASTFrontend(self.fe, self.device) if frontend == "torch" else None   # after max_length is set

    def encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Mono clips at 16 kHz -> per clip a (T, D) float32 array (or (F*T, D) with pooling 'none'),
        computed in fixed-size batches (see `in_fixed_batches`)."""
        return in_fixed_batches(self._encode, list(clips), self.model_batch)

    def _encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        if self.frontend is None:
            x = self.fe(clips, sampling_rate=self.rate, return_tensors="pt")["input_values"]
        else:
            x = self.frontend(clips)
        x = x.to(self.device, self.dtype)
        with torch.inference_mode():
            hidden = self.model(input_values=x).last_hidden_state[:, 2:].float()   # drop cls + distillation
        grid = hidden.reshape(hidden.shape[0], self.f_dim, self.t_max, -1)          # frequency-major patches
        if self.pooling == "mean":
            out = grid.mean(dim=1)
        elif self.pooling == "max":
            out = grid.amax(dim=1)
        else:
            out = hidden
        return list(out.cpu().numpy())


class VAEEncoder:
    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", subfolder: str = "vae",
                 model_batch: int = 8):
        from diffusers import AutoencoderKL

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        # the dtype at load time, as diffusers asks (a later `.to(dtype)` prints a float32-modules notice)
        self.vae = load_pretrained(AutoencoderKL, name, tiny_dir, role="vae", subfolder=subfolder, torch_dtype=self.dtype)
        self.vae.to(self.device).eval()
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.model_batch = int(model_batch)

    def encode(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """Square RGB images -> (mean, std) of the latent distribution, each (B, C, h, w) float32,
        computed in fixed-size batches (see `in_fixed_batches`)."""
        pairs = in_fixed_batches(lambda batch: list(zip(*self._encode(batch))), list(images), self.model_batch)
        return np.stack([m for m, _ in pairs]), np.stack([s for _, s in pairs])

    def _encode(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        import torch

        arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).to(self.device, self.dtype)
        with torch.inference_mode():
            dist = self.vae.encode(x).latent_dist
        return dist.mean.float().cpu().numpy(), dist.std.float().cpu().numpy()
