"""The documented queries in manifests/ run against a demo run; schemas are checked when read."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sonify.engine.errors import SchemaError
from sonify.engine.schemas import TABLES
from sonify.engine.store import TableStore
from sonify.engine.store import open_run as connect
from sonify.query import main

REPO = Path(__file__).resolve().parents[1]
QUERIES = sorted((REPO / "manifests").glob("*.sql"))


@pytest.fixture(scope="module")
def demo_run(demo_cli_run):
    return demo_cli_run.run_dir


def test_every_documented_query_is_listed_in_the_readme():
    readme = (REPO / "manifests" / "README.md").read_text()
    assert QUERIES and all(q.name in readme for q in QUERIES)


def _rows(run, table):
    """A table's rows read with pyarrow alone: the reference the saved queries are checked against."""
    return TableStore(run).read(table).to_pylist()


def _r(x, nd):
    return None if x is None else round(x, nd)


def _reference(run, name):
    """Each saved query's answer computed in plain Python from the tables (no DuckDB), in its order."""
    from collections import Counter, defaultdict
    from statistics import mean, median

    if name == "audio_pool":
        files = [f for f in _rows(run, "audio_files") if f["status"] == "ok"]
        chunks = defaultdict(list)
        for c in _rows(run, "audio_chunks"):
            chunks[c["file_id"]].append(c)
        out = []
        for source in sorted({f["source"] for f in files}):
            fs = [f for f in files if f["source"] == source]
            ok = [c for f in fs for c in chunks[f["id"]] if c["status"] == "ok"]
            # the LEFT JOIN repeats a file's rate once per chunk; list_distinct makes that moot
            out.append((source, len(fs), len(ok), _r(sum(c["duration"] for c in ok) / 3600, 4) if ok else None,
                        sorted({f["sample_rate"] for f in fs})))
        return out
    if name == "chunk_padding":
        chunks = defaultdict(list)
        for c in _rows(run, "audio_chunks"):
            chunks[c["file_id"]].append(c)
        out = [(f["uri"], f["sample_rate"], _r(f["duration"], 2), f["num_chunks"], _r(max(c["padding"] for c in chunks[f["id"]]), 2))
               for f in _rows(run, "audio_files") if chunks[f["id"]]]
        return sorted(out, key=lambda r: -r[2])
    if name == "concepts_by_vlm":
        groups = defaultdict(list)
        for c in _rows(run, "concepts"):
            groups[(c["variant"], c["origin"])].append(c)
        out = []
        for (vlm, origin), cs in sorted(groups.items()):
            ok = [c for c in cs if c["status"] == "ok"]
            out.append((vlm, origin, len(cs), len(ok), sum(1 for c in cs if (c["error"] or "").startswith("parse_error:")),
                        _r(mean(c["n_concepts"] for c in ok), 2) if ok else None,
                        sum(1 for c in cs if c["items_found"] is not None and c["items_found"] > c["n_concepts"])))
        return out
    if name == "filter_decisions":
        n = Counter((k["kept"], k["reason"] or "kept") for k in _rows(run, "kept_images"))
        return sorted(((kept, reason, count) for (kept, reason), count in n.items()), key=lambda r: -r[2])
    if name == "image_errors":
        bad = [i for i in _rows(run, "images") if i["status"] == "error"]
        return sorted(((i["source"], i["uri"], i["error"].split(":", 1)[0], i["error"]) for i in bad), key=lambda r: (r[2], r[1]))
    if name == "image_modes":
        groups = defaultdict(list)
        for i in _rows(run, "images"):
            if i["status"] == "ok":
                groups[(i["format"], i["mode"])].append(i)
        return sorted(((f, m, len(g), min(i["width"] for i in g), max(i["width"] for i in g), min(i["height"] for i in g),
                        max(i["height"] for i in g)) for (f, m), g in groups.items()), key=lambda r: -r[2])
    if name == "mix_loudness":
        groups = defaultdict(list)
        for m in _rows(run, "mixes"):
            if m["status"] == "ok":
                groups[m["variant"]].append(m)
        out = []
        for vlm, ms in sorted(groups.items()):
            per_mix = [mean(c["gain_db"] for c in m["components"] if c["included"]) for m in ms]
            out.append((vlm, len(ms), _r(mean(m["n_components"] for m in ms), 2), _r(mean(m["lufs"] for m in ms), 2),
                        sum(1 for m in ms if m["mix_gain_db"] < 0), _r(min(m["mix_gain_db"] for m in ms), 2),
                        sum(1 for m in ms for c in m["components"] if not c["included"]), _r(mean(per_mix), 2)))
        return out
    if name == "retrieval_modes":
        rows = [(m["mode"], m["chunk_id"], m["n_eligible"]) for t in ("matches", "match_ablations")
                for m in _rows(run, t) if m["status"] == "ok"]
        out = []
        for mode in sorted({r[0] for r in rows}):
            mine = [r for r in rows if r[0] == mode]
            uses = Counter(r[1] for r in mine)
            counts = sorted(uses.values(), reverse=True)
            pools = [r[2] for r in mine]
            out.append((mode, len(mine), len(uses), _r(len(uses) / len(mine), 3), counts[0], counts[:5],
                        dict(Counter(counts)), _r(mean(pools), 2), median(pools)))
        return out
    if name == "shards_by_split":
        groups = defaultdict(list)
        for s in _rows(run, "shard_index"):
            if s["status"] == "ok":
                groups[s["split"]].append(s)
        size = lambda s: s["latent_bytes"] + s["ast_bytes"] + s["json_bytes"] + s["jpg_bytes"] + s["flac_bytes"]  # noqa: E731
        return [(split, len({s["shard"] for s in g}), len(g), len({s["image_id"] for s in g}),
                 _r(sum(size(s) for s in g) / 2 ** 20, 2), float(round(mean(s["ast_bytes"] for s in g))),
                 float(round(mean(s["latent_bytes"] for s in g)))) for split, g in sorted(groups.items(), reverse=True)]
    if name in ("top_concepts", "all_concepts"):
        n = Counter(c["object"].lower() for r in _rows(run, "concepts") if r["status"] == "ok" for c in r["concepts"])
        return sorted(n.items(), key=lambda kv: -kv[1])[:20 if name == "top_concepts" else None]
    raise AssertionError(f"no reference for {name}")


def _same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        return got == pytest.approx(want, abs=1e-9)
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    return got == want


# queries with ties in their ORDER BY are compared as sets of rows; their own ORDER BY key is checked
_TIES = {"filter_decisions": 2, "image_modes": 2, "top_concepts": 1, "chunk_padding": 2}


@pytest.mark.parametrize("query", [q for q in QUERIES if q.stem != "status_by_table"],
                         ids=[q.stem for q in QUERIES if q.stem != "status_by_table"])
def test_documented_query_answers_equal_a_plain_python_reference(demo_run, query):
    """Every saved query's rows equal the same question answered in Python over the tables
    (status_by_table has its own test below). A wrong filter, join or aggregate in a query fails here."""
    from collections import defaultdict

    got = [tuple(r) for r in connect(demo_run).sql(query.read_text()).fetchall()]
    want = [tuple(r) for r in _reference(demo_run, query.stem)]
    assert want, f"the demo run gives {query.name} nothing to answer"
    if query.stem == "filter_decisions":   # any_value(example caption): the first hit of one of the group's rows
        firsts = defaultdict(set)
        for k in _rows(demo_run, "kept_images"):
            firsts[(k["kept"], k["reason"] or "kept")].add((k["caption_hits"] or [None])[0])
        assert all(r[3] in firsts[r[:2]] for r in got), got
        got = [r[:3] for r in got]
    if query.stem == "top_concepts":       # any_value(example query); LIMIT 20 may cut inside a tie
        texts = defaultdict(set)
        for c in (c for r in _rows(demo_run, "concepts") if r["status"] == "ok" for c in r["concepts"]):
            texts[c["object"].lower()].add(c["text"])
        assert all(r[2] in texts[r[0]] for r in got), got
        got = [r[:2] for r in got]
        last = want[-1][1]
        assert {o for o, n in got if n == last} <= {o for o, n in _reference(demo_run, "all_concepts") if n == last}
        got, want = [r for r in got if r[1] > last], [r for r in want if r[1] > last]
    if query.stem in _TIES:
        key = _TIES[query.stem]
        assert [r[key] for r in got] == [r[key] for r in want], f"{query.name}: order"
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert _same(got, want), f"{query.name}:\n got  {got}\n want {want}"


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
    assert main(["run=nope", "SELECT 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run=nope names no run" in err[0] and "no pipeline 'nope'" in err[0]


def test_a_file_with_the_wrong_schema_version_is_refused(demo_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(demo_run / "manifests", run / "manifests")
    bad = pa.table({"id": ["x"], "status": ["ok"]}).replace_schema_metadata({"sonify.table": "images", "sonify.schema_version": "0"})
    pq.write_table(bad, run / "manifests" / "images" / "part-old.parquet")
    with pytest.raises(SchemaError, match="schema v0, code expects .images. v4"):
        TableStore(run).read("images")
    with pytest.raises(SchemaError):
        connect(run)


def test_the_summary_says_where_every_row_went(demo_run):
    """Per table line: rows = passed + dropped + errors, rows in is each stage's keyed table's own input
    (embed_audio's audio chunks and embed_text's concept texts apart), and the filter's drops are columns, with reasons."""
    import json

    from sonify.engine.executor import StageRun
    from sonify.engine.summary import format_summary
    runs = [StageRun(**d) for d in json.loads((demo_run / "summary.json").read_text())]
    text = format_summary(runs)
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


@pytest.mark.parametrize("sql, table", [("SELECT count(*) FROM mixes", "mixes"),
                                        ("SELECT * FROM images i JOIN Matches m ON m.image_id = i.id", "matches")])
def test_a_table_not_built_yet_says_run_its_stage(tmp_path, sql, table, capsys):
    """docs/cli.md: a declared table the run has no partitions of is the store's line, not DuckDB's catalog error."""
    store = TableStore(tmp_path)
    store.write_partition("images", "p0", TABLES["images"].schema.empty_table())
    assert main([f"run={tmp_path}", sql]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sonify.query: table {table!r} has no partitions under {store.table_dir(table)}; run its stage first"], err


def test_an_unknown_table_keeps_duckdbs_message(tmp_path, capsys):
    TableStore(tmp_path).write_partition("images", "p0", TABLES["images"].schema.empty_table())
    assert main([f"run={tmp_path}", "SELECT * FROM no_such_table"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_table" in err[0] and "Catalog Error" in err[0], err
