"""HuBERT (`transformers.HubertModel`) as a clip embedder, for the loudness-retention study (A.8).

The paper compared HuBERT with AST in early experiments and kept AST. HuBERT-base hears the raw 16 kHz
waveform (its fairseq base recipe trains without input normalisation, so none is applied here); its
first convolution is followed by a group norm over time, which removes the input's scale: expect
HuBERT-base to be nearly gain-invariant by construction.
"""

from __future__ import annotations

import numpy as np

from sonify.models.device import in_fixed_batches, pick_device, pick_dtype
from sonify.models.loading import load_pretrained


class HubertEncoder:
    rate = 16000

    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "float32", model_batch: int = 8):
        from transformers import HubertModel

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = load_pretrained(HubertModel, name, tiny_dir, role="hubert").to(self.device, self.dtype).eval()
        self.model_batch = int(model_batch)
        self.dim = int(self.model.config.hidden_size)

    def encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Mono clips at 16 kHz (one length per batch) -> per clip the (T, D) last hidden state."""
        return in_fixed_batches(self._encode, list(clips), self.model_batch)

    def _encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(np.stack([np.asarray(c, np.float32) for c in clips])).to(self.device, self.dtype)
        with torch.inference_mode():
            return list(self.model(input_values=x).last_hidden_state.float().cpu().numpy())
