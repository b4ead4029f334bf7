"""Query a run's tables with DuckDB: `python -m sonify.query [run=demo] "SELECT ..."`.

`run=` takes a run directory (`run=runs/demo`) or a pipeline name (`run=demo`: that pipeline's `run.dir`).

Every table under `<run>/manifests/` is a view of the same name. `--file manifests/x.sql` runs a
saved query; plain `duckdb` works too: `SELECT * FROM read_parquet('runs/demo/manifests/images/*.parquet')`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from sonify.engine.schemas import TABLES
from sonify.engine.store import TableStore


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table found in the run (schemas checked first)."""
    store = TableStore(run_dir)
    if not store.root.is_dir():
        raise SystemExit(f"sonify.query: no tables under {store.root}; run a stage first or pass run=<run dir>")
    con = duckdb.connect()
    for d in sorted(p for p in store.root.iterdir() if p.is_dir()):
        files = store.files(d.name)
        if not files:
            continue
        if d.name in TABLES:
            from sonify.engine.store import check_schema
            for f in files:
                check_schema(f, TABLES[d.name])
        pattern = str(d / "[!.]*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW \"{d.name}\" AS SELECT * FROM read_parquet('{pattern}')")
    return con


def resolve_run(arg: str) -> Path:
    from sonify.engine.config import resolve_run as run_dir_of
    from sonify.engine.errors import ConfigError

    try:
        return run_dir_of(arg)
    except ConfigError as e:
        raise SystemExit(f"sonify.query: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_args = [a for a in argv if a.startswith("run=")]
    rest = [a for a in argv if not a.startswith("run=")]
    p = argparse.ArgumentParser(prog="python -m sonify.query", description=__doc__.splitlines()[0])
    p.add_argument("sql", nargs="?", help="SQL; the run's tables are views")
    p.add_argument("--file", help="run the SQL in this file instead")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--max-rows", type=int, default=200)
    a = p.parse_args(rest)
    run_dir = resolve_run(run_args[-1].split("=", 1)[1] if run_args else "demo")
    sql = Path(a.file).read_text() if a.file else a.sql
    if not sql:
        con = connect(run_dir)
        print("tables:", ", ".join(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()))
        return 0
    con = connect(run_dir)
    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        print(f"sonify.query: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if rel is None:
        return 0
    if a.csv:
        rel.write_csv("/dev/stdout")
    else:
        rel.show(max_rows=a.max_rows, max_width=200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
