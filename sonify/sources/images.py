"""Image sources: a folder, tar/WebDataset shards (SA-1B ships tars of JPEG + JSON), a list of URIs."""

from __future__ import annotations

import logging
import tarfile
import urllib.request
from functools import partial
from pathlib import Path

import pyarrow as pa

from sonify.engine.ids import stable_id
from sonify.sources import (file_stamp, list_entries, read_list_file, read_regular_file, read_within, source_root,
                            stamp_columns, stored_path, walk_files)
from sonify.engine.processes import process_map

log = logging.getLogger(__name__)

LISTING_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("uri", pa.string()),
    ("tar_offset", pa.int64()), ("nbytes", pa.int64()), ("list_error", pa.string()),
    ("size", pa.int64()), ("mtime_ns", pa.int64()),   # of the file (a member's tar): a change re-reads it (`file_stamp`)
])


def _row(source: str, rel: str, tar_offset=None, nbytes=None, list_error=None, stamp=(None, None)) -> dict:
    """A listed image: `rel` (relative to the source's declared root) is its id key and where it is read from."""
    return {"id": stable_id(source, rel), "source": source, "uri": rel,
            "tar_offset": tar_offset, "nbytes": nbytes, "list_error": list_error, "size": stamp[0], "mtime_ns": stamp[1]}


def _list_tar(source: str, tar_path: Path, base: str, exts: set[str]) -> list[dict]:
    rel_tar = stored_path(tar_path, base)
    rows, stamp = [], file_stamp(tar_path)   # a rewritten tar re-reads its members (their offsets are in the row too)
    try:
        with tarfile.open(tar_path, "r:") as tf:  # uncompressed only: members are read by offset
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in exts:
                    rows.append(_row(source, f"{rel_tar}#{m.name}", m.offset_data, m.size, stamp=stamp))
    except (tarfile.TarError, OSError, EOFError) as e:
        rows.append(_row(source, rel_tar, list_error=f"unreadable_tar: {type(e).__name__}: {e}"))
    return rows


def list_images(source, extensions: list[str]) -> pa.Table:
    """The work list of one image source (a `SourceConf`); paths are stored relative to its declared root."""
    root, base = Path(source.path), source_root(source)
    exts = {e.lower() for e in extensions}
    rows: list[dict] = []
    if source.kind == "recipe":
        from sonify.sources.recipes import recipe_listing
        for r in recipe_listing(source):
            rows.append(_row(source.name, r["relpath"], r["tar_offset"], r["nbytes"], r["list_error"],
                             file_stamp(Path(base) / r["relpath"])))
    elif not root.exists():
        rows.append(_row(source.name, ".", list_error=f"not_found: source path {root} does not exist"))
    elif source.kind == "folder":
        for p, problem in walk_files(root, exts, source.recursive, source.follow_outside_links, source.name, source.list_workers):
            rows.append(_row(source.name, stored_path(p, base), list_error=problem, stamp=file_stamp(p)))
    elif source.kind == "tar":
        tars = [(root, None)] if root.is_file() else list(walk_files(root, [".tar"], source.recursive, source.follow_outside_links, source.name,
                                                                        source.list_workers))
        for t, problem in tars:
            if problem:
                rows.append(_row(source.name, stored_path(t, base), list_error=problem))
        good = [t for t, problem in tars if not problem]
        # SA-1B is 1,000 tars of ~11K images: their headers are parsed by several processes, in tar order
        listed, cpu = process_map(partial(_list_tar, str(source.name), base=base, exts=exts), good, source.list_workers)
        log.debug("source %s: %d tars listed by %d processes", source.name, len(good), len(cpu), extra={"cpu_by_pid": cpu})
        for part in listed:
            rows.extend(part)
    else:  # parquet | csv list of URIs
        table = read_list_file(root, source.kind)
        if source.uri_column not in table.column_names:
            raise ValueError(f"{root}: no column {source.uri_column!r} (set sources.images[].uri_column); columns: {table.column_names}")
        rels, problems = list_entries([u for u in table.column(source.uri_column).to_pylist() if u is not None], root, base,
                                      source.name)
        name, n = str(source.name), len(rels)   # built column by column: a list can name a million images
        return pa.table({"id": [stable_id(name, r) for r in rels], "source": [name] * n, "uri": rels,
                         "tar_offset": pa.nulls(n, pa.int64()), "nbytes": pa.nulls(n, pa.int64()),
                         "list_error": pa.array(problems, pa.string()),
                         **stamp_columns([None if "://" in r or bad else str(Path(base) / r) for r, bad in zip(rels, problems)])},
                        schema=LISTING_SCHEMA)
    return pa.Table.from_pylist(rows, schema=LISTING_SCHEMA)


def load_image(row: dict, paths, max_pixels: int, max_side: int | None = None):
    """The upright RGB image of a work row (source, uri, tar_offset, nbytes), bounded by `max_side`;
    its stored `uri` is resolved by `paths` (a `SourcePaths` of the image sources).

    Raises `ImageRejected` for every failure: the decoder's reason, or 'unreadable' when the bytes
    cannot be read (the file changed since ingest, a URL failed).
    """
    from sonify.media.image import ImageRejected, load_rgb

    try:
        return load_rgb(read_image_bytes(paths.locate(row), row["tar_offset"], row["nbytes"]), max_pixels, max_side)
    except ImageRejected:
        raise
    except Exception as e:
        raise ImageRejected("unreadable", f"{type(e).__name__}: {e}") from None


def read_image_bytes(uri: str, tar_offset: int | None, nbytes: int | None, timeout_s: float = 20.0) -> bytes:
    """The encoded bytes of an image, from a file, a tar member (by offset) or an http(s) URL.

    Every read finishes within `timeout_s` or raises TimeoutError; anything but a regular file raises
    `NotAFile` without being waited on (a FIFO named x.jpg would block a plain `open` forever).
    """
    if tar_offset is not None:
        data = read_regular_file(uri.split("#", 1)[0], timeout_s, tar_offset, nbytes)
        if len(data) != nbytes:
            raise EOFError(f"tar member truncated: wanted {nbytes} bytes, got {len(data)}")
        return data
    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(uri, timeout=timeout_s) as r:
            return read_within(r, timeout_s)
    return read_regular_file(uri, timeout_s)
