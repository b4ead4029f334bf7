"""Image decoding with bounded size and every awkward mode turned into RGB.

`inspect_image` is the ingest check (header, bomb limit, optional full decode);
`load_rgb` is what model stages use to get an upright RGB image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is the error-row reason token."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int
    height: int
    exif_orientation: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty", "zero bytes")
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own header check then enforces the configured limit
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageRejected("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise ImageRejected("corrupt", "not a recognised image format") from None
        except Exception as e:  # PIL raises many types on malformed headers
            raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageRejected("corrupt", f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise ImageRejected("decompression_bomb", f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def inspect_image(data: bytes, max_pixels: int, full_decode: bool = True) -> ImageInfo:
    """Header facts, the bomb limit and (optionally) a decode of every pixel, which catches truncation."""
    im = _open(data, max_pixels)
    orientation = _orientation(im)
    if full_decode:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
        except Exception as e:
            reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
            raise ImageRejected(reason, f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo(format=im.format or "?", mode=im.mode, width=w, height=h, exif_orientation=orientation)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def load_rgb(data: bytes, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Decode, apply EXIF orientation, convert to RGB, and bound the longer side by `max_side`."""
    im = _open(data, max_pixels)
    try:
        if max_side and im.format == "JPEG":
            im.draft("RGB", (max_side, max_side))  # decode JPEGs at reduced size directly
        im = ImageOps.exif_transpose(im)
        im = to_rgb(im)
    except ImageRejected:
        raise
    except Exception as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageRejected(reason, f"{type(e).__name__}: {e}") from None
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return im


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic), then crop the centre `size` x `size`."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))
