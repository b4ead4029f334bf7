"""One way in: `run=` resolved by one helper (a folder, a run name under run.root, a pipeline), one DuckDB
connection over a run for every reader, and `duckdb.connect(` in one engine module."""

import re
from pathlib import Path

import pytest

from sonify.engine.errors import ConfigError, MissingTable
from sonify.engine.runs import resolve_run, split_run_arg
from sonify.engine.store import open_run
from sonify.query import main as query

from conftest import NO_BACKOFF

PKG = Path(__file__).resolve().parents[1] / "sonify"


@pytest.fixture(scope="module")
def named_run(tmp_path_factory, demo_dir):
    """A run made as a user makes a named one: `python -m sonify.run run.name=mine run.root=<root>` (images only)."""
    from sonify.run import main as run

    root = tmp_path_factory.mktemp("named") / "runs"
    assert run(["pipeline=demo", "stage=images", "run.name=mine", f"run.root={root}", f"demo_data.dir={demo_dir}",
                "demo_data.enabled=false", "run.executor=local", "run.progress=false", *NO_BACKOFF]) == 0
    return root


def test_run_name_under_run_root_is_found(named_run, tmp_path, monkeypatch, capsys):
    assert resolve_run("mine", str(named_run)) == (named_run / "mine").resolve()
    assert query(["run=mine", f"run.root={named_run}", "SELECT count(*) AS n FROM images"]) == 0
    assert "│    32 │" in capsys.readouterr().out
    monkeypatch.chdir(named_run.parent)              # the default run.root, `runs` of the cwd
    assert query(["run=mine", "SELECT count(*) AS n FROM images"]) == 0
    assert "│    32 │" in capsys.readouterr().out
    assert resolve_run(str(named_run / "mine")) == named_run / "mine"     # a folder as given


def test_a_pipeline_name_is_its_run_dir(named_run):
    # the demo pipeline's run.dir under this root is <root>/demo: no run there yet, then one
    with pytest.raises(ConfigError, match=r"run=demo names no run: .*no run 'demo' under run.root .*pipeline demo's run.dir .* does not exist"):
        resolve_run("demo", str(named_run))
    (named_run / "demo" / "manifests").mkdir(parents=True)
    assert resolve_run("demo", str(named_run)) == (named_run / "demo").resolve()
    assert split_run_arg([f"run.root={named_run}", "x=1"]) == ((named_run / "demo").resolve(), ["x=1"])


def test_absence_and_ambiguity_fail_in_one_line_listing_what_was_tried(named_run, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError) as e:
        resolve_run("nope", str(named_run))
    line = str(e.value)
    assert "\n" not in line and "no folder nope" in line and f"no run 'nope' under run.root {named_run}" in line
    assert "no pipeline 'nope'" in line
    # `demo` both a run name under ./runs and a pipeline whose run.dir (under another root) exists
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo" / "manifests").mkdir(parents=True)
    other = tmp_path / "elsewhere"
    (other / "demo" / "manifests").mkdir(parents=True)
    monkeypatch.setattr("sonify.engine.runs._pipeline_dir", lambda name, root: (other / name, f"pipeline {name}'s run.dir"))
    with pytest.raises(ConfigError, match=r"run=demo is ambiguous: run 'demo' under run.root runs .*; pipeline demo's run.dir"):
        resolve_run("demo")
    assert query(["run=", "SELECT 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run= is empty" in err[0]


def _views(con) -> dict[str, str]:
    return dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())


def test_every_reader_sees_the_same_views(demo_cli_run, capsys):
    """The query command, the evaluation's pair audit and `open_run` create each table's view by one code path."""
    from sonify.engine.store import TableStore
    from sonify.evaluation.pairs import _connect

    run = demo_cli_run.run_dir
    views = _views(open_run(run))
    assert set(views) == set(TableStore(run).table_names()) and "matches" in views
    assert query([f"run={run}"]) == 0
    assert capsys.readouterr().out.strip() == "tables: " + ", ".join(sorted(views))
    con, present = _connect(run)
    audit = _views(con)
    assert present and all(audit[t] == views[t] for t in present)


def test_a_reader_honours_the_runs_memory_limit_and_fails_in_one_line(named_run, tmp_path):
    con = open_run(named_run / "mine")
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] in ("1.0 GiB", "953.6 MiB")
    cfg = (named_run / "mine" / "config.yaml")
    cfg.write_text(cfg.read_text().replace("plan_memory: 1GB", "plan_memory: 64MB"))
    assert open_run(named_run / "mine").execute("SELECT current_setting('memory_limit')").fetchone()[0] in ("61.0 MiB", "64.0 MiB")
    with pytest.raises(MissingTable, match=r"^table 'matches' has no partitions under .*; run its stage first$"):
        open_run(named_run / "mine", "matches")
    with pytest.raises(MissingTable, match="not a run folder"):
        open_run(tmp_path)


# `duckdb.connect(` outside the engine's one connection factory, and why each may
ALLOWED_CONNECT = {
    "engine/partitions.py": "planner_connection: the one factory; the store's views (open_run, TableStore.connect) use it",
    "bench/plan.py": "writes synthetic input lists for a planning benchmark: a scratch database, not a run's tables",
}


def test_duckdb_connect_only_in_the_engine():
    found = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if re.search(r"duckdb\.connect\(", p.read_text())}
    assert found <= set(ALLOWED_CONNECT), f"open a run with sonify.engine.store.open_run instead: {sorted(found - set(ALLOWED_CONNECT))}"
