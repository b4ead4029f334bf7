"""SA-1B (Segment Anything 1-Billion), images for the paper's run.

Source: https://ai.meta.com/datasets/segment-anything-downloads/ (a `file_list.txt` of CDN links to
`sa_000000.tar` ... `sa_000999.tar`, ~11k images each, every `sa_<id>.jpg` with its `sa_<id>.json`).
Licence: the SA-1B Dataset Research License: research use only, no redistribution of the images;
faces and licence plates are blurred. A release of sonify pairs should name images by `relpath`, not ship them.
The recipe indexes the tars from their headers (offsets, sizes); an image without its JSON and a
shard named in `file_list.txt` but absent are `not_found` rows.
"""

from __future__ import annotations

from pathlib import Path

from sonify.engine.errors import error_text
from sonify.sources.corpora.sa1b import index_tar, read_file_list
from sonify.sources.recipes import RecipeError, missing, row

LICENSE = "SA-1B Dataset Research License (research use only)"


def prepare(root: Path) -> list[dict]:
    tars = sorted(root.glob("sa_*.tar"))
    listed = read_file_list(root / "file_list.txt") if (root / "file_list.txt").is_file() else []
    if not tars and not listed:
        raise RecipeError(f"{root}: no sa_NNNNNN.tar shards and no file_list.txt")
    rows = []
    present = {t.name for t in tars}
    for name in sorted(set(listed) - present):
        rows.append(missing(name, Path(name).stem, "shard named in file_list.txt is not downloaded", license=LICENSE))
    for t in tars:
        try:
            members = index_tar(t)
        except Exception as e:
            rows.append(row(t.name, t.stem, license=LICENSE, error=error_text("unreadable_tar", f"{type(e).__name__}: {e}")))
            continue
        for stem, parts in sorted(members.items()):
            if ".jpg" not in parts:
                rows.append(missing(f"{t.name}#{stem}.jpg", Path(stem).name, "annotation without its image", license=LICENSE))
                continue
            offset, size = parts[".jpg"]
            rel = f"{t.name}#{stem}.jpg"
            if ".json" not in parts:
                rows.append(missing(rel, Path(stem).name, "image without its sa_<id>.json", license=LICENSE,
                                    tar_offset=offset, nbytes=size))
                continue
            rows.append(row(rel, Path(stem).name, license=LICENSE, split="train", tar_offset=offset, nbytes=size))
    return rows
