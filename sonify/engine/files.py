"""The one atomic write: a hidden temp file beside the target, then `os.replace`.

Readers and re-runs never see half a file, and a finished file doubles as its completion marker.
Temp files start with `TMP_PREFIX`, so a killed writer's leftovers are recognisable and cleaned.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_PREFIX = ".tmp-"


def temp_path(path: Path) -> Path:
    """A unique hidden sibling of `path` (unique per writer, so concurrent writers never share one)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temp path to write to (a file or a folder); on success it replaces `path`, on error it is removed.

    With `replace=False` an existing `path` wins (concurrent builders of the same thing: the first stays).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            if not replace:
                return
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str | memoryview | Callable[[Path], object]) -> Path:
    """Write bytes or text, or let `data(tmp_path)` write the file, atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create the folder if needed and prove it writable by writing a temp file (permission bits lie to root
    and on read-only mounts); raises OSError (NotADirectoryError when a file is in the way)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(path))
    path.mkdir(parents=True, exist_ok=True)
    probe = temp_path(path / "write-probe")
    probe.write_bytes(b"")
    probe.unlink()
    return path


def save_npy(path: str | os.PathLike, array) -> str:
    """`np.save` atomically; returns the sha256 of the file's bytes (what downstream content hashes use)."""
    import hashlib
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getbuffer()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def clean_temp_files(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Remove temp files (and folders) left by a killed writer; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = list(folder.rglob(f"{TMP_PREFIX}*") if recursive else folder.glob(f"{TMP_PREFIX}*"))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)
