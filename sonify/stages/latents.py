"""Stage `latents`: the VAE latent distribution (mean, std) of every kept image, as float16 .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from sonify.models.encoders import VAEEncoder
from sonify.engine.errors import error_text
from sonify.engine.files import save_npy
from sonify.media.image import ImageRejected, center_crop
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.sources.images import load_image
from sonify.engine.store import rows_to_table
from sonify.stages.base import Stage


class LatentsStage(Stage):
    name = "latents"
    outputs = ("image_latents",)
    models = ("vae",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.vae = VAEEncoder(cfg.models.vae, cfg.models.tiny_dir, self.conf.device, self.conf.dtype, self.conf.vae_subfolder)
        self.run_dir = Path(cfg.run.dir)

    @classmethod
    def work_list(cls, cfg, store) -> pa.Table:
        import duckdb

        con = duckdb.connect()
        con.register("images", store.read("images", columns=["id", "uri", "tar_offset", "nbytes"]))
        con.register("kept", store.read("kept_images", columns=["id", "kept"]))
        return con.sql("SELECT i.id, i.uri, i.tar_offset, i.nbytes FROM images i JOIN kept k ON k.id = i.id AND k.kept").to_arrow_table()

    @classmethod
    def fingerprint(cls, cfg) -> str:
        return super().fingerprint(cfg) + f"|{cfg.models.vae}"

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        rows, out, good, images = batch.to_pylist(), {}, [], []
        size = int(self.conf.resolution)
        base = lambda r: {"id": r["id"], "model": self.cfg.models.vae, "resolution": size, "scaling_factor": self.vae.scaling_factor}
        for r in rows:
            try:
                images.append(center_crop(load_image(r, self.conf.max_pixels), size))
                good.append(r)
            except ImageRejected as e:
                out[r["id"]] = {**base(r), "status": STATUS_ERROR, "error": error_text(e.reason, e.detail)}
        if good:
            try:
                mean, std = self.vae.encode(images)
            except Exception as e:
                mean = None
                for r in good:
                    out[r["id"]] = {**base(r), "status": STATUS_ERROR, "error": error_text("vae_error", f"{type(e).__name__}: {e}")}
            if mean is not None:
                for r, m, s in zip(good, mean, std):
                    rel = f"features/latents/{r['id']}.npy"
                    save_npy(self.run_dir / rel, np.stack([m, s]).astype(np.float16))
                    out[r["id"]] = {**base(r), "path": rel, "channels": m.shape[0], "height": m.shape[1], "width": m.shape[2],
                                    "status": STATUS_OK, "error": None}
        return {"image_latents": rows_to_table("image_latents", [out[r["id"]] for r in rows])}
