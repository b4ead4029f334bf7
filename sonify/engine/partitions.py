"""Cut a work list into partitions named by their inputs.

A partition's name is a hash of the stage fingerprint (name, version, output-relevant config) and
the ids it holds, so a re-run with the same inputs finds the same names and skips finished ones,
and a change of inputs or config gives new names (the old files are then stale and removed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Partition:
    name: str
    rows: pa.Table


def partition_name(prefix: str, ids: list[str]) -> str:
    """'part-' + 16 hex digits of sha1(prefix, ids): the same inputs always give the same name."""
    h = hashlib.sha1(prefix.encode())
    for i in ids:
        h.update(b"\x00" + i.encode())
    return f"part-{h.hexdigest()[:16]}"


def dedupe_sorted(work: pa.Table, id_column: str = "id") -> tuple[pa.Table, int]:
    """Sort by id and keep the first row of each id; returns the table and how many rows were dropped."""
    work = work.take(pc.sort_indices(work, sort_keys=[(id_column, "ascending")]))
    ids = work.column(id_column).to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    if len(keep) == len(ids):
        return work, 0
    return work.take(pa.array(keep, pa.int64())), len(ids) - len(keep)


def plan_partitions(work: pa.Table, partition_rows: int, fingerprint: str, id_column: str = "id") -> list[Partition]:
    """`work` must be sorted and unique by id (see `dedupe_sorted`)."""
    if partition_rows < 1:
        raise ValueError("partition_rows must be >= 1")
    parts = []
    for start in range(0, work.num_rows, partition_rows):
        rows = work.slice(start, partition_rows)
        parts.append(Partition(name=partition_name(fingerprint, rows.column(id_column).to_pylist()), rows=rows))
    return parts


def plan_groups(work: pa.Table, group_column: str, fingerprint: str, id_column: str = "id") -> list[Partition]:
    """One partition per value of `group_column` (e.g. one per output shard), rows in id order."""
    parts = []
    groups = work.column(group_column).to_pylist()
    ids = work.column(id_column).to_pylist()
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for g in sorted(by_group):
        rows = work.take(pa.array(by_group[g], pa.int64()))
        parts.append(Partition(name=partition_name(f"{fingerprint}\x00{g}", [ids[j] for j in by_group[g]]), rows=rows))
    return parts


def table_to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
