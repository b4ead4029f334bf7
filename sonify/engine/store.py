"""Reading and writing tables: one directory of Parquet partitions per table.

A partition appears atomically (`engine.files.atomic_write`), so a reader or a re-run never sees
half a file, and a finished partition file doubles as its completion marker. `open_run` is the one way
a reader (query, evaluation, the app, report, export, bench, studies) opens a run's tables in DuckDB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from sonify.engine.errors import MissingTable, SchemaError
from sonify.engine.files import TMP_PREFIX, atomic_write, clean_temp_files
from sonify.engine.schemas import TABLES, TableSpec, table_spec

DEFAULT_MEMORY = "1GB"   # `run.plan_memory`'s default, for a run folder without a saved config


def rows_to_table(name: str, rows: list[dict]) -> pa.Table:
    """Python rows to a table of the declared schema (keys missing from a row become nulls)."""
    return pa.Table.from_pylist(rows, schema=table_spec(name).schema)


def conform(table: pa.Table, spec: TableSpec) -> pa.Table:
    """Order and cast columns to the declared schema; missing nullable columns become nulls."""
    cols, fields = [], []
    for field in spec.schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if (pa.types.is_list(field.type) and pa.types.is_fixed_size_list(col.type)
                    and col.type.value_type == field.type.value_type):
                cols.append(col)  # fixed-size embeddings keep their width
                fields.append(field.with_type(col.type))
                continue
            try:
                cols.append(col.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:   # a stage's bug, not the data's
                raise SchemaError(f"table {spec.name}: column {field.name!r} is {col.type}, not {field.type}: {e}") from None
        elif field.nullable:
            cols.append(pa.nulls(table.num_rows, field.type))
        else:
            raise SchemaError(f"table {spec.name}: column {field.name!r} is required but missing")
        fields.append(field)
    extra = set(table.column_names) - set(spec.schema.names)
    if extra:
        raise SchemaError(f"table {spec.name}: columns not in the schema: {sorted(extra)}")
    return pa.Table.from_arrays(cols, schema=pa.schema(fields, metadata=spec.schema.metadata))


def check_schema(path: Path, spec: TableSpec) -> None:
    meta = pq.read_schema(path).metadata or {}
    name = meta.get(b"sonify.table", b"?").decode()
    version = meta.get(b"sonify.schema_version", b"?").decode()
    if name != spec.name or version != str(spec.version):
        raise SchemaError(
            f"{path}: holds table {name!r} schema v{version}, code expects {spec.name!r} v{spec.version}; "
            f"re-run the stage with force=true or use a matching sonify version"
        )


class TableStore:
    """The tables of one run: ``<run_dir>/manifests/<table>/<partition>.parquet``."""

    def __init__(self, run_dir: str | os.PathLike, memory_limit: str | None = None):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "manifests"
        # of the DuckDB connections work lists and readers run on: `run.plan_memory`, the run's saved one when not given
        self.memory_limit = memory_limit

    def table_dir(self, name: str) -> Path:
        return self.root / name

    def files(self, name: str) -> list[Path]:
        d = self.table_dir(name)
        if not d.is_dir():
            return []
        return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))

    def partitions(self, name: str) -> set[str]:
        return {p.stem for p in self.files(name)}

    def exists(self, name: str) -> bool:
        return bool(self.files(name))

    def table_names(self) -> list[str]:
        """Every table folder of the run that holds a partition, by name."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and self.files(d.name))

    def write_partition(self, name: str, partition: str, table: pa.Table) -> Path:
        spec = table_spec(name)
        table = conform(table, spec)
        d = self.table_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        return atomic_write(d / f"{partition}.parquet", lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    def remove_partitions(self, name: str, partitions: set[str]) -> None:
        for part in partitions:
            (self.table_dir(name) / f"{part}.parquet").unlink(missing_ok=True)

    def clean_temp_files(self, name: str) -> int:
        """Remove temp files left by a killed writer; returns how many."""
        return clean_temp_files(self.table_dir(name))

    def missing(self, name: str) -> MissingTable:
        """The one wording for a table of this run that has no partitions yet."""
        return MissingTable(f"table {name!r} has no partitions under {self.table_dir(name)}; run its stage first", name)

    def checked_files(self, name: str) -> list[Path]:
        """The table's files, each holding the schema version this code expects (else a one-line SchemaError)."""
        spec = table_spec(name)
        files = self.files(name)
        if not files:
            raise self.missing(name)
        for f in files:
            check_schema(f, spec)
        return files

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        parts = [pq.read_table(f, columns=columns) for f in self.checked_files(name)]
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def connect(self, *tables: str, **aliases: str):
        """A DuckDB connection with a view over each table's files, named as the table (or `alias=table`):
        work lists are queries that stream from disk and never hold a table in Python."""
        from sonify.engine.partitions import planner_connection

        plan = self.run_dir / "plan"   # exists while a stage runs (the executor makes and removes it)
        con = planner_connection(self.memory_limit or saved_plan_memory(self.run_dir), plan / "spill" if plan.is_dir() else None)
        for view, table in [(t, t) for t in tables] + list(aliases.items()):
            self.view(con, table, alias=view)
        return con

    def view(self, con, name: str, columns: list[str] | None = None, alias: str | None = None) -> None:
        """Expose a table to DuckDB connection `con` as a view over its Parquet files (a folder this
        version does not declare, e.g. a newer sonify's table, is shown as it is, unchecked)."""
        files = self.checked_files(name) if name in TABLES or not self.files(name) else self.files(name)
        cols = ", ".join('"' + c + '"' for c in columns) if columns else "*"
        listed = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
        con.execute(f"CREATE OR REPLACE VIEW \"{alias or name}\" AS SELECT {cols} FROM read_parquet({listed}, union_by_name = true)")

    def iter_batches(self, name: str, batch_size: int = 65536, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a table batch by batch: memory is bounded by the batch, not the table."""
        spec = table_spec(name)
        for f in self.files(name):
            check_schema(f, spec)
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def saved_plan_memory(run_dir: str | os.PathLike) -> str:
    """The `run.plan_memory` the run was made with (its saved `config.yaml`), else the default."""
    cfg = Path(run_dir) / "config.yaml"
    if not cfg.is_file():
        return DEFAULT_MEMORY
    from omegaconf import OmegaConf

    return str(OmegaConf.select(OmegaConf.load(cfg), "run.plan_memory", default=DEFAULT_MEMORY))


def open_run(run_dir: str | os.PathLike, *tables: str, optional: tuple[str, ...] = (), memory_limit: str | None = None):
    """A DuckDB connection over a run's tables, each a view named as the table (schemas checked first):
    `tables` (each must exist, else a one-line MissingTable), the `optional` ones that exist, or with
    neither, every table the run holds. Memory is bounded by `memory_limit`, else the run's saved
    `run.plan_memory`. The one way every reader opens a run: the same views for all."""
    store = TableStore(run_dir, memory_limit)
    if not store.root.is_dir():
        raise MissingTable(f"no tables under {store.root}: not a run folder, or no stage has run there yet", "")
    names = [*tables, *(t for t in optional if store.exists(t))] if tables or optional else store.table_names()
    con = store.connect(*names)
    con.execute("SET preserve_insertion_order = true")   # a reader's plain SELECT shows rows as stored
    return con
