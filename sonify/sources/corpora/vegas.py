"""VEGAS (Zhou et al., CVPR 2018, "Visual to Sound"): ~28K clips of up to 10 s in 10 classes from
AudioSet (baby crying, chainsaw, dog, drum, fireworks, helicopter, printer, rail transport,
snoring, water flowing).

Public layout: `<class>/video/<name>.mp4` (the released trimmed clips; `<class>/audio/` holds the
same sound as WAV). A clip is the whole released clip; its ground-truth frame the middle frame.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa


def list_videos(root: str | Path) -> pa.Table:
    """(relpath, label, split) of every `<class>/video/*.mp4`; VEGAS ships no split file (split '')."""
    root = Path(root)
    paths = sorted(root.glob("*/video/*.mp4"))
    return pa.table({"relpath": [p.relative_to(root).as_posix() for p in paths],
                     "label": [p.parent.parent.name for p in paths], "split": [""] * len(paths)})
