"""Embedding tables as one contiguous matrix file each, for retrieval.

`<run>/matrices/<table>.npy` (float16, N x D, rows sorted by id), `<table>.ids.parquet` (id, row)
and `<table>.json` (the partitions it was built from). Built by streaming the table's partitions
into a memory-mapped file, so memory is bounded by one partition; rebuilt when the partitions change.

The audio pool also gets `<table>.f32.npy`, the same rows as float32 (exactly: float16 -> float32 is
lossless), which retrieve workers map read-only (`load_pool`): the pages live once in the node's page
cache, shared by every worker that maps them, instead of one float32 copy per worker.
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


def pool_path(store: TableStore, table: str) -> Path:
    return store.run_dir / "matrices" / f"{table}.f32.npy"


def build_matrix(store: TableStore, table: str, column: str = "embedding", float32: bool = False) -> Path:
    """The float16 matrix of `table` (and with `float32`, its float32 copy for `load_pool`), rebuilt
    only when the table's partitions changed."""
    npy, ids_path, meta_path = matrix_paths(store, table)
    files = store.files(table)
    parts = sorted(f.stem for f in files)
    if meta_path.exists() and npy.exists() and json.loads(meta_path.read_text()).get("partitions") == parts:
        if float32:
            float32_matrix(store, table)
        return npy
    pool_path(store, table).unlink(missing_ok=True)     # a copy of the old rows must never pair with the new ones
    ids = []
    for f in files:
        t = pq.read_table(f, columns=["id", "status"])
        ids.append(t.filter(pc.equal(t.column("status"), "ok")).column("id"))
    all_ids = pa.chunked_array([c for a in ids for c in a.chunks], pa.string()) if ids else pa.chunked_array([], pa.string())
    order = pc.sort_indices(all_ids).to_numpy()
    sorted_ids = all_ids.take(order)
    # the k-th ok row read (files in order) goes to matrix row rank[k]: positions, never a dict of every id
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    # the width is in the schema of any partition that holds vectors (a fixed-size list); no data read for it
    widths = (pq.read_schema(f).field(column).type for f in files)
    dim = next((t.list_size for t in widths if pa.types.is_fixed_size_list(t)), None)
    with atomic_path(npy) as tmp:
        mat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(order), dim or 0))
        start = 0
        for f in files:
            t = pq.read_table(f, columns=[column, "status"])
            t = t.filter(pc.equal(t.column("status"), "ok"))
            if not t.num_rows:
                continue
            flat = t.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            mat[rank[start:start + t.num_rows]] = flat.reshape(t.num_rows, dim).astype(np.float16)
            start += t.num_rows
        mat.flush()
        del mat
    ids = pa.table({"id": sorted_ids, "row": pa.array(np.arange(len(order)), pa.int64())})
    atomic_write(ids_path, lambda tmp: pq.write_table(ids, tmp))
    atomic_write(meta_path, json.dumps({"table": table, "rows": len(order), "dim": dim, "partitions": parts}))
    if float32:
        float32_matrix(store, table)
    return npy


def float32_matrix(store: TableStore, table: str, block_rows: int = 65536) -> Path:
    """`<table>.f32.npy`: the float16 matrix widened to float32, written once in row blocks (bounded memory).

    Concurrent builders (workers of a run made before the copy existed) write the same bytes, each
    moved into place atomically, so a reader maps a whole file either way.
    """
    npy, f32 = matrix_paths(store, table)[0], pool_path(store, table)
    src = np.load(npy, mmap_mode="r")
    if f32.exists() and np.load(f32, mmap_mode="r").shape == src.shape:
        return f32
    with atomic_path(f32, replace=False) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=src.shape)
        for start in range(0, src.shape[0], block_rows):
            out[start:start + block_rows] = src[start:start + block_rows]
        out.flush()
        del out
    return f32


def load_pool(store: TableStore, table: str) -> tuple[np.ndarray, pa.Array]:
    """The matrix as float32, memory-mapped read-only, and its ids (an Arrow array: row n is `ids[n]`).

    Every process on a node that maps the file reads the same page-cache pages: N workers hold the
    pool once, not N times. No dict of ids: a worker turns the chosen rows into ids by position.
    """
    npy, ids_path, _ = matrix_paths(store, table)
    if not npy.exists():
        raise FileNotFoundError(f"{npy} missing: run the stage that writes {table} first")
    return (np.load(float32_matrix(store, table), mmap_mode="r"),
            pq.read_table(ids_path, columns=["id"]).column("id").combine_chunks())


def load_matrix(store: TableStore, table: str, mmap: bool = True) -> tuple[np.ndarray, list[str]]:
    npy, ids_path, _ = matrix_paths(store, table)
    if not npy.exists():
        raise FileNotFoundError(f"{npy} missing: run the stage that writes {table} first")
    return np.load(npy, mmap_mode="r" if mmap else None), pq.read_table(ids_path).column("id").to_pylist()
