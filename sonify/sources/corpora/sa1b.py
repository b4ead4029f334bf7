"""SA-1B (Segment Anything 1-Billion), images for the paper's run.

Source: https://ai.meta.com/datasets/segment-anything-downloads/ (a `file_list.txt` of CDN links to
`sa_000000.tar` ... `sa_000999.tar`, ~11k images each, every `sa_<id>.jpg` with its `sa_<id>.json`).
Licence: the SA-1B Dataset Research License: research use only, no redistribution of the images;
faces and licence plates are blurred. A release of sonify pairs should name images by `relpath`, not ship them.
The recipe indexes the tars from their headers (offsets, sizes); an image without its JSON and a
shard named in `file_list.txt` but absent are `not_found` rows.

Layout: SA-1B's shards: `sa_NNNNNN.tar`, each holding `sa_<id>.jpg` with its `sa_<id>.json` annotations.

Members are indexed from the tar headers only (no JSON is parsed), so listing 1,000 shards of ~10 GB
reads a few MB. `file_list.txt` (tab-separated `file_name  cdn_link`), when present, names the shards
the user meant to download.

The layout parsing decodes no media; `prepare` is the recipe (`sonify.sources.recipes.run_recipe`).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from sonify.engine.errors import error_text
from sonify.sources.recipes import RecipeError, missing, row


def index_tar(path: str | Path) -> dict[str, dict[str, tuple[int, int]]]:
    """stem -> {suffix: (data offset, size)} for every file member of an uncompressed tar."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if m.isfile():
                p = Path(m.name)
                out.setdefault(str(p.with_suffix("")), {})[p.suffix.lower()] = (m.offset_data, m.size)
    return out


def read_file_list(path: str | Path) -> list[str]:
    """Shard names from `file_list.txt` (the first line is a header)."""
    lines = Path(path).read_text().splitlines()[1:]
    return [ln.split("\t")[0].strip() for ln in lines if ln.strip()]


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
