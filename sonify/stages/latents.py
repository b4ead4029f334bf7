"""Stage `latents`: the VAE latent distribution (mean, std) of every kept image, as float16 .npy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sonify.engine.settings import AT_LEAST_1, DTYPES, StageSettings, choice, ranged, runtime
from sonify.media.image import center_crop
from sonify.models.encoders import VAEEncoder
from sonify.sources import SourcePaths
from sonify.sources.images import load_image
from sonify.stages.encoder import EncoderStage


@dataclass
class LatentsSettings(StageSettings):
    partition_rows: int = 512
    batch_size: int = 16
    concurrency: int = 1
    resolution: int = ranged(512, AT_LEAST_1)   # shorter side resized to this, then centre-cropped square
    vae_subfolder: str = "vae"         # the VAE inside models.vae (PixArt-alpha repos keep it in vae/)
    model_batch: int = ranged(8, AT_LEAST_1)   # images per model call, a fixed shape (the last call padded): in the fingerprint
    dtype: str = choice("auto", DTYPES)
    device: str = runtime("auto")
    max_pixels: int = ranged(89_478_485, AT_LEAST_1)


class LatentsStage(EncoderStage):
    name = "latents"
    Settings = LatentsSettings
    outputs = ("image_latents",)
    upstream = ("images", "filter")
    files_dir = "features/latents"
    content_columns = ("id", "sha256")   # the image's bytes, not where it is stored
    models = ("vae",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.vae = VAEEncoder(cfg.models.vae, cfg.models.tiny_dir, self.conf.device, self.conf.dtype, self.conf.vae_subfolder,
                              self.conf.model_batch)
        self.paths = SourcePaths.of(cfg, "images")

    @classmethod
    def work_list(cls, cfg, store):
        return store.connect("images", kept="kept_images").sql(
            "SELECT i.id, i.source, i.uri, i.tar_offset, i.nbytes, i.sha256 FROM images i JOIN kept k ON k.id = i.id AND k.kept")

    def base(self, r: dict) -> dict:
        return {"id": r["id"], "model": self.cfg.models.vae, "resolution": self.conf.resolution,
                "scaling_factor": self.vae.scaling_factor}

    def decode(self, r: dict):
        return center_crop(load_image(r, self.paths, self.conf.max_pixels), self.conf.resolution)

    def encode(self, images: list) -> list[np.ndarray]:
        mean, std = self.vae.encode(images)
        return [np.stack([m, s]) for m, s in zip(mean, std)]

    def result(self, r: dict, moments: np.ndarray) -> tuple[str, dict]:
        c, h, w = moments.shape[1:]
        return f"{r['id']}.npy", {"channels": c, "height": h, "width": w}
