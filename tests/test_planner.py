"""The out-of-core planner: DuckDB plans from Parquet, workers read partitions from the plan file."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sonify.engine import partitions
from sonify.engine.errors import ConfigError
from sonify.engine.keys import unit_hash, unit_hash_sql
from sonify.engine.partitions import PlanReader, plan, planner_connection, write_work


def _plan(tmp_path, work, existing=(), rows=4, **kw):
    path = write_work(work, tmp_path / "work.parquet")
    return plan(planner_connection(spill_dir=tmp_path / "spill"), path, tmp_path / "plan.parquet", "fp", list(existing),
                rows, **kw)


def _rows(planned):
    reader = PlanReader(planned.path)
    return {p.name: reader.read(p.offset, p.rows) for p in planned.partitions}


def _write_outputs(tmp_path, planned, folder="out"):
    """What a finished stage leaves: one file per partition holding its ids."""
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    for name, t in _rows(planned).items():
        pq.write_table(t.select(["id"]), d / f"{name}.parquet")
    return sorted(d.glob("*.parquet"))


def test_unit_hash_sql_agrees_with_python():
    import duckdb

    texts = [f"split\x00{i:05d}" for i in range(500)] + ["", "é", "a'b"]
    con = duckdb.connect()
    con.register("t", pa.table({"s": texts}))
    got = [r[0] for r in con.execute(f"SELECT {unit_hash_sql('s')} FROM t").fetchall()]
    want = [int(hashlib.sha1(t.encode()).hexdigest()[:16], 16) / 2.0**64 for t in texts]   # the definition
    assert got == want == [unit_hash(t) for t in texts]


def test_partitions_hold_every_row_once_in_id_order(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "PLAN_ROW_GROUP", 2048)   # DuckDB's smallest: partitions straddle row groups
    ids = [f"{i:04d}" for i in range(5000)]
    planned = _plan(tmp_path, pa.table({"id": ids[::-1], "v": list(range(5000))}), rows=700)
    parts = _rows(planned)
    assert [p.rows for p in planned.partitions] == [700] * 7 + [100]
    got = [i for t in parts.values() for i in t.column("id").to_pylist()]
    assert got == ids                                   # every row once, partitions in id order, rows in id order
    assert pq.ParquetFile(planned.path).num_row_groups >= 3
    assert all(n.startswith("part-") and len(n) == 21 for n in parts)


def test_duplicates_keep_the_first_row(tmp_path):
    planned = _plan(tmp_path, pa.table({"id": ["b", "a", "b", "a"], "v": [1, 2, 3, 4]}))
    (t,) = _rows(planned).values()
    assert planned.rows_in == 4 and planned.duplicates == 2
    assert t.to_pydict() == {"id": ["a", "b"], "v": [2, 1]}


def test_finished_partitions_are_kept_and_growth_adds_only_new_ones(tmp_path):
    base = pa.table({"id": [f"{i:03d}" for i in range(0, 40, 2)], "v": list(range(20))})
    first = _plan(tmp_path, base)
    done = _write_outputs(tmp_path, first)
    grown = pa.concat_tables([base, pa.table({"id": [f"{i:03d}" for i in range(1, 12, 2)], "v": list(range(6))})])
    second = _plan(tmp_path, grown, done)
    old, new = {p.name for p in first.partitions}, {p.name for p in second.partitions}
    assert old <= new and sum(p.rows for p in second.partitions if p.name not in old) == 6
    changed = base.set_column(1, "v", pa.array([99] + list(range(1, 20))))   # one row's content changes
    third = _plan(tmp_path, changed, done)
    assert len({p.name for p in third.partitions} - old) == 1 == len(old - {p.name for p in third.partitions})
    assert planned_ids(third) == base.column("id").to_pylist()


def planned_ids(planned):
    return [i for t in _rows(planned).values() for i in t.column("id").to_pylist()]


def test_a_partition_whose_id_another_kept_partition_claims_is_recomputed(tmp_path):
    work = pa.table({"id": [f"{i:02d}" for i in range(8)], "v": list(range(8))})
    first = _plan(tmp_path, work)
    done = _write_outputs(tmp_path, first)
    # a copy of the first partition's file under another (valid-looking) name: one owner only
    stray = tmp_path / "out" / "part-ffffffffffffffff.parquet"
    stray.write_bytes(done[0].read_bytes())
    again = _plan(tmp_path, work, done + [stray])
    assert {p.name for p in again.partitions} == {p.name for p in first.partitions}
    assert planned_ids(again) == work.column("id").to_pylist()


def test_split_group_and_together(tmp_path):
    ids = [f"{i:03d}" for i in range(30)]
    work = pa.table({"id": ids, "lane": ["x" if i % 3 else "y" for i in range(30)], "g": [str(i // 5) for i in range(30)],
                     "t": [str(i // 4) for i in range(30)]})
    by_lane = _rows(_plan(tmp_path, work, rows=4, split_column="lane"))
    assert all(len(set(t.column("lane").to_pylist())) == 1 for t in by_lane.values())
    assert {p.lane for p in _plan(tmp_path, work, rows=4, split_column="lane").partitions} == {"x", "y"}
    by_group = _rows(_plan(tmp_path, work, rows=2, group_column="g"))
    assert sorted(t.num_rows for t in by_group.values()) == [5] * 6
    together = _rows(_plan(tmp_path, work, rows=6, together_column="t"))
    owner = {}
    for name, t in together.items():
        for v in t.column("t").to_pylist():
            assert owner.setdefault(v, name) == name       # equal values are never cut apart
    assert sorted(t.num_rows for t in together.values()) == [6, 8, 8, 8]   # runs of 4: a cut waits for a run end


def test_a_duckdb_relation_streams_into_the_plan(tmp_path):
    import duckdb

    con = duckdb.connect()
    rel = con.sql("SELECT printf('%05d', i) AS id, i * 2 AS v FROM range(1000) t(i)")
    planned = _plan(tmp_path, rel, rows=256)
    assert planned.rows_in == 1000 and [p.rows for p in planned.partitions] == [256, 256, 256, 232]


def test_bad_plan_memory_is_one_line():
    with pytest.raises(ConfigError, match="run.plan_memory='lots'"):
        planner_connection("lots")


def test_nest_sorted_groups_across_batch_boundaries():
    import duckdb

    from sonify.engine.partitions import nest_sorted, work_table

    con = duckdb.connect()
    rel = con.sql("SELECT printf('k%03d', i // 3 + (i % 7 = 0)::INT) AS k, i AS v, 'x' || i AS s FROM range(200) t(i) ORDER BY k, v")
    item = pa.struct([("v", pa.int32()), ("s", pa.string())])
    got = work_table(nest_sorted(rel, "k", ["k"], item, "items", batch_rows=16)).to_pylist()
    want: dict[str, list] = {}
    for k, v, s in rel.fetchall():   # the grouping by hand
        want.setdefault(k, []).append({"v": v, "s": s})
    assert got == [{"k": k, "items": items} for k, items in want.items()]
    empty = work_table(nest_sorted(con.sql("SELECT 'a' AS k, 1 AS v, 'b' AS s WHERE false"), "k", ["k"], item, "items"))
    assert empty.num_rows == 0 and empty.column_names == ["k", "items"]
