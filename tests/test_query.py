"""The documented queries in manifests/ run against a demo run; schemas are checked when read."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sonify.engine.errors import SchemaError
from sonify.engine.schemas import TABLES
from sonify.engine.store import TableStore
from sonify.query import connect, main

REPO = Path(__file__).resolve().parents[1]
QUERIES = sorted((REPO / "manifests").glob("*.sql"))


@pytest.fixture(scope="module")
def demo_run(demo_cli_run):
    return demo_cli_run.run_dir


def test_every_documented_query_is_listed_in_the_readme():
    readme = (REPO / "manifests" / "README.md").read_text()
    assert QUERIES and all(q.name in readme for q in QUERIES)


@pytest.mark.parametrize("query", QUERIES, ids=[q.stem for q in QUERIES])
def test_documented_query_runs_on_the_demo(demo_run, query):
    rows = connect(demo_run).sql(query.read_text()).fetchall()
    assert rows, f"{query.name} returned nothing on the demo run"


def test_status_by_table_says_where_every_row_of_every_table_went(demo_run):
    """Every declared table is in the answer; per table the outcomes add up to its rows, and each
    outcome count equals one counted here straight from the table's own columns."""
    con = connect(demo_run)
    rows = con.sql((REPO / "manifests/status_by_table.sql").read_text()).fetchall()
    assert {t for t, *_ in rows} == set(TABLES)
    for table in TABLES:
        got = {(o, r): n for t, o, r, n in rows if t == table}
        expected = {}
        for status, error, *decision in con.sql(f'SELECT status, error{", kept, reason" if table == "kept_images" else ""} FROM "{table}"').fetchall():
            if status != "ok":
                key = (status, error.split(":", 1)[0])
            elif decision and not decision[0]:
                key = ("dropped", decision[1])
            else:
                key = ("ok", "")
            expected[key] = expected.get(key, 0) + 1
        assert got == expected, table
        assert sum(got.values()) == con.sql(f'SELECT count(*) FROM "{table}"').fetchall()[0][0] > 0, table
    outcomes = {(t, o, r): n for t, o, r, n in rows}
    assert outcomes[("kept_images", "dropped", "no_concepts")] > 0 and outcomes[("kept_images", "dropped", "keyword:logo")] > 0


def test_query_answers_match_the_demo_data(demo_run):
    con = connect(demo_run)
    status = {(t, s, r): n for t, s, r, n in con.sql((REPO / "manifests/status_by_table.sql").read_text()).fetchall()}
    for reason in ("corrupt", "truncated", "empty", "decompression_bomb"):
        assert status[("images", "error", reason)] == 1
    assert status[("audio_files", "error", "silent")] == 1
    padding = {r[0]: r for r in con.sql((REPO / "manifests/chunk_padding.sql").read_text()).fetchall()}
    engine = padding["engine_48000hz_2ch.flac"]
    assert engine[3] == 7 and engine[4] == 1.0
    pool = {r[0]: r for r in con.sql((REPO / "manifests/audio_pool.sql").read_text()).fetchall()}
    assert set(pool) == {"demo_sfx", "demo_labelled"}
    assert pool["demo_sfx"][4] == [8000, 16000, 22050, 44100, 48000]


def test_query_cli_prints_results(demo_run, capsys):
    assert main([f"run={demo_run}", "SELECT count(*) AS n FROM audio_files"]) == 0
    assert "16" in capsys.readouterr().out
    assert main([f"run={demo_run}", "SELECT nope FROM images"]) == 2
    assert "nope" in capsys.readouterr().err


def test_query_takes_a_pipeline_name_or_a_run_dir(demo_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                       # the demo pipeline's run.dir is runs/demo, relative
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(demo_run)
    for run in ("run=demo", "run=runs/demo", f"run={demo_run}"):
        assert main([run, "SELECT count(*) AS n FROM audio_files"]) == 0, run
        assert "16" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="run=nope is neither a run directory nor a pipeline: unknown pipeline 'nope'; valid choices: demo"):
        main(["run=nope", "SELECT 1"])


def test_a_file_with_the_wrong_schema_version_is_refused(demo_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(demo_run / "manifests", run / "manifests")
    bad = pa.table({"id": ["x"], "status": ["ok"]}).replace_schema_metadata({"sonify.table": "images", "sonify.schema_version": "0"})
    pq.write_table(bad, run / "manifests" / "images" / "part-old.parquet")
    with pytest.raises(SchemaError, match="schema v0, code expects .images. v3"):
        TableStore(run).read("images")
    with pytest.raises(SchemaError):
        connect(run)


def test_the_summary_says_where_every_row_went(demo_run):
    """Per table line: rows = passed + dropped + errors, rows in is each keyed table's own input
    (embed's audio chunks and concept texts apart), and the filter's drops are columns, with reasons."""
    import json

    from sonify.engine.executor import StageRun
    from sonify.engine.summary import format_summary
    from sonify.stages import get_stage

    runs = [StageRun(**d) for d in json.loads((demo_run / "summary.json").read_text())]
    text = format_summary(runs, {r.stage: get_stage(r.stage).keyed_outputs() for r in runs})
    lines = {}
    for line in text.splitlines()[1:]:
        words = line.split()
        for i in (0, 1):
            if len(words) > i + 5 and words[i] in TABLES:
                lines[words[i]] = (words[i + 1:i + 6], line)
    assert set(lines) == set(TABLES)
    con = connect(demo_run)
    one = lambda sql: con.sql(sql).fetchall()[0][0]  # noqa: E731
    for table, ((rows_in, rows, passed, dropped, errors), _) in lines.items():
        assert int(rows) == int(passed) + int(dropped) + int(errors) == one(f'SELECT count(*) FROM "{table}"'), table
        assert int(errors) == one(f"SELECT count(*) FROM \"{table}\" WHERE status <> 'ok'"), table
    (rows_in, _, passed, dropped, _), filter_line = lines["kept_images"]
    assert int(rows_in) == one("SELECT count(*) FROM images WHERE status = 'ok'")
    assert int(passed) == one("SELECT count(*) FROM kept_images WHERE kept") and int(dropped) == one("SELECT count(*) FROM kept_images WHERE NOT kept") > 0
    assert "dropped: no_concepts=" in filter_line and "keyword:logo=" in filter_line
    assert int(lines["audio_embeddings"][0][0]) == one("SELECT count(*) FROM audio_chunks WHERE status = 'ok'")
    texts = one("SELECT sum(len(c.concepts)) FROM concepts c JOIN kept_images k ON k.id = c.image_id AND k.kept WHERE c.status = 'ok'")
    assert int(lines["concept_embeddings"][0][0]) == texts > 0
    assert lines["audio_chunks"][0][0] == lines["captions"][0][0] == lines["match_ablations"][0][0] == "derived"
    assert int(lines["concepts"][0][0]) == next(r.rows_in for r in runs if r.stage == "concepts")
