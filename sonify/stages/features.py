"""Stage `features`: the AST time series of every mixture, as float16 .npy files (T x D)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf

from sonify.media.audio import resample
from sonify.models.encoders import ASTEncoder, kaldi_frames
from sonify.engine.errors import error_text
from sonify.engine.files import save_npy
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.store import rows_to_table
from sonify.stages.base import Stage


class FeaturesStage(Stage):
    name = "features"
    outputs = ("audio_features",)
    models = ("ast",)

    def __init__(self, cfg):
        super().__init__(cfg)
        mix_rate = int(cfg.stages.mix.sample_rate)
        n = self.conf.input_frames or kaldi_frames(int(round(float(cfg.stages.audio.chunk_seconds) * 16000)))
        self.ast = ASTEncoder(cfg.models.ast, cfg.models.tiny_dir, int(n), self.conf.pooling, self.conf.device, self.conf.dtype)
        self.mix_rate, self.input_frames = mix_rate, int(n)
        self.run_dir = Path(cfg.run.dir)

    @classmethod
    def work_list(cls, cfg, store) -> pa.Table:
        t = store.read("mixes", columns=["id", "image_id", "vlm", "path", "status"])
        return t.filter(pc.equal(t.column("status"), "ok")).drop(["status"])

    @classmethod
    def fingerprint(cls, cfg) -> str:
        return super().fingerprint(cfg) + f"|{cfg.models.ast}|{cfg.stages.audio.chunk_seconds}|{cfg.stages.mix.sample_rate}"

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        rows, out, good, clips = batch.to_pylist(), {}, [], []
        base = lambda r: {"id": r["id"], "image_id": r["image_id"], "vlm": r["vlm"], "model": self.cfg.models.ast,
                          "pooling": self.conf.pooling, "input_frames": self.input_frames}
        for r in rows:
            try:
                x, rate = sf.read(self.run_dir / r["path"], dtype="float32", always_2d=True)
                clips.append(resample(x.mean(axis=1), rate, self.ast.rate))
                good.append(r)
            except Exception as e:
                out[r["id"]] = {**base(r), "status": STATUS_ERROR, "error": error_text("decode_error", f"{type(e).__name__}: {e}")}
        if good:
            try:
                feats = self.ast.encode(clips)
            except Exception as e:
                feats = None
                for r in good:
                    out[r["id"]] = {**base(r), "status": STATUS_ERROR, "error": error_text("ast_error", f"{type(e).__name__}: {e}")}
            for r, f in zip(good, feats or []):
                if not np.all(np.isfinite(f)):
                    out[r["id"]] = {**base(r), "status": STATUS_ERROR, "error": error_text("bad_features", "NaN or inf in the AST output")}
                    continue
                vlm_key = r["id"].split("-", 1)[0]
                rel = f"features/ast/{vlm_key}/{r['image_id']}.npy"
                save_npy(self.run_dir / rel, f.astype(np.float16))
                out[r["id"]] = {**base(r), "path": rel, "frames": f.shape[0], "dim": f.shape[1], "status": STATUS_OK, "error": None}
        return {"audio_features": rows_to_table("audio_features", [out[r["id"]] for r in rows])}
