"""Feature models for the metrics: FID's Inception (pool features and IS logits), CLIP's image and text towers,
Wav2CLIP's audio encoder.

Every model is loaded by name through `models.loading.load_pretrained`: a Hugging Face id or folder
for CLIP, a local weights file for Inception (pytorch-fid's) and Wav2CLIP, `tiny:<kind>` in tests.

FID preprocessing follows clean-fid's documented choices (Parmar et al. 2022): images are read as
8-bit RGB (generated images are stored as PNG, so they are not JPEG-quantised a second time), then
resized to 299 x 299 with PIL's bicubic filter on each channel as a float32 image (PIL's antialiased
resize, never a tensor `interpolate`) and fed without rounding back to 8 bits. Before that, a centre
square is cropped, since the benchmarks' frames are not square and the generated images are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

FID_SIZE = 299


def read_rgb(path: str | Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def center_square(im):
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def clean_resize(im, size: int = FID_SIZE) -> np.ndarray:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic to size x size; returns HxWx3 in [0, 255]."""
    from PIL import Image

    arr = np.asarray(im, dtype=np.float32)
    chans = [np.asarray(Image.fromarray(arr[..., c], mode="F").resize((size, size), Image.Resampling.BICUBIC)) for c in range(3)]
    return np.stack(chans, axis=-1)


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class InceptionFeatures:
    """2048-d pool features (FID, and the space NDB bins are drawn in)."""

    def __init__(self, name: str, tiny_dir: str, device: str = "cpu", batch_size: int = 16):
        from sonify.models.inception import FIDInceptionV3
        from sonify.models.loading import load_pretrained

        self.model = load_pretrained(FIDInceptionV3, name, tiny_dir, role="inception").to(device).eval()
        self.device, self.batch_size = device, batch_size

    def preprocess(self, images: list) -> "torch.Tensor":
        import torch

        arr = np.stack([clean_resize(center_square(im)) for im in images]) / 255.0
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float()

    def __call__(self, images: list) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for batch in _batches(images, self.batch_size):
                out.append(self.model(self.preprocess(batch).to(self.device)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.feature_dim))

    def logits(self, features: np.ndarray) -> np.ndarray:
        """IS logits: the 1008-way classifier on the pool features without its bias ("logits_unbiased").

        The original Inception Score code (Salimans et al.) takes `pool3 @ W` of this network's
        softmax layer, bias left out; torch-fidelity and torchmetrics do the same. Dropout is off in eval.
        """
        w = self.model.fc.weight.detach().double().cpu().numpy()
        return np.asarray(features, np.float64) @ w.T


class ClipTextFeatures:
    """CLIP text embeddings of class names (Sound2Scene's R@K), L2-normalised; `template` formats each name."""

    def __init__(self, name: str, tiny_dir: str, device: str = "cpu", template: str = "{}"):
        from transformers import AutoTokenizer, CLIPModel

        from sonify.models.loading import load_pretrained

        self.model = load_pretrained(CLIPModel, name, tiny_dir, role="clip").to(device).eval()
        self.tokenizer = load_pretrained(AutoTokenizer, name, tiny_dir, role="clip")
        self.device, self.template = device, template

    def __call__(self, class_names: list[str]) -> np.ndarray:
        import torch

        from sonify.evaluation.metrics import l2_normalise

        if not class_names:
            return np.zeros((0, self.model.config.projection_dim))
        batch = self.tokenizer([self.template.format(c) for c in class_names], padding=True, truncation=True,
                               max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in batch.items()
                                                  if k in ("input_ids", "attention_mask")})
        return l2_normalise(out.pooler_output.double().cpu().numpy())


class ClipImageFeatures:
    """CLIP image embeddings (the projection), L2-normalised; the model's own processor crops and resizes."""

    def __init__(self, name: str, tiny_dir: str, device: str = "cpu", batch_size: int = 32):
        from transformers import CLIPImageProcessorPil, CLIPModel

        from sonify.models.loading import load_pretrained

        self.model = load_pretrained(CLIPModel, name, tiny_dir, role="clip").to(device).eval()
        self.processor = load_pretrained(CLIPImageProcessorPil, name, tiny_dir, role="clip")
        self.device, self.batch_size = device, batch_size

    def __call__(self, images: list) -> np.ndarray:
        import torch

        from sonify.evaluation.metrics import l2_normalise

        out = []
        with torch.inference_mode():
            for batch in _batches(images, self.batch_size):
                px = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                out.append(self.model.get_image_features(pixel_values=px).pooler_output.double().cpu().numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.model.config.projection_dim))


class Wav2ClipFeatures:
    """Wav2CLIP embeddings of WAV files (mono, 16 kHz, `seconds` long: cut or zero-padded), L2-normalised."""

    def __init__(self, name: str, tiny_dir: str, device: str = "cpu", batch_size: int = 16, seconds: float = 5.0):
        from sonify.models.loading import load_pretrained
        from sonify.models.wav2clip import Wav2CLIP

        self.model = load_pretrained(Wav2CLIP, name, tiny_dir, role="wav2clip").to(device).eval()
        self.device, self.batch_size, self.seconds = device, batch_size, seconds

    def __call__(self, paths: list[str]) -> np.ndarray:
        import torch

        from sonify.evaluation.metrics import l2_normalise
        from sonify.models.wav2clip import SAMPLE_RATE
        from sonify.training.sampling import load_audio

        out = []
        with torch.inference_mode():
            for batch in _batches(paths, self.batch_size):
                waves = np.stack([load_audio(p, SAMPLE_RATE, self.seconds) for p in batch])
                out.append(self.model(torch.from_numpy(waves).to(self.device)).double().cpu().numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.model.out_dim))
