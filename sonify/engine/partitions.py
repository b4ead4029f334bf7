"""Plan a stage's partitions so that finished work is kept and only new or changed rows are computed.

A partition's name hashes the stage's fingerprint (its lineage: config, models, prompt files,
versions, and every upstream stage's lineage) together with the content of the work-list rows it
holds. Planning first keeps every finished partition whose rows are all still in the work list with
the same content; only the rows left over are grouped into new partitions. So adding N inputs
creates work proportional to N wherever the new ids fall, a changed row recomputes only its own
partition, and a config change (a new fingerprint) recomputes everything that depends on it.
Which rows share a file may depend on the order data arrived; what a table holds does not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Partition:
    name: str
    rows: pa.Table


def row_digests(work: pa.Table, columns: list[str]) -> list[str]:
    """A digest per row of the values that determine its output (ids and upstream content, not locations)."""
    cols = [c for c in columns if c in work.column_names]
    out = []
    for batch in work.select(cols).to_batches(max_chunksize=8192):
        for row in batch.to_pylist():
            text = json.dumps([row[c] for c in cols], sort_keys=True, default=str, separators=(",", ":"))
            out.append(hashlib.sha1(text.encode()).hexdigest())
    return out


def partition_name(fingerprint: str, ids: list[str], digests: list[str]) -> str:
    """'part-' + 16 hex digits of sha1(fingerprint, (id, digest) pairs in id order)."""
    h = hashlib.sha1(fingerprint.encode())
    for i, d in sorted(zip(ids, digests)):
        h.update(b"\x00" + i.encode() + b"\x01" + d.encode())
    return f"part-{h.hexdigest()[:16]}"


def dedupe_sorted(work: pa.Table, id_column: str = "id") -> tuple[pa.Table, int]:
    """Sort by id and keep the first row of each id; returns the table and how many rows were dropped."""
    work = work.take(pc.sort_indices(work, sort_keys=[(id_column, "ascending")]))
    ids = work.column(id_column).to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    if len(keep) == len(ids):
        return work, 0
    return work.take(pa.array(keep, pa.int64())), len(ids) - len(keep)


def plan(work: pa.Table, fingerprint: str, existing: dict[str, list[str]], partition_rows: int,
         content_columns: list[str] | None = None, group_column: str | None = None,
         split_column: str | None = None, together_column: str | None = None) -> list[Partition]:
    """Every partition the stage's outputs should hold, in id order, for `work` (sorted and unique by id;
    see `dedupe_sorted`). Partitions on disk that are not among them are stale.

    `existing` maps each partition already on disk to the ids it holds. A finished partition is kept
    when recomputing its name from the current rows of its ids gives the same name. The remaining rows
    are cut every `partition_rows` rows in id order, or, with `group_column`, one partition per value;
    with `split_column`, rows of different values never share a partition (they run in separate passes);
    with `together_column`, rows of equal values are never cut apart (they must sort next to each other).
    """
    if partition_rows < 1:
        raise ValueError("partition_rows must be >= 1")
    ids = work.column("id").to_pylist()
    digests = row_digests(work, content_columns or work.column_names)
    position = {i: n for n, i in enumerate(ids)}
    claimed: set[int] = set()
    kept: dict[str, list[int]] = {}
    for name in sorted(existing):
        members = existing[name]
        rows = [position.get(i) for i in members]
        if not members or None in rows or claimed.intersection(rows):
            continue
        if partition_name(fingerprint, members, [digests[r] for r in rows]) == name:
            kept[name] = rows
            claimed.update(rows)
    partitions = [Partition(name, work.take(pa.array(rows, pa.int64()))) for name, rows in kept.items()]
    rest = [n for n in range(len(ids)) if n not in claimed]
    if group_column:
        groups: dict[str, list[int]] = {}
        for n, g in zip(rest, work.column(group_column).take(pa.array(rest, pa.int64())).to_pylist() if rest else []):
            groups.setdefault(g, []).append(n)
        chunks = [groups[g] for g in sorted(groups)]
    else:
        lanes: dict[object, list[int]] = {}
        values = work.column(split_column).to_pylist() if split_column else None
        for n in rest:
            lanes.setdefault(values[n] if values else None, []).append(n)
        together = work.column(together_column).to_pylist() if together_column else None
        chunks = [c for lane in lanes.values() for c in _cut(lane, partition_rows, together)]
    for chunk in chunks:
        name = partition_name(fingerprint, [ids[n] for n in chunk], [digests[n] for n in chunk])
        partitions.append(Partition(name, work.take(pa.array(chunk, pa.int64()))))
    partitions.sort(key=lambda p: p.rows.column("id")[0].as_py())   # processed in id order
    return partitions


def _cut(rows: list[int], size: int, together: list | None) -> list[list[int]]:
    """Runs of `size` rows; with `together`, a run ends only where the value changes."""
    if together is None:
        return [rows[s:s + size] for s in range(0, len(rows), size)]
    chunks, current = [], []
    for n in rows:
        if len(current) >= size and together[n] != together[current[-1]]:
            chunks.append(current)
            current = []
        current.append(n)
    return chunks + ([current] if current else [])


def table_to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
