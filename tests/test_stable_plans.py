"""Order-stable plans: a work list's content, hence every partition name and decision, never depends on
the order rows arrive in (DuckDB's thread count, the order of a table's files)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ALL_STAGES

from sonify.engine import executor, partitions
from sonify.engine.store import TableStore, rows_to_table
from sonify.stages import get_stage
from sonify.stages.filter import FilterStage

_PLANNER = partitions.planner_connection


def _filter_store(run_dir: Path, first: str, second: str) -> TableStore:
    """One image captioned by two VLMs, the captions in two partition files named so that `first` is read first."""
    store = TableStore(run_dir)
    store.write_partition("images", "part-0", rows_to_table("images", [{"id": "img", "status": "ok"}]))
    store.write_partition("concepts", "part-0", rows_to_table("concepts", [
        {"id": f"{v}-img", "image_id": "img", "variant": v, "n_concepts": 1, "status": "ok"} for v in ("alpha", "zeta")]))
    captions = {"zeta": "a company logo on a wall", "alpha": "a stop sign by the road"}
    for part, vlm in ((first, "zeta"), (second, "alpha")):
        store.write_partition("captions", part, rows_to_table("captions", [
            {"id": f"{vlm}-img", "image_id": "img", "variant": vlm, "caption": captions[vlm], "status": "ok"}]))
    return store


@pytest.mark.parametrize("names", [("part-a", "part-b"), ("part-b", "part-a")])
def test_filter_reason_follows_the_vlm_order_not_the_file_order(tmp_path, make_cfg, names):
    """Captions sorted by VLM name, the reason is the first hit's keyword: 'alpha' (sign) before 'zeta' (logo),
    whichever file DuckDB reads first (the old unordered `list(caption)` followed the files)."""
    cfg = make_cfg()
    store = _filter_store(tmp_path / "run", *names)
    (row,) = FilterStage.work_list(cfg, store).to_arrow_table().to_pylist()
    assert row["captions"] == ["a stop sign by the road", "a company logo on a wall"]
    decision = FilterStage(cfg).decide(row["variants"], row["captions"])
    assert decision["reason"] == "keyword:sign"
    assert decision["caption_hits"] == row["captions"]


def _threads(monkeypatch, n: int) -> None:
    """Every planner and work-list connection at `n` DuckDB threads."""
    def at_n(*a, **kw):
        con = _PLANNER(*a, **kw)
        con.execute(f"SET threads = {n}")
        return con

    monkeypatch.setattr(partitions, "planner_connection", at_n)
    monkeypatch.setattr(executor, "planner_connection", at_n)


@pytest.mark.slow
def test_every_demo_stage_plans_the_same_ten_times_at_one_and_four_threads_and_a_rerun_computes_nothing(
        tmp_path, demo_dir, monkeypatch):
    """The demo with its tiny VLM (two captions per image), run once; then every stage planned 10 times at
    DuckDB 1 and 4 threads gives the same plan file; then `stage=all` again computes no partition."""
    from sonify.engine.config import load_config
    from sonify.run import run_pipeline
    from sonify.stages import stage_names

    cfg = load_config(["pipeline=demo", "stage=all", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}",
                       "demo_data.enabled=false", "run.executor=local", "run.progress=false",
                       f"models.tiny_dir={tmp_path / 'tiny'}"], stage_names())
    assert run_pipeline(cfg) == 0
    store = TableStore(cfg.run.dir, str(cfg.run.plan_memory))
    for name in ALL_STAGES:
        cls, seen = get_stage(name), set()
        for threads in (1, 4):
            _threads(monkeypatch, threads)
            for i in range(10):
                d = tmp_path / "plans" / f"{name}-{threads}-{i}"
                d.mkdir(parents=True)
                planned = executor.plan_stage(cls, cfg, store, d)
                rows = pq.read_table(planned.path)
                seen.add((tuple(planned.partitions), rows.to_pandas().to_json()))
        assert len(seen) == 1, f"stage {name}: {len(seen)} different plans"
    monkeypatch.undo()
    import json

    assert run_pipeline(cfg) == 0
    summary = json.loads((Path(cfg.run.dir) / "summary.json").read_text())
    assert {s["stage"]: s["computed"] for s in summary} == {s: 0 for s in ALL_STAGES}


def test_a_stage_whose_input_table_is_missing_says_which_stage_to_run_first(tmp_path, demo_dir, capsys):
    """A fresh run folder: every stage that reads a table fails in one line naming the table and the stage
    that writes it, exit 2 (it was a FileNotFoundError traceback)."""
    import re

    from sonify.run import main
    from sonify.stages import producer_of

    for stage in ALL_STAGES[2:]:
        code = main(["pipeline=demo", f"stage={stage}", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}",
                     "demo_data.enabled=false", "run.executor=local", "run.progress=false", f"run.name=fresh-{stage}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (stage, err)
        found = re.fullmatch(rf"sonify: stage {stage} needs table (\w+): run stage=(\w+) first", err[0])
        assert found, err[0]
        assert found.group(1) in get_stage(found.group(2)).outputs and producer_of(found.group(1)) == found.group(2)
