"""Audio sources: a folder (labels empty), or a CSV/Parquet list with paths and labels."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sonify.engine.ids import stable_id
from sonify.sources import file_stamp, list_entries, read_list_file, source_root, stamp_columns, stored_path, walk_files

LISTING_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("uri", pa.string()),
    ("labels", pa.list_(pa.string())), ("list_error", pa.string()),
    ("size", pa.int64()), ("mtime_ns", pa.int64()),   # of the file: a change re-reads it (`sonify.sources.file_stamp`)
])


def _labels(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [s.strip() for s in str(value).replace(",", ";").split(";") if s.strip()]


def list_audio(source, extensions: list[str]) -> pa.Table:
    """The work list of one audio source (a `SourceConf`); paths are stored relative to its declared root."""
    root, base = Path(source.path), source_root(source)
    rows: list[dict] = []

    def add(rel: str, labels=None, list_error=None, stamp=(None, None)):
        rows.append({"id": stable_id(source.name, rel), "source": source.name, "uri": rel,
                     "labels": _labels(labels), "list_error": list_error, "size": stamp[0], "mtime_ns": stamp[1]})

    if source.kind == "recipe":
        from sonify.sources.recipes import recipe_listing
        for r in recipe_listing(source):
            add(r["relpath"], r["labels"], r["list_error"], file_stamp(Path(base) / r["relpath"]))
    elif not root.exists():
        add(".", list_error=f"not_found: source path {root} does not exist")
    elif source.kind == "folder":
        for p, problem in walk_files(root, extensions, source.recursive, source.follow_outside_links, source.name,
                                     source.list_workers):
            add(stored_path(p, base), list_error=problem, stamp=file_stamp(p))
    else:
        table = read_list_file(root, source.kind)
        if source.uri_column not in table.column_names:
            raise ValueError(f"{root}: no column {source.uri_column!r} (set sources.audio[].uri_column); columns: {table.column_names}")
        uris = table.column(source.uri_column).to_pylist()
        labels = (table.column(source.labels_column).to_pylist()
                  if source.labels_column in table.column_names else [None] * len(uris))
        kept = [(u, lab) for u, lab in zip(uris, labels) if u is not None]
        rels, problems = list_entries([u for u, _ in kept], root, base, source.name)
        name, n = str(source.name), len(rels)   # built column by column: a list can name a million clips
        return pa.table({"id": [stable_id(name, r) for r in rels], "source": [name] * n, "uri": rels,
                         "labels": [_labels(lab) for _, lab in kept], "list_error": pa.array(problems, pa.string()),
                         **stamp_columns([None if "://" in r or bad else str(Path(base) / r) for r, bad in zip(rels, problems)])},
                        schema=LISTING_SCHEMA)
    return pa.Table.from_pylist(rows, schema=LISTING_SCHEMA)
