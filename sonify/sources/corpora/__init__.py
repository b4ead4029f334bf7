"""Public corpora, one module per corpus (as lhotse keeps them), used by the recipes and the benchmarks.

Each module parses its corpus's released metadata (CSV, annotation files, folder layout) into
pyarrow tables and names the released files; it decodes no media. Its docstring gives the public
layout it expects and, where a corpus has no natural clip, the clip rule chosen. A corpus that is a
pipeline source also holds its recipe, `prepare(root)` (registered in `sonify.sources.recipes.RECIPES`).
"""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def class_folder_videos(root: str | Path, split_names=("train", "test", "val", "validation")):
    """Videos laid out as `[<split>/]<class>/.../<name>.<ext>`: (relpath, class, split) rows, sorted.

    The class is the first folder below the split folder (or below `root` when there is no split folder).
    """
    import pyarrow as pa

    root = Path(root)
    rows = {"relpath": [], "label": [], "split": []}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
        parts = path.relative_to(root).parts
        split = parts[0] if len(parts) > 2 and parts[0].lower() in split_names else ""
        rest = parts[1:] if split else parts
        if len(rest) < 2:
            continue   # a video directly under the root or split folder has no class
        rows["relpath"].append(path.relative_to(root).as_posix())
        rows["label"].append(rest[0])
        rows["split"].append(split.lower())
    return pa.table(rows, schema=pa.schema([("relpath", pa.string()), ("label", pa.string()), ("split", pa.string())]))
