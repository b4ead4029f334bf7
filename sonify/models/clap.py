"""CLAP through transformers (`ClapModel`, `ClapProcessor`): audio and text into one L2-normalised space.

Audio must be mono at the feature extractor's rate (48 kHz for LAION CLAP). The embed stage passes
each chunk zero-padded to the chunk length (5 s), as it is mixed; the feature extractor then
repeat-pads that to the model's 10 s window, as LAION's `repeatpad` did in training, so a chunk is
seen twice and a short tail is heard once per repeat followed by its silence, never looped.
"""

from __future__ import annotations

import numpy as np

from sonify.models.device import in_fixed_batches, pick_device, pick_dtype
from sonify.models.loading import load_pretrained


class ClapEmbedder:
    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", model_batch: int = 8,
                 text_max_tokens: int = 77):
        from transformers import ClapModel, ClapProcessor

        self.name = name
        self.model_batch, self.text_max_tokens = int(model_batch), int(text_max_tokens)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = load_pretrained(ClapProcessor, name, tiny_dir, role="clap")
        self.model = load_pretrained(ClapModel, name, tiny_dir, role="clap", dtype=self.dtype).to(self.device).eval()
        self.sampling_rate = int(self.processor.feature_extractor.sampling_rate)
        self.dim = int(self.model.config.projection_dim)

    def _finish(self, out) -> np.ndarray:
        emb = (out.pooler_output if hasattr(out, "pooler_output") else out).float()
        return emb.cpu().numpy()

    def embed_audio(self, clips: list[np.ndarray]) -> np.ndarray:
        """(B,) mono float32 arrays at `sampling_rate` -> (B, D) float32 (not yet re-normalised)."""
        import torch

        def call(batch):
            inputs = self.processor(audio=batch, sampling_rate=self.sampling_rate, return_tensors="pt")
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}
            with torch.inference_mode():
                return self._finish(self.model.get_audio_features(**inputs))

        return np.stack(in_fixed_batches(call, list(clips), self.model_batch))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts padded to a fixed token length in fixed-size batches: a text's vector never depends on its batch."""
        import torch

        def call(batch):
            inputs = self.processor(text=batch, return_tensors="pt", padding="max_length", truncation=True,
                                    max_length=self.text_max_tokens)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.inference_mode():
                return self._finish(self.model.get_text_features(**inputs))

        return np.stack(in_fixed_batches(call, list(texts), self.model_batch))


def normalise(emb: np.ndarray, min_norm: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-normalise rows; returns (unit rows, norms, ok mask). NaN or near-zero rows are not ok."""
    emb = emb.astype(np.float32, copy=False)
    norms = np.linalg.norm(emb, axis=1)
    ok = np.isfinite(norms) & (norms > min_norm) & np.all(np.isfinite(emb), axis=1)
    unit = np.zeros_like(emb)
    unit[ok] = emb[ok] / norms[ok, None]
    return unit, norms, ok
