"""Audio primitives: probe, streamed mono decode, chunk planning, on-demand chunk loading.

Chunks are never stored as audio. A chunk is (source file, start frame, frame count) at the
source's native rate; each consumer decodes it and resamples with soxr to the rate it needs
(CLAP 48 kHz, mixing and AST 16 kHz), so no model is fed an upsampled copy of a downsampled copy.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr


def to_mono(block: np.ndarray, downmix: str = "mean") -> np.ndarray:
    """Channels to mono, (frames, channels) -> (frames,), float32: averaged ("mean", the default),
    or summed ("sum", the paper's A.7 standardisation of the pool before CLAP)."""
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    if block.shape[1] == 1:  # mono: a view, no reduction
        return block[:, 0].astype(np.float32, copy=False)
    if downmix == "sum":
        return block.sum(axis=1, dtype=np.float32)
    return block.mean(axis=1, dtype=np.float32)


def dbfs(value: float) -> float:
    return 20.0 * math.log10(value) if value > 0 else float("-inf")


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr high-quality resampling; a no-op at equal rates."""
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def iter_blocks(path: str, block_frames: int) -> Iterator[np.ndarray]:
    """Decode a file in blocks of `block_frames` x channels (memory bounded by one block)."""
    with sf.SoundFile(path) as f:
        while True:
            block = f.read(block_frames, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                return
            yield block


def iter_mono_blocks(path: str, block_frames: int) -> Iterator[np.ndarray]:
    """Decode a file in blocks of `block_frames` (memory bounded by one block), downmixed to mono."""
    for block in iter_blocks(path, block_frames):
        yield to_mono(block)


def declared_frames(path: str) -> tuple[int | None, str]:
    """Frames the container itself declares, read from its header (not from the decoder, which
    counts what it can read): WAV's RIFF `data` chunk size / block align, FLAC's STREAMINFO total
    samples. None when the format is another or the header leaves it open (streamed WAV, 0 in FLAC).
    A WAV whose data chunk runs past the end of the file declares its full size: that is truncation."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                return _riff_frames(f), "RIFF data chunk"
            if head[:3] == b"ID3":                      # FLAC may start with an ID3v2 tag
                size = int.from_bytes(bytes(b & 0x7F for b in head[6:10]), "big")
                f.seek(10 + size)
                head = f.read(4)
            if head[:4] == b"fLaC":
                f.seek(f.tell() - len(head) + 4)
                block = f.read(4 + 34)
                if len(block) == 38 and block[0] & 0x7F == 0:       # STREAMINFO is the first block
                    total = int.from_bytes(block[4 + 10:4 + 18], "big") & ((1 << 36) - 1)
                    return (total or None), "FLAC STREAMINFO"
    except OSError:
        pass
    return None, ""


def _riff_frames(f) -> int | None:
    block_align = None
    while True:
        hdr = f.read(8)
        if len(hdr) < 8:
            return None
        cid, size = hdr[:4], int.from_bytes(hdr[4:], "little")
        if cid == b"fmt ":
            fmt = f.read(size)
            block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
            f.seek(size % 2, 1)
        elif cid == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):  # streamed or RF64: the size is not stated here
                return None
            return size // block_align
        else:
            f.seek(size + size % 2, 1)


def chunk_frames_at(sample_rate: int, chunk_seconds: float) -> int:
    return int(round(sample_rate * chunk_seconds))


def load_chunk(uri: str, start_frame: int, num_frames: int, target_sr: int,
               chunk_seconds: float | None = None, downmix: str = "mean", via_sr: int | None = None) -> np.ndarray:
    """Decode one chunk from its source, mono, resampled to `target_sr`.

    With `chunk_seconds`, the result is zero-padded (or trimmed by rounding) to exactly
    round(target_sr * chunk_seconds) samples, so every chunk has the same length.
    `downmix` ("mean" or "sum") makes the mono signal; `via_sr` resamples to that rate first
    (the paper's 16 kHz pool, then CLAP's 48 kHz).
    """
    with sf.SoundFile(uri) as f:
        src_sr = f.samplerate
        f.seek(start_frame)
        block = f.read(num_frames, dtype="float32", always_2d=True)
    if block.shape[0] < num_frames:
        raise ValueError(f"{uri}: expected {num_frames} frames at {start_frame}, decoded {block.shape[0]} (file changed or truncated)")
    y = to_mono(block, downmix)
    if via_sr is not None:
        y, src_sr = resample(y, src_sr, via_sr), via_sr
    y = resample(y, src_sr, target_sr)
    if chunk_seconds is not None:
        n = chunk_frames_at(target_sr, chunk_seconds)
        y = np.pad(y, (0, n - y.size)) if y.size < n else y[:n]
    return y
