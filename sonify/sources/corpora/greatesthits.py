"""The Greatest Hits (Owens et al., CVPR 2016, "Visually Indicated Sounds"): people hitting and
scratching things with a drumstick, 977 videos with every hit annotated.

Public layout (`vis-data/`): per recording `<stamp>_denoised.mp4` (video with its denoised sound
track), `<stamp>_denoised.wav` (the same sound at 96 kHz), `<stamp>_times.txt` (one annotated
action per line: `time material action reaction`, whitespace separated, `None` where unknown), and
`train.txt` / `test.txt` beside them listing the stamps of each split.

Clip rule (the recordings are long, and the annotation is per hit): one clip per annotated action
whose material is known, a `clip_seconds` window centred on the action time (clamped inside the
video), its ground-truth frame the frame at the action time; an action closer than `min_gap` seconds
to the previous kept one in the same recording is skipped, so clips do not repeat one another.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

TIMES_SCHEMA = pa.schema([("time", pa.float64()), ("material", pa.string()), ("action", pa.string()), ("reaction", pa.string())])


def read_times(path: str | Path) -> pa.Table:
    """A `<stamp>_times.txt`: (time, material, action, reaction); `None` becomes null."""
    rows = {n: [] for n in TIMES_SCHEMA.names}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        bits = line.split()
        if not bits:
            continue
        try:
            t = float(bits[0])
        except ValueError:
            raise ValueError(f"{path}: line {i + 1}: time {bits[0]!r} is not a number") from None
        rest = [None if b == "None" else b for b in bits[1:4]] + [None] * (3 - len(bits[1:4]))
        for name, value in zip(TIMES_SCHEMA.names, [t, *rest]):
            rows[name].append(value)
    return pa.table(rows, schema=TIMES_SCHEMA)


def recordings(root: str | Path) -> list[str]:
    """Stamps of the recordings that have both a video and a times file, sorted."""
    root = Path(root)
    return sorted(p.name[: -len("_times.txt")] for p in root.glob("*_times.txt")
                  if (root / (p.name[: -len("_times.txt")] + "_denoised.mp4")).exists())


def split_of(root: str | Path) -> dict[str, str]:
    """stamp -> split from `train.txt` / `test.txt` (absent files: no split known)."""
    out = {}
    for split in ("train", "val", "test"):
        f = Path(root) / f"{split}.txt"
        if f.exists():
            out.update({s.strip(): split for s in f.read_text().split() if s.strip()})
    return out


def video_path(root: str | Path, stamp: str) -> Path:
    return Path(root) / f"{stamp}_denoised.mp4"


def hit_clips(times: pa.Table, min_gap: float) -> list[dict]:
    """The actions kept by the clip rule: known material, at least `min_gap` s after the previous kept one."""
    kept, last = [], None
    for row in sorted(times.to_pylist(), key=lambda r: r["time"]):
        if row["material"] is None:
            continue
        if last is not None and row["time"] - last < min_gap:
            continue
        kept.append(row)
        last = row["time"]
    return kept
