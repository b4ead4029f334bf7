"""Plan a stage's partitions so that finished work is kept and only new or changed rows are computed.

A partition's name hashes the stage's fingerprint (its lineage: config, models, prompt files,
versions, and every upstream stage's lineage) together with the content of the work-list rows it
holds. Planning first keeps every finished partition whose rows are all still in the work list with
the same content; only the rows left over are grouped into new partitions. So adding N inputs
creates work proportional to N wherever the new ids fall, a changed row recomputes only its own
partition, and a config change (a new fingerprint) recomputes everything that depends on it.
Which rows share a file may depend on the order data arrived; what a table holds does not.

Planning runs out of core: the work list is written to Parquet, DuckDB (with a memory limit,
spilling to disk) does the dedupe, digests, joins and cuts, and writes every row in partition
order to `plan.parquet`. The driver keeps one small record per partition (name, offset, row count);
workers read their partition's rows from the file. No row ever becomes a Python object on the driver.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sonify.engine.errors import ConfigError
from sonify.engine.files import atomic_path

PLAN_ROW_GROUP = 8192   # rows per row group of plan.parquet: a worker reads one or two groups per partition


@dataclass(frozen=True)
class Partition:
    """One planned partition: its rows are `plan.parquet[offset : offset + rows]`."""
    name: str
    offset: int
    rows: int
    lane: object = None   # its value of the stage's pass column (one pass per value)


@dataclass
class Plan:
    path: Path                 # plan.parquet: every row, in partition order
    partitions: list[Partition]
    rows_in: int               # work-list rows before dropping duplicate ids
    duplicates: int


class PlanReader:
    """Reads one partition's rows from a plan file (opened once per worker)."""

    def __init__(self, path: str | os.PathLike):
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def read(self, offset: int, rows: int) -> pa.Table:
        first = int(np.searchsorted(self.starts, offset, side="right") - 1)
        last = int(np.searchsorted(self.starts, offset + rows - 1, side="right") - 1)
        table = self.file.read_row_groups(list(range(first, last + 1)))
        return table.slice(offset - int(self.starts[first]), rows)


_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER",
                 pa.int64(): "BIGINT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}


def duckdb_type(t: pa.DataType, float32: str = "FLOAT") -> str:
    """The DuckDB type of an Arrow type (`float32="DOUBLE"` widens floats, as JSON writes Python floats)."""
    if pa.types.is_list(t):
        return duckdb_type(t.value_type, float32) + "[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f'"{f.name}" {duckdb_type(f.type, float32)}' for f in t) + ")"
    return float32 if t == pa.float32() else _DUCKDB_TYPES[t]


def _set_memory_limit(con, memory_limit: str) -> bool:
    """DuckDB's own reading of a memory size: True when it took `memory_limit`."""
    import duckdb

    try:
        con.execute("SET memory_limit = " + sql_text(memory_limit))
        return True
    except duckdb.Error:
        return False


def is_memory_size(value: object) -> bool:
    """Whether DuckDB reads `value` as a memory size (`run.plan_memory`'s rule, checked when the config loads)."""
    import duckdb

    with duckdb.connect() as con:
        return isinstance(value, str) and _set_memory_limit(con, value)


def planner_connection(memory_limit: str = "1GB", spill_dir: str | os.PathLike | None = None):
    """A DuckDB connection for planning: bounded memory, spilling to `spill_dir`."""
    import duckdb

    con = duckdb.connect()
    if not _set_memory_limit(con, str(memory_limit)):
        raise ConfigError(f"run.plan_memory={memory_limit!r} is not a memory size (write e.g. 1GB or 512MB)")
    con.execute("SET preserve_insertion_order = false")   # order comes from ORDER BY; the rest need not hold rows back
    # DuckDB creates the spill folder (not its parent) when it first spills; none: never spill (not into the cwd)
    con.execute(f"SET temp_directory = '{spill_dir if spill_dir is not None else ''}'")
    return con


SORT_RANGE_ROWS = 8192    # rows DuckDB sorts at once in `copy_in_order` (wide rows: ~1 KB each in a release)


def sql_text(value: str) -> str:
    """A SQL string literal (quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def copy_in_order(con, query, key: str, keys: str, path: str | os.PathLike, options: str, work: Path,
                  range_rows: int | None = None) -> None:
    """`COPY` the rows of `query(condition)`, ordered by `key` (a VARCHAR), to `path` with COPY `options`,
    in memory that does not grow with the rows.

    DuckDB's ORDER BY of wide rows (lists of structs, long strings) does not spill (DuckDB 2.0: it needs
    about the rows' size in memory, whatever `memory_limit` says). So only the keys are sorted whole
    (`keys`: a query of one column `k`, the values of `key`); they cut the rows into ranges of
    `range_rows` (default SORT_RANGE_ROWS) rows, each range is sorted and written to `work` by its own
    COPY, and a last COPY streams the ranges into `path` in order (`ordered`: a scan of listed files
    keeps their order).
    `query(condition)` must AND the condition into its WHERE and end with its ORDER BY.
    """
    work.mkdir(parents=True, exist_ok=True)
    with ordered(con):
        bounds = [r[0] for r in con.execute(f"""
            SELECT k FROM (SELECT k, row_number() OVER (ORDER BY k) - 1 AS n FROM ({keys}))
            WHERE n % {int(range_rows or SORT_RANGE_ROWS)} = 0 ORDER BY k""").fetchall()]
        if not bounds:   # no rows: the query's schema
            con.execute(f"COPY ({query('false')}) TO {sql_text(path)} ({options})")
            return
        parts = []
        for i, lo in enumerate(bounds):
            condition = f"{key} >= {sql_text(lo)}" + (f" AND {key} < {sql_text(bounds[i + 1])}" if i + 1 < len(bounds) else "")
            parts.append(work / f"range-{i:06d}.parquet")
            con.execute(f"COPY ({query(condition)}) TO {sql_text(parts[-1])} (FORMAT PARQUET)")
        listed = "[" + ", ".join(sql_text(p) for p in parts) + "]"
        con.execute(f"COPY (SELECT * FROM read_parquet({listed})) TO {sql_text(path)} ({options})")
    for part in parts:
        part.unlink()


@contextmanager
def ordered(con):
    """Within: DuckDB writes rows in the order it reads or sorts them, on one thread. (With several threads
    an ordered COPY holds back the batches that finish early: memory that grows with the file.)"""
    before = con.execute("SELECT current_setting('preserve_insertion_order'), current_setting('threads')").fetchone()
    con.execute("SET preserve_insertion_order = true")
    con.execute("SET threads = 1")
    try:
        yield con
    finally:
        con.execute(f"SET preserve_insertion_order = {bool(before[0])}")
        con.execute(f"SET threads = {int(before[1])}")


def work_table(work) -> pa.Table:
    """A work list (an Arrow table or a DuckDB relation) as an Arrow table: for tools and tests on small runs."""
    if isinstance(work, pa.Table):
        return work
    return work.to_arrow_table() if hasattr(work, "to_arrow_table") else pa.concat_tables(list(work))


def write_work(work, path: Path) -> Path:
    """The work list as a Parquet file, atomically: an Arrow table, a DuckDB relation (streamed by
    DuckDB) or an iterator of Arrow tables (`nest_sorted`, streamed batch by batch)."""
    with atomic_path(path) as tmp:
        if isinstance(work, pa.Table):
            pq.write_table(work, tmp, row_group_size=65536)
        elif hasattr(work, "write_parquet"):
            work.write_parquet(str(tmp))
        else:
            writer = None
            for t in work:
                writer = writer or pq.ParquetWriter(tmp, t.schema)
                writer.write_table(t)
            if writer is None:
                raise ValueError("an iterator work list must yield at least one table (an empty one carries the schema)")
            writer.close()
    return path


def nest_sorted(relation, key: str, keep: list[str], nested: pa.StructType, name: str, batch_rows: int = 65536):
    """Rows of a DuckDB relation sorted by `key` as one row per key: the `keep` columns of its
    first row and its rows' `nested` fields as a list column `name`. A list aggregate in DuckDB holds
    every group in memory; this holds one batch. Yields Arrow tables (the first may be empty)."""
    reader = relation.fetch_record_batch(batch_rows)   # the relation (and its connection) lives as long as this generator
    carry = None
    out_schema = None

    def group(t: pa.Table, starts: np.ndarray) -> pa.Table:
        offsets = pa.array(np.append(starts, t.num_rows).astype(np.int32))
        items = pa.StructArray.from_arrays([t.column(f.name).combine_chunks().cast(f.type) for f in nested], fields=list(nested))
        firsts = t.select(keep).take(pa.array(starts))
        return firsts.append_column(name, pa.ListArray.from_arrays(offsets, items))

    for batch in reader:
        t = pa.Table.from_batches([batch])
        t = pa.concat_tables([carry, t]) if carry is not None else t
        keys = t.column(key).combine_chunks()
        change = np.flatnonzero(np.asarray(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).fill_null(True))) + 1
        starts = np.concatenate([[0], change]).astype(np.int64) if len(keys) else np.zeros(0, np.int64)
        if not len(starts):
            continue
        last = int(starts[-1])   # the last key's rows may go on in the next batch
        carry, t = t.slice(last), t.slice(0, last)
        if t.num_rows:
            table = group(t, starts[:-1])
            out_schema = table.schema
            yield table
    if carry is not None and carry.num_rows:
        yield group(carry, np.zeros(1, np.int64))
    elif out_schema is None:   # nothing at all: an empty table of the right columns
        yield pa.table({**{k: pa.array([], reader.schema.field(k).type) for k in keep}, name: pa.array([], pa.list_(nested))})


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _name(fingerprint_param: str, lo: str, hi: str) -> str:
    """SQL for a partition's name: 'part-' + 16 hex digits of sha256 of the fingerprint, the row count and
    the sums of the two halves of each row's 128-bit md5 (of its id and content): a digest of the set of
    rows that needs no order and no string of the whole partition, so it costs the same at any size."""
    return f"'part-' || substr(sha256({fingerprint_param} || ':' || count(*) || ':' || sum({lo}) || ':' || sum({hi})), 1, 16)"


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def plan(con, work_path: Path, out_path: Path, fingerprint: str, existing: list[Path], partition_rows: int,
         content_columns: list[str] | None = None, group_column: str | None = None,
         split_column: str | None = None, together_column: str | None = None) -> Plan:
    """Every partition the stage's outputs should hold for the work list at `work_path`, written in
    partition order to `out_path`. Partitions on disk that are not among them are stale.

    Duplicate ids keep their first row. `existing` are the stage's keyed output files on disk
    (`<partition>.parquet`, each with an `id` column). A finished partition is kept when recomputing
    its name from the current rows of its ids gives the same name (and no kept partition with a
    smaller name claims one of its ids). The remaining rows are cut every `partition_rows` rows in id
    order, or, with `group_column`, one partition per value; with `split_column`, rows of different
    values never share a partition (they run in separate passes); with `together_column`, rows of
    equal values are never cut apart (they must sort next to each other by id).
    """
    if partition_rows < 1:
        raise ValueError("partition_rows must be >= 1")
    names = pq.read_schema(work_path).names
    digest_cols = ["id"] + [c for c in (content_columns or names) if c in names and c != "id"]
    lane = _q(split_column) if split_column else "NULL"
    grp = _q(group_column) if group_column else "NULL"
    tog = _q(together_column) if together_column else "NULL"
    packed = "{" + ", ".join(f"'{c}': {_q(c)}" for c in digest_cols) + "}"
    con.execute("SET VARIABLE fp = ?", [fingerprint])
    fp = "getvariable('fp')"
    work = f"read_parquet('{work_path}', file_row_number = true)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE k AS
        SELECT fr, id, (h & 18446744073709551615::UHUGEINT)::UBIGINT AS lo, (h >> 64)::UBIGINT AS hi, lane, grp, tog
        FROM (SELECT file_row_number AS fr, id, md5_number(CAST({packed} AS VARCHAR)) AS h, {lane} AS lane,
                     CAST({grp} AS VARCHAR) AS grp, CAST({tog} AS VARCHAR) AS tog FROM {work})""")
    rows_in = con.execute("SELECT count(*) FROM k").fetchone()[0]
    # duplicate ids keep their first row: a hash aggregate (it spills), not a window over every row
    con.execute("""DELETE FROM k WHERE fr IN (
        SELECT k.fr FROM k JOIN (SELECT id, min(fr) AS first FROM k GROUP BY id HAVING count(*) > 1) d USING (id)
        WHERE k.fr != d.first)""")
    unique = con.execute("SELECT count(*) FROM k").fetchone()[0]

    if existing:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE ex AS
            SELECT regexp_extract(filename, '([^/]+)\\.parquet$', 1) AS partition, id
            FROM read_parquet({_sql_list(existing)}, filename = true, union_by_name = true)""")
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE ex (partition VARCHAR, id VARCHAR)")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE valid AS
        SELECT e.partition FROM ex e LEFT JOIN k USING (id) GROUP BY e.partition
        HAVING count(*) = count(k.lo) AND count(*) = count(DISTINCT e.id)
           AND {_name(fp, 'k.lo', 'k.hi')} = e.partition""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE assign AS
        WITH member AS (SELECT e.partition, e.id FROM ex e JOIN valid USING (partition)),
             owner AS (SELECT id, min(partition) AS partition FROM member GROUP BY id),
             keep AS (SELECT m.partition FROM member m JOIN owner o USING (id) GROUP BY m.partition
                      HAVING bool_and(o.partition = m.partition))
        SELECT k.fr, m.partition FROM member m JOIN keep USING (partition) JOIN k USING (id)""")

    rest = "SELECT k.* FROM k ANTI JOIN assign a ON a.fr = k.fr"
    if group_column:
        chunked = f"SELECT *, grp AS chunk FROM ({rest})"
    elif together_column:
        chunked = _cut_together(con, rest, partition_rows)
    else:
        chunked = (f"SELECT *, {{'lane': lane, 'cut': (row_number() OVER (PARTITION BY lane ORDER BY id) - 1) "
                   f"// {int(partition_rows)}}} AS chunk FROM ({rest})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE c AS SELECT fr, lo, hi, chunk FROM ({chunked})")
    con.execute(f"""
        INSERT INTO assign
        SELECT c.fr, named.partition FROM c
        JOIN (SELECT chunk, {_name(fp, 'lo', 'hi')} AS partition FROM c GROUP BY chunk) named USING (chunk)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE parts AS
        SELECT a.partition, min(k.id) AS first_id, count(*) AS n, any_value(k.lane) AS lane
        FROM assign a JOIN k USING (fr) GROUP BY a.partition""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE parts AS
        SELECT *, row_number() OVER (ORDER BY first_id) AS ord,
               coalesce(sum(n) OVER (ORDER BY first_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS start
        FROM parts""")
    with atomic_path(out_path) as tmp:
        con.execute("SET threads = 1")   # the wide sort's buffers are per thread: one keeps it under the memory cap
        con.execute(f"""
            COPY (SELECT w.* EXCLUDE (file_row_number) FROM {work} w
                  JOIN assign a ON a.fr = w.file_row_number JOIN parts p USING (partition)
                  ORDER BY p.ord, w.id)
            TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE {PLAN_ROW_GROUP})""")
    found = con.execute("SELECT partition, start, n, lane FROM parts ORDER BY ord").fetchall()
    return Plan(out_path, [Partition(str(n), int(o), int(c), lane) for n, o, c, lane in found], rows_in, rows_in - unique)


def _cut_together(con, rest: str, size: int) -> str:
    """Cuts every `size` rows per lane, but only between runs of equal together values: the runs are
    counted by SQL (one record per run, in id order), packed greedily by numpy, and joined back."""
    runs = con.sql(f"""
        SELECT lk, tk, n, (row_number() OVER w = 1 OR lk IS DISTINCT FROM lag(lk) OVER w) AS new_lane
        FROM (SELECT coalesce(CAST(lane AS VARCHAR), '') AS lk, coalesce(tog, '') AS tk, count(*) AS n, min(id) AS first
              FROM ({rest}) GROUP BY lk, tk)
        WINDOW w AS (ORDER BY lk, first) ORDER BY lk, first""").to_arrow_table()
    sizes = runs.column("n").to_numpy()
    lane_starts = runs.column("new_lane").to_numpy(zero_copy_only=False)
    chunk = np.empty(len(sizes), np.int64)
    c, filled = -1, size
    for r in range(len(sizes)):   # one step per run of equal values, not per row
        if lane_starts[r] or filled >= size:
            c, filled = c + 1, 0
        chunk[r] = c
        filled += int(sizes[r])
    con.register("run_chunk", pa.table({"lk": runs.column("lk"), "tk": runs.column("tk"), "chunk": pa.array(chunk)}))
    return f"""SELECT r.*, rc.chunk FROM ({rest}) r
               JOIN run_chunk rc ON rc.lk = coalesce(CAST(r.lane AS VARCHAR), '') AND rc.tk = coalesce(r.tog, '')"""
