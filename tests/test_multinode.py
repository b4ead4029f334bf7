"""Faults beyond one process, on a multi-node Ray cluster simulated on this machine (`ray.cluster_utils.Cluster`:
a head with no CPUs and worker nodes with their own): a worker node lost mid-stage, a node joining mid-stage,
and the driver SIGKILLed mid-stage. Every stage still ends with every row once and the bytes of a local run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import copy_run

from sonify.engine.actors import WorkerShell   # the actor class every stage worker runs in
from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.stages import get_stage
from sonify.stages.images import ImagesStage

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


@pytest.fixture
def cluster(monkeypatch):
    """A head (no CPUs: it runs no actor) in a private Ray temp dir; tests add worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="m28-", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MB})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _connect(c) -> None:
    import ray

    ray.init(address=c.address, logging_level="WARNING")


def _blank(v):
    return re.sub(r"part-[0-9a-f]{16}", "part-*", v) if isinstance(v, str) else v


def _rows(cfg, table: str) -> list[dict]:
    """A table's rows by id, with partition names blanked (partitions are cut per run)."""
    rows = TableStore(cfg.run.dir).read(table).to_pylist()
    return sorted(({k: _blank(v) for k, v in r.items()} for r in rows), key=lambda r: r["id"])


def _forget(cfg, stage: str) -> None:
    store = TableStore(cfg.run.dir)
    for t in get_stage(stage).outputs:
        store.remove_partitions(t, store.partitions(t))


def _finished(cfg, stage: str) -> int:
    d = Path(cfg.run.dir) / "stats" / stage
    return len(list(d.glob("part-*.json"))) if d.is_dir() else 0


def _in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("result", fn()), daemon=True)
    t.start()
    return t, out


def _wait_for(cond, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


def _same_bytes(cfg, ref_cfg, stage: str) -> None:
    """Every output row once, equal to the local run's; the files they name have the same bytes."""
    for table in get_stage(stage).outputs:
        got, want = _rows(cfg, table), _rows(ref_cfg, table)
        assert len({r["id"] for r in got}) == len(got)
        assert got == want, table
    for table, sha in (("mixes", "flac_sha256"), ("audio_features", "sha256"), ("audio_embeddings", None)):
        if table in get_stage(stage).outputs and sha:
            import hashlib
            for r in TableStore(cfg.run.dir).read(table).to_pylist():
                if r["status"] == "ok":
                    assert hashlib.sha256((Path(cfg.run.dir) / r["path"]).read_bytes()).hexdigest() == r[sha]


@pytest.mark.parametrize("stage", ["features", "mix"])
def test_a_worker_node_lost_mid_stage(cluster, full_run, tmp_path, stage):
    """Two worker nodes with one actor each; one node is removed after the first partition: its partition
    goes to the other actor, the stage finishes, every row once, the local run's bytes."""
    ref_cfg = full_run[0]
    cfg = copy_run(full_run, tmp_path, "run.executor=ray", f"stages.{stage}.partition_rows=1",
                   f"stages.{stage}.concurrency=2", f"stages.{stage}.num_cpus=1")
    _forget(cfg, stage)
    shutil.rmtree(Path(cfg.run.dir) / "stats" / stage, ignore_errors=True)
    doomed = cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    _connect(cluster)
    t, out = _in_thread(lambda: run_stage(get_stage(stage), cfg, progress_bar=False))
    from ray.util.state import list_actors

    def on_doomed():
        return [a for a in list_actors(filters=[("class_name", "=", WorkerShell.__name__), ("state", "=", "ALIVE")])
                if a.node_id == doomed.node_id]

    # a partition finished and the doomed node's actor built (on a loaded machine the other actor can finish
    # a partition while this one still loads its model: the node then went before it held a worker)
    _wait_for(lambda: _finished(cfg, stage) >= 1 and on_doomed())
    on_doomed = on_doomed()
    finished_then = _finished(cfg, stage)
    cluster.remove_node(doomed, allow_graceful=False)
    assert on_doomed, "the removed node held no worker"
    t.join(600)
    run = out["result"]
    assert not run.failed and run.computed == run.partitions
    assert _finished(cfg, stage) == run.partitions and finished_then < run.partitions - 2   # the node went mid-stage
    _same_bytes(cfg, ref_cfg, stage)


class NodeProbeStage(ImagesStage):
    """The images stage, noting which node ran each partition. A gate, not a sleep: after its first two
    partitions a node holds the next one until a partition has run on another node (the one the test
    adds), so the late node is sure to find work left."""

    def process_batch(self, batch):
        import ray

        node = ray.get_runtime_context().get_node_id()
        nodes = self.run_dir / "nodes"
        nodes.mkdir(exist_ok=True)
        tmp = nodes / f".{self.partition}.tmp"
        tmp.write_text(node)
        tmp.rename(nodes / f"{self.partition}.txt")   # whole or absent: a reader never sees half a node id
        _wait_for(lambda: sum(p.read_text() == node for p in nodes.glob("*.txt")) <= 2
                  or any(p.read_text() != node for p in nodes.glob("*.txt")))
        return super().process_batch(batch)


def test_a_node_added_mid_stage_receives_work(cluster, full_run, tmp_path):
    """Concurrency 2 with room for one actor: the second actor waits; a node joins mid-stage and it takes
    partitions there. The table equals the local run's."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # this module is not on the workers' path
    ref_cfg = full_run[0]
    cfg = copy_run(full_run, tmp_path, "run.executor=ray", "stages.images.partition_rows=1", "stages.images.concurrency=2",
                   "stages.images.num_cpus=1")
    _forget(cfg, "images")
    shutil.rmtree(Path(cfg.run.dir) / "stats" / "images", ignore_errors=True)
    first = cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    _connect(cluster)
    t, out = _in_thread(lambda: run_stage(NodeProbeStage, cfg, progress_bar=False))
    _wait_for(lambda: _finished(cfg, "images") >= 2)
    late = cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    t.join(600)
    run = out["result"]
    assert not run.failed and run.computed == run.partitions
    nodes = {p.read_text() for p in (Path(cfg.run.dir) / "nodes").glob("*.txt")}
    assert nodes == {first.node_id, late.node_id}
    _same_bytes(cfg, ref_cfg, "images")


def test_the_driver_killed_mid_stage_then_run_again_resumes_with_the_same_bytes(cluster, full_run, tmp_path):
    """`sonify.run` against the cluster (ray.address), SIGKILLed after its first finished partition with the
    cluster still up; the same command again resumes (finished partitions kept) and ends with the local bytes."""
    ref_cfg = full_run[0]
    cfg = copy_run(full_run, tmp_path)
    _forget(cfg, "features")
    _forget(cfg, "shards")
    shutil.rmtree(Path(cfg.run.dir) / "stats" / "features", ignore_errors=True)
    cluster.add_node(num_cpus=2, object_store_memory=80 * MB)
    _, args = full_run
    cmd = [sys.executable, "-m", "sonify.run", *[a for a in args if not a.startswith(("run.root", "run.executor"))],
           f"run.root={tmp_path / 'runs'}", "stage=features", "run.executor=ray", f"ray.address={cluster.address}",
           "stages.features.partition_rows=1", "stages.features.concurrency=2", "stages.features.num_cpus=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _finished(cfg, "features") >= 2 or p.poll() is not None)
        assert p.poll() is None, p.stdout.read()[-3000:]
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    before = _finished(cfg, "features")
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    skipped = int(re.search(r"^features .* (\d+)/(\d+)/0 ", again.stdout, re.M).group(2))
    assert 0 < before and skipped >= 1
    _same_bytes(cfg, ref_cfg, "features")
