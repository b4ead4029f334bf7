"""The documented queries in manifests/ run against a demo run; schemas are checked when read."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sonify.engine.errors import SchemaError
from sonify.engine.store import TableStore
from sonify.query import connect, main
from sonify.run import run_pipeline

REPO = Path(__file__).resolve().parents[1]
QUERIES = sorted((REPO / "manifests").glob("*.sql"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from sonify.engine.config import load_config
    from sonify.stages import stage_names

    root = tmp_path_factory.mktemp("qruns")
    cfg = load_config(["pipeline=demo", f"run.root={root}", "run.executor=local", "run.progress=false"], stage_names())
    assert run_pipeline(cfg) == 0
    return Path(cfg.run.dir)


def test_every_documented_query_is_listed_in_the_readme():
    readme = (REPO / "manifests" / "README.md").read_text()
    assert QUERIES and all(q.name in readme for q in QUERIES)


@pytest.mark.parametrize("query", QUERIES, ids=[q.stem for q in QUERIES])
def test_documented_query_runs_on_the_demo(demo_run, query):
    rows = connect(demo_run).sql(query.read_text()).fetchall()
    assert rows, f"{query.name} returned nothing on the demo run"


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


def test_a_file_with_the_wrong_schema_version_is_refused(demo_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(demo_run / "manifests", run / "manifests")
    bad = pa.table({"id": ["x"], "status": ["ok"]}).replace_schema_metadata({"sonify.table": "images", "sonify.schema_version": "0"})
    pq.write_table(bad, run / "manifests" / "images" / "part-old.parquet")
    with pytest.raises(SchemaError, match="schema v0, code expects .images. v2"):
        TableStore(run).read("images")
    with pytest.raises(SchemaError):
        connect(run)
