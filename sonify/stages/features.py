"""Stage `features`: the AST time series of every mixture, as float16 .npy files (T x D)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf

from sonify.engine.ids import parse_variant_id
from sonify.engine.settings import AT_LEAST_1, DTYPES, FRONTENDS, NONE_OR_AT_LEAST_1, StageSettings, choice, ranged, runtime
from sonify.media.audio import resample
from sonify.models.encoders import ASTEncoder, kaldi_frames
from sonify.stages.encoder import EncoderStage


@dataclass
class FeaturesSettings(StageSettings):
    partition_rows: int = 512
    batch_size: int = 32
    concurrency: int = 1
    pooling: str = choice("mean", ["mean", "max", "none"])   # pool AST patch tokens over frequency
    input_frames: Optional[int] = ranged(None, NONE_OR_AT_LEAST_1)   # filterbank frames fed to AST; null: the mixtures' length (5 s -> 498)
    model_batch: int = ranged(8, AT_LEAST_1)   # clips per model call, a fixed shape (the last call padded): in the fingerprint
    frontend: str = choice("torch", FRONTENDS)   # AST's filterbanks
    dtype: str = choice("auto", DTYPES)
    device: str = runtime("auto")


class FeaturesStage(EncoderStage):
    name = "features"
    Settings = FeaturesSettings
    version = 2                         # 2: the torch front end (stages.features.frontend)
    outputs = ("audio_features",)
    upstream = ("mix",)
    uses = ("stages.audio.chunk_seconds", "stages.mix.sample_rate")
    files_dir = "features/ast"
    content_columns = ("id", "image_id", "variant", "flac_sha256")   # the mixture's bytes, not where it lies
    models = ("ast",)

    def __init__(self, cfg):
        super().__init__(cfg)
        n = self.conf.input_frames or kaldi_frames(round(cfg.stages.audio.chunk_seconds * 16000))
        self.ast = ASTEncoder(cfg.models.ast, cfg.models.tiny_dir, n, self.conf.pooling, self.conf.device, self.conf.dtype,
                              self.conf.model_batch, self.conf.frontend)
        self.mix_rate, self.input_frames = cfg.stages.mix.sample_rate, n

    @classmethod
    def work_list(cls, cfg, store):
        return store.connect("mixes").sql("SELECT id, image_id, variant, path, flac_sha256 FROM mixes WHERE status = 'ok'")

    def base(self, r: dict) -> dict:
        return {"id": r["id"], "image_id": r["image_id"], "variant": r["variant"], "model": self.cfg.models.ast,
                "pooling": self.conf.pooling, "input_frames": self.input_frames}

    def decode(self, r: dict) -> np.ndarray:
        x, rate = sf.read(self.run_dir / r["path"], dtype="float32", always_2d=True)
        return resample(x.mean(axis=1), rate, self.ast.rate)

    def encode(self, clips: list) -> list[np.ndarray]:
        return self.ast.encode(clips)

    def result(self, r: dict, f: np.ndarray) -> tuple[str, dict]:
        key, image_id = parse_variant_id(r["id"])
        return f"{key}/{image_id}.npy", {"frames": f.shape[0], "dim": f.shape[1]}
