"""Sources turn a local copy of a corpus into a work list (a pyarrow table with an `id` column).

Listing is cheap (paths and headers only); decoding happens in the stages, so a bad file becomes
an error row there. A source that cannot be listed at all (missing folder, unreadable tar) becomes
one row whose `list_error` says why.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

from sonify.engine.errors import error_text

READ_BLOCK = 1 << 20
log = logging.getLogger(__name__)


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


_TREE = object()   # in place of a reason: a sub-folder left for a listing process to walk


def _entries(folder: Path, exts: set[str], real_root: Path, seen: set[Path], recursive: bool, follow_outside_links: bool,
             source_name: str, defer_subfolders: bool = False) -> Iterator[tuple[Path, str | None]]:
    """`walk_files` of one folder; a sub-folder to enter is walked here, or (`defer_subfolders`) yielded
    with `_TREE` for its reason."""
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
            if defer_subfolders:
                yield p, _TREE
            else:
                yield from _entries(p, exts, real_root, seen, recursive, follow_outside_links, source_name)


def _subtree(folder: str, exts: set[str], real_root: str, source_name: str) -> list[tuple[str, str | None]]:
    """Everything `walk_files` lists under one sub-folder of the root, in a listing process."""
    root = Path(real_root)
    return [(str(p), problem) for p, problem in _entries(Path(folder), exts, root, {root}, True, False, source_name)]


def walk_files(root: Path, extensions: Iterable[str], recursive: bool = True, follow_outside_links: bool = False,
               source_name: str = "", workers: int = 1) -> Iterator[tuple[Path, str | None]]:
    """Entries under `root` named with one of `extensions` (case-insensitive), sorted, each with why it
    cannot be read (None: a regular file to read).

    Folders named like media files and FIFOs, sockets or devices come back with `not_a_file`; links that
    resolve outside the root with `outside_root` (links to folders outside are then not entered), unless
    `follow_outside_links`. A linked folder inside the root is not entered: its files are listed where they are.
    With `workers` other than 1 (0: one per core), the root's sub-folders are walked by that many
    processes and merged back in the same order (a big folder of folders; not with outside links followed,
    whose loops are found across the whole walk).
    """
    exts = {e.lower() for e in extensions}
    real_root = Path(os.path.realpath(root))
    if workers == 1 or not recursive or follow_outside_links:
        yield from _entries(Path(root), exts, real_root, {real_root}, recursive, follow_outside_links, source_name)
        return
    from functools import partial

    from sonify.engine.processes import process_map

    top = list(_entries(Path(root), exts, real_root, {real_root}, True, False, source_name, defer_subfolders=True))
    trees = [str(p) for p, problem in top if problem is _TREE]
    listed, cpu = process_map(partial(_subtree, exts=exts, real_root=str(real_root), source_name=source_name), trees, workers)
    log.debug("%s: %d sub-folders walked by %d processes", root, len(trees), len(cpu), extra={"cpu_by_pid": cpu})
    below = iter(listed)
    for p, problem in top:
        if problem is _TREE:
            yield from ((Path(q), why) for q, why in next(below))
        else:
            yield p, problem


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


LIST_KINDS = ("parquet", "csv")


def source_root(source) -> str:
    """The declared root of a source (a `SourceConf`): the folder its stored paths are relative to.

    A folder source: its `path`. A tar source: its `path`, or the folder of a single tar file. A CSV or
    Parquet list: its `root`, by default the list file's folder (where relative entries point). A recipe:
    its `root`. The one home of the rule that `SourcePaths.resolve` and every listing use.
    """
    if source.kind == "recipe":
        return str(source.root)
    if source.kind in LIST_KINDS:
        return str(source.root) if source.root else os.path.dirname(str(source.path))
    if source.kind == "tar" and os.path.isfile(source.path):
        return os.path.dirname(str(source.path))
    return str(source.path)


def stored_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """What tables store for a local path: relative to `root` (posix, normalised, '.' for the root itself),
    so the same tables work from any cwd, on every node and on another machine."""
    return Path(os.path.relpath(os.path.normpath(path), os.path.normpath(root))).as_posix()


def list_entry(entry: str, list_file: str | os.PathLike, root: str | os.PathLike) -> str:
    """What tables store for an entry of a list source: a relative entry (relative to the list file's
    folder) or an absolute one, made relative to the declared `root`; URLs as given (`file://` entries
    are paths). An entry outside the root keeps its normalised path as its key, and is an error row
    (`list_entries`' problem)."""
    return list_entries([entry], list_file, root)[0][0]


def list_entries(entries: list[str], list_file: str | os.PathLike, root: str | os.PathLike,
                 source_name: str = "") -> tuple[list[str], list[str | None]]:
    """`list_entry` of every entry, and for each why it cannot be used (None: it can), with string
    operations only: a list source can name a million files.

    Every release rebuilds: a local entry outside the root (absolute, or `..` past it) could only be
    stored as a path that `sonify.mix` refuses, so it is decided here, at listing time, as an
    `outside_root` error naming the `root` setting, never at rebuild."""
    folder, root = os.path.dirname(str(list_file)), os.path.normpath(str(root))
    prefix = root.rstrip("/") + "/"
    out, problems = [], []
    for entry in entries:
        problem = None
        if entry.startswith("file://"):
            entry = entry[len("file://"):]
        elif "://" in entry:
            out.append(entry)
            problems.append(None)
            continue
        path = os.path.normpath(os.path.join(folder, entry))
        if path.startswith(prefix):
            out.append(path[len(prefix):])
        elif path == root:
            out.append(".")
        else:
            out.append(path if os.path.isabs(entry) else stored_path(path, root))   # its key; never read
            problem = error_text("outside_root", f"{entry} is outside the root {root} of list source {source_name!r}: set "
                                                 f"root: on that source to a folder holding every entry (root: / for any "
                                                 f"absolute path); stored paths are relative to it, so releases rebuild")
        problems.append(problem)
    return out, problems


def file_stamp(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of a listed local file (a tar member: of its tar), or (None, None) when it cannot be
    stat'ed (the stage says why). Both are part of the file's work-list row: a file replaced under the same
    name (a new size or a new modification time) is new work, so it is read again; its content digest then
    decides whether anything downstream recomputes. A copy that keeps size and time (`cp -p`, `rsync -t` of
    different bytes) is not seen: run the source's stage with `run.force=true` after such a copy."""
    try:
        st = os.stat(str(path).split("#", 1)[0])
    except (OSError, ValueError):
        return None, None
    return st.st_size, st.st_mtime_ns


def stamp_columns(paths: list[str | None]) -> dict:
    """`size` and `mtime_ns` columns (`file_stamp` of each path; None: not a local file)."""
    import pyarrow as pa

    stamps = [file_stamp(p) if p else (None, None) for p in paths]
    return {"size": pa.array([s for s, _ in stamps], pa.int64()), "mtime_ns": pa.array([m for _, m in stamps], pa.int64())}


class SourcePaths:
    """Resolves stored paths at read time: `resolve(source, uri)` is the source's declared root joined
    with the stored relative path (URLs and absolute paths pass as they are). Built from the sources of
    one role (`sources.images` or `sources.audio`) of the config in hand, so a moved corpus is found
    where the config says it is now."""

    def __init__(self, sources, role: str = "images"):
        self.role = role
        self.roots = {str(s.name): source_root(s) for s in sources}

    @classmethod
    def of(cls, cfg, role: str) -> "SourcePaths":
        return cls(cfg.sources[role], role)

    def resolve(self, source: str | None, uri: str) -> str:
        """The readable location of a stored `uri` of `source`; FileNotFoundError when the source is unknown."""
        if "://" in uri or os.path.isabs(uri):
            return uri
        root = self.roots.get(source)
        if root is None:
            raise FileNotFoundError(f"{uri}: source {source!r} is not in sources.{self.role} "
                                    f"(configured: {', '.join(self.roots) or 'none'})")
        return os.path.join(root, uri)

    def locate(self, row: dict) -> str:
        """`resolve` of a row with `source` and `uri` columns."""
        return self.resolve(row.get("source"), row["uri"])


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
