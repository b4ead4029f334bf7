"""Sources turn a local copy of a corpus into a work list (a pyarrow table with an `id` column).

Listing is cheap (paths and headers only); decoding happens in the stages, so a bad file becomes
an error row there. A source that cannot be listed at all (missing folder, unreadable tar) becomes
one row whose `list_error` says why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator


def walk_files(root: Path, extensions: Iterable[str], recursive: bool = True) -> Iterator[Path]:
    """Files under `root` with one of `extensions` (case-insensitive), in sorted order."""
    exts = {e.lower() for e in extensions}
    if not recursive:
        for p in sorted(root.iterdir()):
            if p.is_file() and p.suffix.lower() in exts:
                yield p
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in exts:
                yield Path(dirpath) / name


def resolve_list_path(uri: str, list_file: Path) -> str:
    """Relative paths in a list file are relative to the list file's folder; URLs pass through."""
    if "://" in uri:
        return uri[len("file://"):] if uri.startswith("file://") else uri
    p = Path(uri)
    return str(p if p.is_absolute() else (list_file.parent / p))


def list_sources(sources, lister, extensions, role: str):
    """One work list over every configured source of a role (`images` or `audio`)."""
    import pyarrow as pa

    tables = [lister(src, list(extensions)) for src in sources]
    if not tables:
        raise ValueError(f"no {role} sources configured (sources.{role} is empty)")
    return pa.concat_tables(tables)


def read_list_file(path: Path, kind: str):
    """A CSV or Parquet list as a pyarrow table."""
    if kind == "parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path)
    import pyarrow.csv as pacsv
    return pacsv.read_csv(path)
