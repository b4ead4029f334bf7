"""Stage `images`: list image sources, record id, uri, size, mode, sha256, and check each decodes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import List

import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.store import rows_to_table
from sonify.engine.settings import AT_LEAST_1, POSITIVE, StageSettings, choice, ranged
from sonify.media import IMAGE_EXTENSIONS
from sonify.media.image import ImageRejected, inspect_image
from sonify.sources import NotAFile
from sonify.sources.images import list_images, read_image_bytes
from sonify.stages.listing import ListingStage


@dataclass
class ImagesSettings(StageSettings):
    max_pixels: int = ranged(89_478_485, AT_LEAST_1)   # larger images are error rows (decompression bombs); PIL's default
    decode_check: str = choice("full", ["full", "header"])   # full: decode every pixel (catches truncation) | header
    url_timeout_s: float = ranged(20.0, POSITIVE)      # a whole read of one image (URL, file or tar member) must finish within this
    extensions: List[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))


class ImagesStage(ListingStage):
    name = "images"
    Settings = ImagesSettings
    outputs = ("images",)
    lister = staticmethod(list_images)

    def _one(self, row: dict) -> dict:
        out = {k: row[k] for k in ("id", "source", "uri", "tar_offset", "nbytes")}
        if row["list_error"]:
            return {**out, "status": STATUS_ERROR, "error": row["list_error"]}
        try:
            data = read_image_bytes(self.paths.locate(row), row["tar_offset"], row["nbytes"], self.conf.url_timeout_s)
        except FileNotFoundError as e:
            return {**out, "status": STATUS_ERROR, "error": error_text("not_found", e)}
        except NotAFile as e:
            return {**out, "status": STATUS_ERROR, "error": error_text("not_a_file", e)}
        except TimeoutError as e:
            return {**out, "status": STATUS_ERROR, "error": error_text("timeout", e)}
        except Exception as e:
            return {**out, "status": STATUS_ERROR, "error": error_text("unreadable", f"{type(e).__name__}: {e}")}
        out["nbytes"] = len(data)
        out["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            info = inspect_image(data, self.conf.max_pixels, full_decode=self.conf.decode_check == "full")
        except ImageRejected as e:
            return {**out, "status": STATUS_ERROR, "error": error_text(e.reason, e.detail)}
        return {**out, "format": info.format, "mode": info.mode, "width": info.width, "height": info.height,
                "exif_orientation": info.exif_orientation, "status": STATUS_OK, "error": None}

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        return {"images": rows_to_table("images", [self._one(r) for r in batch.to_pylist()])}
