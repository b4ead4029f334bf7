"""Sources turn a local copy of a corpus into a work list (a pyarrow table with an `id` column).

Listing is cheap (paths and headers only); decoding happens in the stages, so a bad file becomes
an error row there. A source that cannot be listed at all (missing folder, unreadable tar) becomes
one row whose `list_error` says why.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

from sonify.engine.errors import error_text

READ_BLOCK = 1 << 20


class NotAFile(OSError):
    """A path that is not a regular file (a FIFO, a socket, a device, a folder): never read from it."""


def _not_regular(path, mode: int) -> str:
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{path} is {kind}; only regular files are read"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` must not be opened for reading (an error text `not_a_file: ...`), or None.

    A missing path is None here: the reader's own `not_found` says it. `stat` follows links, so a
    link to a regular file is a regular file.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else error_text("not_a_file", _not_regular(path, mode))


def outside_problem(path: Path, real_root: Path, source_name: str) -> str | None:
    """An `outside_root: ...` error text when `path` (a link, or under one) resolves outside `real_root`."""
    real = Path(os.path.realpath(path))
    if real.is_relative_to(real_root):
        return None
    return error_text("outside_root", f"{path} resolves to {real}, outside the source root {real_root} "
                                      f"(follow_outside_links: true on source {source_name!r} follows such links)")


def walk_files(root: Path, extensions: Iterable[str], recursive: bool = True, follow_outside_links: bool = False,
               source_name: str = "") -> Iterator[tuple[Path, str | None]]:
    """Entries under `root` named with one of `extensions` (case-insensitive), sorted, each with why it
    cannot be read (None: a regular file to read).

    Folders named like media files and FIFOs, sockets or devices come back with `not_a_file`; links that
    resolve outside the root with `outside_root` (links to folders outside are then not entered), unless
    `follow_outside_links`. A linked folder inside the root is not entered: its files are listed where they are.
    """
    exts = {e.lower() for e in extensions}
    real_root = Path(os.path.realpath(root))
    seen = {real_root}

    def entries(folder: Path) -> Iterator[tuple[Path, str | None]]:
        try:
            with os.scandir(folder) as it:
                listed = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield folder, error_text("unreadable", f"cannot list {folder}: {e.strerror or e}")
            return
        for e in listed:
            p = Path(e.path)
            is_link, is_dir = e.is_symlink(), e.is_dir()
            named = os.path.splitext(e.name)[1].lower() in exts
            # folders entered below are real folders inside the root, so only a link can lead outside
            outside = outside_problem(p, real_root, source_name) if is_link and not follow_outside_links else None
            if outside:
                if named or is_dir:
                    yield p, outside
                continue
            if named:
                yield p, None if e.is_file() else file_problem(p)
            if is_dir and recursive:
                real = Path(os.path.realpath(p)) if is_link else p
                if is_link and (real.is_relative_to(real_root) or real in seen):
                    continue  # listed where it really is (or a loop)
                seen.add(real)
                yield from entries(p)

    yield from entries(root)


def read_within(f, timeout_s: float, nbytes: int | None = None) -> bytes:
    """Read `f` to its end (or `nbytes`) in blocks; TimeoutError when the whole read takes over `timeout_s`.

    One block's read is bounded by the socket timeout (URLs) or is a local read; the deadline bounds
    the total, so a server that drips bytes, or a stalled network mount, cannot hold a worker forever.
    """
    deadline = time.monotonic() + timeout_s
    read = getattr(f, "read1", f.read)  # read1: whatever one underlying read gives, so a drip cannot fill a block slowly
    parts, got = [], 0
    while nbytes is None or got < nbytes:
        block = read(READ_BLOCK if nbytes is None else min(READ_BLOCK, nbytes - got))
        if not block:
            break
        parts.append(block)
        got += len(block)
        if time.monotonic() > deadline:
            raise TimeoutError(f"read not finished after {timeout_s:g} s ({got} bytes)")
    return b"".join(parts)


def read_regular_file(path: str | os.PathLike, timeout_s: float, offset: int = 0, nbytes: int | None = None) -> bytes:
    """The bytes of a regular file (from `offset`, `nbytes` of them), read within `timeout_s`.

    Opened without blocking and checked on the open descriptor, so a FIFO (or a file swapped for one
    after listing) raises `NotAFile` instead of waiting for a writer forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFile(_not_regular(path, mode))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            if offset:
                f.seek(offset)
            return read_within(f, timeout_s, nbytes)
    finally:
        os.close(fd)


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
