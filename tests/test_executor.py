import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from sonify.engine.config import load_config
from sonify.engine.executor import run_stage
from sonify.engine.ids import stable_id
from sonify.engine.store import TableStore
from sonify.stages import get_stage, stage_names
from sonify.stages.images import ImagesStage


def _ids(store, table):
    return store.read(table, columns=["id"]).column("id").to_pylist()


def test_rerun_skips_finished_partitions_and_force_recomputes(make_cfg):
    cfg = make_cfg()
    first = run_stage(get_stage("audio"), cfg, progress_bar=False)
    assert first.computed == first.partitions > 1 and first.skipped == 0 and not first.failed
    store = TableStore(cfg.run.dir)
    mtimes = {p: p.stat().st_mtime_ns for p in store.files("audio_files")}
    again = run_stage(get_stage("audio"), cfg, progress_bar=False)
    assert again.computed == 0 and again.skipped == first.partitions
    assert {p: p.stat().st_mtime_ns for p in store.files("audio_files")} == mtimes
    forced = run_stage(get_stage("audio"), make_cfg("run.force=true"), progress_bar=False)
    assert forced.computed == first.partitions
    ids = _ids(store, "audio_files")
    assert len(ids) == len(set(ids)) == first.rows_in


def test_every_input_row_has_exactly_one_output_row(make_cfg):
    cfg = make_cfg()
    run = run_stage(get_stage("images"), cfg, progress_bar=False)
    listing_ids = ImagesStage.work_list(cfg, None).column("id").to_pylist()
    out = _ids(TableStore(cfg.run.dir), "images")
    assert sorted(out) == sorted(set(listing_ids)) and run.tables["images"]["rows"] == len(out)
    counts = run.tables["images"]
    assert counts["ok"] + sum(counts["errors"].values()) == counts["rows"]
    assert {"corrupt", "truncated", "empty", "decompression_bomb"} <= set(counts["errors"])


def test_config_change_replaces_stale_partitions_without_duplicates(make_cfg):
    run_stage(get_stage("audio"), make_cfg(), progress_bar=False)
    cfg2 = make_cfg("stages.audio.chunk_seconds=2.0")
    run2 = run_stage(get_stage("audio"), cfg2, progress_bar=False)
    assert run2.stale_removed > 0 and run2.computed == run2.partitions
    store = TableStore(cfg2.run.dir)
    chunks = store.read("audio_chunks")
    assert pc.max(chunks.column("duration")).as_py() <= 2.0 + 1e-9
    ids = _ids(store, "audio_files")
    assert len(ids) == len(set(ids))


def test_temp_files_from_a_killed_writer_are_ignored_and_cleaned(make_cfg):
    cfg = make_cfg()
    run_stage(get_stage("audio"), cfg, progress_bar=False)
    store = TableStore(cfg.run.dir)
    junk = store.table_dir("audio_files") / ".tmp-part-dead-1234.parquet"
    junk.write_bytes(b"half a parquet file")
    assert junk not in store.files("audio_files")
    store.read("audio_files")  # the junk is not read
    run_stage(get_stage("audio"), cfg, progress_bar=False)
    assert not junk.exists()


def _attempts(cfg, stage: str) -> list[int]:
    return [json.loads(p.read_text())["attempts"] for p in (Path(cfg.run.dir) / "stats" / stage).glob("*.json")]


def test_stage_that_drops_a_row_fails_its_partition_loudly_and_at_once(make_cfg, monkeypatch):
    """The row-count check is the stage's contract: a retry would repeat the bug, so there is none."""
    cfg = make_cfg("stages.images.partition_rows=1000", "stages.images.batch_size=1000", "run.max_retries=3")
    real, calls = ImagesStage.process_batch, []

    def drops_one(self, b):
        calls.append(b.num_rows)
        return {"images": real(self, b)["images"].slice(1)}

    monkeypatch.setattr(ImagesStage, "process_batch", drops_one)
    run = run_stage(get_stage("images"), cfg, progress_bar=False)
    assert run.computed == 0 and len(run.failed) == 1 and "every input row" in run.failed[0]
    assert "StageContractError" in run.failed[0]
    assert _attempts(cfg, "images") == [1] and len(calls) == 1
    assert not TableStore(cfg.run.dir).exists("images")


def _raises_once(exc: Exception, returns=None):
    """A process_batch that raises `exc` on its first call, then behaves (or returns `returns(real output)`)."""
    real, calls = ImagesStage.process_batch, []

    def flaky(self, b):
        calls.append(1)
        if len(calls) == 1:
            raise exc
        out = real(self, b)
        return returns(out) if returns else out

    return flaky, calls


@pytest.mark.parametrize("exc", [KeyError("path"), TypeError("unsupported operand"), AttributeError("no attribute 'x'"),
                                 AssertionError("shapes"), NameError("name 'y' is not defined")],
                         ids=lambda e: type(e).__name__)
def test_a_programming_error_is_not_retried(make_cfg, monkeypatch, exc):
    cfg = make_cfg("stages.images.partition_rows=1000", "stages.images.batch_size=1000", "run.max_retries=3")
    flaky, calls = _raises_once(exc)
    monkeypatch.setattr(ImagesStage, "process_batch", flaky)
    run = run_stage(get_stage("images"), cfg, progress_bar=False)
    assert len(run.failed) == 1 and type(exc).__name__ in run.failed[0] and "\n" not in run.failed[0]
    assert _attempts(cfg, "images") == [1] and len(calls) == 1


def test_a_table_off_its_schema_is_not_retried(make_cfg, monkeypatch):
    cfg = make_cfg("stages.images.partition_rows=1000", "stages.images.batch_size=1000", "run.max_retries=3")
    real, calls = ImagesStage.process_batch, []

    def extra_column(self, b):
        calls.append(1)
        out = real(self, b)["images"]
        return {"images": out.append_column("surprise", pa.array([1] * out.num_rows))}

    monkeypatch.setattr(ImagesStage, "process_batch", extra_column)
    run = run_stage(get_stage("images"), cfg, progress_bar=False)
    assert len(run.failed) == 1 and "SchemaError" in run.failed[0] and "surprise" in run.failed[0]
    assert _attempts(cfg, "images") == [1] and len(calls) == 1


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), MemoryError(),
                                 RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")], ids=lambda e: type(e).__name__)
def test_a_transient_error_is_retried(make_cfg, monkeypatch, exc):
    cfg = make_cfg("stages.images.partition_rows=1000", "stages.images.batch_size=1000", "run.max_retries=3")
    flaky, calls = _raises_once(exc)
    monkeypatch.setattr(ImagesStage, "process_batch", flaky)
    run = run_stage(get_stage("images"), cfg, progress_bar=False)
    assert not run.failed and run.computed == 1
    assert _attempts(cfg, "images") == [2]


def test_sigkill_mid_run_then_rerun_has_every_input_exactly_once(tmp_path, demo_dir):
    """An image URL whose server never answers blocks the reader: the run is provably mid-way when we SIGKILL it.

    (A FIFO among the files no longer blocks anything: it is an error row `not_a_file`.)
    """
    import socket

    src = tmp_path / "imgs"
    shutil.copytree(demo_dir / "images", src, ignore=shutil.ignore_patterns("huge.png"))
    existing = [str(p) for p in src.rglob("*") if p.is_file()]
    silent = socket.socket()   # listens but never accepts: the request waits for an answer that never comes
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    # name the URL so that its id sorts last: every other partition runs before it blocks
    top = max(stable_id("kill", os.path.relpath(r, tmp_path)) for r in existing)   # ids key the path stored: relative to the list's folder
    base = f"http://127.0.0.1:{silent.getsockname()[1]}/zz.png"
    name = next(f"{base}?{i}" for i in range(10_000) if stable_id("kill", f"{base}?{i}") > top)
    (tmp_path / "list.csv").write_text("uri\n" + "\n".join([*existing, name]) + "\n")
    pipeline = tmp_path / "killtest.yaml"
    pipeline.write_text(yaml.safe_dump({"sources": {"images": [{"name": "kill", "kind": "csv", "path": str(tmp_path / "list.csv")}]}}))
    args = [f"pipeline={pipeline}", "stage=images", f"run.root={tmp_path / 'runs'}", "run.executor=local",
            "run.progress=false", "stages.images.partition_rows=1", "stages.images.url_timeout_s=600"]
    total = len(existing) + 1
    store = TableStore(tmp_path / "runs" / "killtest")
    proc = subprocess.Popen([sys.executable, "-m", "sonify.run", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request = None
    try:
        silent.settimeout(120)
        request, _ = silent.accept()   # the run's request for the last image has arrived: it now waits for an answer
        deadline = time.time() + 90
        while len(store.files("images")) < total - 1 and time.time() < deadline:   # the other partitions' files land
            assert proc.poll() is None, "run ended before it reached the silent server"
            time.sleep(0.05)
        done_before_kill = len(store.files("images"))
        assert done_before_kill == total - 1 and proc.poll() is None  # blocked on the last partition
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if request is not None:
            request.close()
        silent.close()   # the rerun's request is refused at once: an error row, the partition finishes
    cfg = load_config(args, stage_names())
    rerun = run_stage(get_stage("images"), cfg, progress_bar=False)
    assert rerun.skipped == done_before_kill and rerun.computed == 1
    ids = _ids(store, "images")
    assert len(ids) == len(set(ids)) == total
    assert stable_id("kill", name) in ids


def test_a_second_run_on_the_same_folder_refuses_at_once(tmp_path, demo_dir):
    """One writer per run folder: while a run holds the lock, another exits 2 in one line and writes nothing."""
    from sonify.engine.lock import RunLock

    run_dir = tmp_path / "runs" / "demo"
    args = ["pipeline=demo", "stage=images", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}",
            "demo_data.enabled=false", "run.executor=local", "run.progress=false"]
    with RunLock(run_dir):
        proc = subprocess.run([sys.executable, "-m", "sonify.run", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "in use by" in lines[0] and f"pid {os.getpid()}" in lines[0], proc.stderr
    assert not TableStore(run_dir).exists("images")
    # once released, the same command runs
    proc = subprocess.run([sys.executable, "-m", "sonify.run", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert TableStore(run_dir).exists("images")


def test_a_killed_runs_lock_is_taken_over(tmp_path, demo_dir):
    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text("deadhost pid 4194300\n")   # written by a run that was SIGKILLed
    args = ["pipeline=demo", "stage=images", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}",
            "demo_data.enabled=false", "run.executor=local", "run.progress=false"]
    proc = subprocess.run([sys.executable, "-m", "sonify.run", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "took over the lock of deadhost pid 4194300" in proc.stdout
    assert (run_dir / ".lock").read_text() == ""   # released: nobody holds it


def _race_for_lock(run_dir, barrier, done, results):
    from sonify.engine.lock import RunLock, RunLocked

    lock = RunLock(run_dir)
    barrier.wait()                       # every process tries at the same moment
    try:
        lock.acquire()
        results.put("acquired")
    except RunLocked as e:
        results.put(f"refused: {e}")
        return
    done.wait(60)                        # hold it until every contender has tried
    lock.release()


def test_runs_racing_for_one_folder_exactly_one_gets_it(tmp_path):
    """Four processes released by one barrier take the run lock at the same moment: exactly one holds
    it, the others are refused in one line. No outcome where the race did not happen is accepted."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, done, results = ctx.Barrier(4), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race_for_lock, args=(tmp_path / "runs" / "demo", barrier, done, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    done.set()
    for p in procs:
        p.join(60)
    assert outcomes[0] == "acquired" and all(o.startswith("refused: ") and "in use by" in o for o in outcomes[1:]), outcomes
