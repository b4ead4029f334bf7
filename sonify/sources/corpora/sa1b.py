"""SA-1B's shards: `sa_NNNNNN.tar`, each holding `sa_<id>.jpg` with its `sa_<id>.json` annotations.

Members are indexed from the tar headers only (no JSON is parsed), so listing 1,000 shards of ~10 GB
reads a few MB. `file_list.txt` (tab-separated `file_name  cdn_link`), when present, names the shards
the user meant to download.
"""

from __future__ import annotations

import tarfile
from pathlib import Path


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
