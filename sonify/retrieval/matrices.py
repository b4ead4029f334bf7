"""Embedding tables as one contiguous matrix file each, for retrieval.

`<run>/matrices/<table>.npy` (float16, N x D, rows sorted by id), `<table>.ids.parquet` (id, row)
and `<table>.json` (the partitions it was built from). Built by streaming the table's partitions
into a memory-mapped file, so memory is bounded by one partition; rebuilt when the partitions change.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sonify.engine.files import atomic_path, atomic_write
from sonify.engine.store import TableStore


def matrix_paths(store: TableStore, table: str) -> tuple[Path, Path, Path]:
    d = store.run_dir / "matrices"
    return d / f"{table}.npy", d / f"{table}.ids.parquet", d / f"{table}.json"


def build_matrix(store: TableStore, table: str, column: str = "embedding") -> Path:
    npy, ids_path, meta_path = matrix_paths(store, table)
    files = store.files(table)
    parts = sorted(f.stem for f in files)
    if meta_path.exists() and npy.exists() and json.loads(meta_path.read_text()).get("partitions") == parts:
        return npy
    ids = []
    for f in files:
        t = pq.read_table(f, columns=["id", "status"])
        ids.append(t.filter(pc.equal(t.column("status"), "ok")).column("id"))
    all_ids = pa.chunked_array([c for a in ids for c in a.chunks], pa.string()) if ids else pa.chunked_array([], pa.string())
    order = pc.sort_indices(all_ids)
    sorted_ids = all_ids.take(order)
    row_of = {i: r for r, i in enumerate(sorted_ids.to_pylist())}
    # the width is in the schema of any partition that holds vectors (a fixed-size list); no data read for it
    widths = (pq.read_schema(f).field(column).type for f in files)
    dim = next((t.list_size for t in widths if pa.types.is_fixed_size_list(t)), None)
    with atomic_path(npy) as tmp:
        mat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(row_of), dim or 0))
        for f in files:
            t = pq.read_table(f, columns=["id", column, "status"])
            t = t.filter(pc.equal(t.column("status"), "ok"))
            if not t.num_rows:
                continue
            flat = t.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            rows = np.fromiter((row_of[i] for i in t.column("id").to_pylist()), dtype=np.int64, count=t.num_rows)
            mat[rows] = flat.reshape(t.num_rows, dim).astype(np.float16)
        mat.flush()
        del mat
    ids = pa.table({"id": sorted_ids, "row": pa.array(np.arange(len(row_of)), pa.int64())})
    atomic_write(ids_path, lambda tmp: pq.write_table(ids, tmp))
    atomic_write(meta_path, json.dumps({"table": table, "rows": len(row_of), "dim": dim, "partitions": parts}))
    return npy


def load_matrix(store: TableStore, table: str, mmap: bool = True) -> tuple[np.ndarray, list[str]]:
    npy, ids_path, _ = matrix_paths(store, table)
    if not npy.exists():
        raise FileNotFoundError(f"{npy} missing: run the stage that writes {table} first")
    return np.load(npy, mmap_mode="r" if mmap else None), pq.read_table(ids_path).column("id").to_pylist()
