"""Landscapes (Lee et al., "Sound-Guided Semantic Video Generation", ECCV 2022): ~1K nature videos in
9 classes (explosion, fire crackling, raining, splashing water, squishing water, thunder,
underwater bubbling, waterfall burbling, wind noise).

Public layout: `<split>/<class>/<name>.mp4` (split `train` or `test`). The recordings are long and
carry no annotation, so the clip rule is fixed windows: `clip_seconds` windows from the start, at
most `max_clips_per_video` per video, each window's ground-truth frame the middle frame.
Into The Wild (a set of in-the-wild nature and city videos with the same use in the paper) has no
published layout; any copy laid out as `[<split>/]<class>/<name>.mp4` is read by the same rule.
"""

from __future__ import annotations

from pathlib import Path

from sonify.sources.corpora import class_folder_videos


def list_videos(root: str | Path):
    """(relpath, label, split) of every video under `root`."""
    return class_folder_videos(root)


def windows(duration: float, clip_seconds: float, max_clips: int) -> list[float]:
    """Start times of the fixed windows that fit in a video of `duration` seconds (at least one)."""
    n = max(1, min(max_clips, int(duration // clip_seconds)))
    return [i * clip_seconds for i in range(n)]
