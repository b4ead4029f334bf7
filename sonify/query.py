"""Query a run's tables with DuckDB: `python -m sonify.query [run=demo] "SELECT ..."`.

`run=` takes a run folder (`run=runs/demo`), a run name under `run.root` (`run=X` for a run made with
`run.name=X`) or a pipeline name (`run=demo`: that pipeline's `run.dir`); see docs/cli.md.

Every table under `<run>/manifests/` is a view of the same name. `--file manifests/x.sql` runs a
saved query; plain `duckdb` works too: `SELECT * FROM read_parquet('runs/demo/manifests/images/*.parquet')`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import duckdb

from sonify.engine.cli import command, command_parser, non_negative_int, parse_command, run_of
from sonify.engine.errors import SonifyError
from sonify.engine.schemas import TABLES
from sonify.engine.store import TableStore, open_run

NO_TABLE = re.compile(r'Table with name "?([^\s"!]+)"? does not exist')   # DuckDB's CatalogException


@command
def main(argv: list[str] | None = None) -> int:
    p = command_parser("query", __doc__)
    p.add_argument("sql", nargs="?", help="SQL; the run's tables are views")
    p.add_argument("--file", help="run the SQL in this file instead")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--max-rows", type=non_negative_int, default=200)
    a, settings = parse_command(p, argv)
    run_dir = run_of(p, settings)
    try:
        sql = Path(a.file).read_text() if a.file else a.sql
        con = open_run(run_dir)
    except (SonifyError, OSError) as e:
        print(f"sonify.query: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if not sql:
        print("tables:", ", ".join(r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()))
        return 0
    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        print(f"sonify.query: {_why(e, run_dir)}", file=sys.stderr)
        return 2
    if rel is None:
        return 0
    if a.csv:
        rel.write_csv("/dev/stdout")
    else:
        rel.show(max_rows=a.max_rows, max_width=200)
    return 0


def _why(e: duckdb.Error, run_dir: Path) -> str:
    """DuckDB's first line, or for a declared table the run has not built yet, the store's line (run its stage)."""
    found = NO_TABLE.search(str(e)) if isinstance(e, duckdb.CatalogException) else None
    name, store = found.group(1).lower() if found else None, TableStore(run_dir)
    if name in TABLES and not store.exists(name):
        return str(store.missing(name))
    return str(e).splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
