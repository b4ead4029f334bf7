"""CLAP through transformers (`ClapModel`, `ClapProcessor`): audio and text into one L2-normalised space.

Audio must be mono at the feature extractor's rate (48 kHz for LAION CLAP). The embed stage passes
each chunk zero-padded to the chunk length (5 s), as it is mixed; the feature extractor then
repeat-pads that to the model's 10 s window, as LAION's `repeatpad` did in training, so a chunk is
seen twice and a short tail is heard once per repeat followed by its silence, never looped.

The features come from `sonify.models.frontends.ClapFrontend` (batched, on the model's device) unless
`frontend="transformers"` asks for `ClapFeatureExtractor` itself, the reference. A clip longer than
the window is cropped at an offset keyed by its id on both paths (transformers' `rand_trunc` is unseeded).
"""

from __future__ import annotations

import numpy as np

from sonify.models.device import in_fixed_batches, pick_device, pick_dtype
from sonify.models.frontends import ClapFrontend, keyed_crop
from sonify.models.loading import load_pretrained


class ClapEmbedder:
    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", model_batch: int = 8,
                 text_max_tokens: int = 77, frontend: str = "torch"):
        from transformers import ClapModel, ClapProcessor

        self.name = name
        self.model_batch, self.text_max_tokens = int(model_batch), int(text_max_tokens)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = load_pretrained(ClapProcessor, name, tiny_dir, role="clap")
        self.model = load_pretrained(ClapModel, name, tiny_dir, role="clap", dtype=self.dtype).to(self.device).eval()
        fe = self.processor.feature_extractor
        self.sampling_rate, self.window = int(fe.sampling_rate), int(fe.nb_max_samples)
        self.frontend = ClapFrontend(fe, self.device) if frontend == "torch" else None
        self.dim = int(self.model.config.projection_dim)

    def _finish(self, out) -> np.ndarray:
        emb = (out.pooler_output if hasattr(out, "pooler_output") else out).float()
        return emb.cpu().numpy()

    def features(self, clips: list[np.ndarray]) -> dict:
        """The audio tower's inputs for clips of at most the window (see `keyed_crop`), on the model's device."""
        import torch

        if self.frontend is None:
            inputs = self.processor(audio=clips, sampling_rate=self.sampling_rate, return_tensors="pt")
        else:   # the unfused model reads is_longer only with fusion on; rand_trunc sets it False throughout
            inputs = {"input_features": self.frontend(clips), "is_longer": torch.zeros(len(clips), 1, dtype=torch.bool)}
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}

    def embed_audio(self, clips: list[np.ndarray], keys: list[str] | None = None) -> np.ndarray:
        """(B,) mono float32 arrays at `sampling_rate` -> (B, D) float32 (not yet re-normalised).
        A clip longer than the window is cropped at an offset fixed by its key (default: its position)."""
        import torch

        keys = list(keys) if keys is not None else [str(i) for i in range(len(clips))]
        clips = [keyed_crop(np.asarray(c, dtype=np.float32), self.window, k) for c, k in zip(clips, keys)]

        def call(batch):
            inputs = self.features(batch)
            with torch.inference_mode():
                return self._finish(self.model.get_audio_features(**inputs))

        return np.stack(in_fixed_batches(call, clips, self.model_batch))

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
