"""Video primitives with PyAV (its own FFmpeg): probe, one frame at a time, a mono audio window.

Benchmarks are videos; evaluation needs one still (the ground-truth image) and the sound of a
window (the conditioning clip) from each. Decoding stops as soon as the wanted part is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VideoRejected(Exception):
    """A video that cannot give what was asked; `reason` is an error-row token."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    width: int
    height: int
    has_audio: bool
    audio_rate: int


def _open(path: str | Path):
    import av

    if not Path(path).exists():
        raise VideoRejected("not_found", str(path))
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoRejected("corrupt", f"{type(e).__name__}: {e}") from None


def probe(path: str | Path) -> VideoInfo:
    """Duration (container, else longest stream), frame size, and whether there is a sound track."""
    with _open(path) as c:
        if not c.streams.video:
            raise VideoRejected("no_video", str(path))
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        durations = [float(s.duration * s.time_base) for s in c.streams if s.duration and s.time_base]
        duration = c.duration / 1_000_000 if c.duration else max(durations, default=0.0)
        return VideoInfo(duration, v.codec_context.width, v.codec_context.height, a is not None,
                         a.codec_context.sample_rate if a is not None else 0)


def frame_at(path: str | Path, t: float):
    """The first frame shown at or after `t` seconds (the last frame when `t` is past the end), as RGB PIL."""
    import av

    last = None
    with _open(path) as c:
        if not c.streams.video:
            raise VideoRejected("no_video", str(path))
        try:
            for frame in c.decode(video=0):
                last = frame
                if frame.time is not None and frame.time + 1e-6 >= t:
                    break
        except av.error.FFmpegError as e:
            if last is None:
                raise VideoRejected("corrupt", f"{type(e).__name__}: {e}") from None
    if last is None:
        raise VideoRejected("empty", "no video frame decodes")
    return last.to_image().convert("RGB")


def audio_window(path: str | Path, start: float, seconds: float, rate: int) -> np.ndarray:
    """Mono float32 audio of [start, start + seconds) at `rate` Hz, zero-padded past the end of the track."""
    import av

    from sonify.media.audio import resample

    with _open(path) as c:
        if not c.streams.audio:
            raise VideoRejected("no_audio", str(path))
        native = c.streams.audio[0].codec_context.sample_rate
        mixer = av.AudioResampler(format="fltp", layout="mono", rate=native)
        pieces, t0, end = [], None, start + seconds
        try:
            for frame in c.decode(audio=0):
                if t0 is None:
                    t0 = frame.time or 0.0
                for out in mixer.resample(frame):
                    pieces.append(out.to_ndarray()[0])
                if (frame.time or 0.0) > end:
                    break
        except av.error.FFmpegError as e:
            if not pieces:
                raise VideoRejected("corrupt", f"{type(e).__name__}: {e}") from None
    if not pieces:
        raise VideoRejected("empty", "no audio frame decodes")
    x = np.concatenate(pieces).astype(np.float32)
    a, n = int(round((start - (t0 or 0.0)) * native)), int(round(seconds * native))
    x = x[max(a, 0): max(a, 0) + n]
    x = np.pad(x, (0, n - x.size)) if x.size < n else x
    return resample(x, native, rate)
