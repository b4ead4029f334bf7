"""Shared fixtures: demo data made once per session, configs pointed at temp dirs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; read at import by huggingface_hub
# token auth, a local Ray's default, said explicitly: a driver joining the session's Ray head (`ray_head`)
# sends the token only in this mode, which Ray reads when it is imported
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pytest

from sonify.engine.config import load_config, save_config
from sonify.sources.demo import ensure_demo_data
from sonify.stages import STAGES, get_stage, stage_names

REPO = Path(__file__).resolve().parents[1]
NO_BACKOFF = ("run.retry_backoff_s=0",)   # a test that provokes a retry never waits for it


RAY_FIXTURES = {"ray_head", "ray_driver"}


def pytest_itemcollected(item):
    """A test on the session's Ray head is marked `ray`: `make test` runs the others on two processes
    (pytest-xdist) and these in one process after them, with one head (two processes would start two
    heads, racing for ports on a 2-core machine)."""
    if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    return ensure_demo_data(tmp_path_factory.mktemp("demo_data"), num_images=12, seed=0)


@pytest.fixture
def make_cfg(tmp_path, demo_dir):
    """Demo pipeline config over the session's demo data, writing under tmp_path, local executor."""

    def make(*overrides: str):
        return load_config([
            "pipeline=demo", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}",
            "demo_data.enabled=false", "run.executor=local", "run.progress=false", *NO_BACKOFF, *overrides,
        ], stage_names())

    return make


ALL_STAGES = tuple(STAGES)   # every stage, in pipeline order (the registry is the one list)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, demo_dir):
    """Every stage once over the demo data (imported concepts only, local executor), shared read-only.

    Returns (cfg, args); tests that change a run copy it first (`copy_run`).
    """
    from sonify.engine.executor import run_stage

    root = tmp_path_factory.mktemp("full_run")
    args = ["pipeline=demo", f"run.root={root / 'runs'}", f"demo_data.dir={demo_dir}", "demo_data.enabled=false",
            "run.executor=local", "run.progress=false", "models.vlms=[]", f"models.tiny_dir={root / 'tiny'}",
            "stages.mix.release_jsonl=true", *NO_BACKOFF]
    cfg = load_config(args, stage_names())
    save_config(cfg, Path(cfg.run.dir) / "config.yaml")   # as `sonify.run` does: report and export read its source roots
    for stage in ALL_STAGES:
        assert not run_stage(get_stage(stage), cfg, progress_bar=False).failed, stage
    return cfg, args


def copy_run(full_run, dest: Path, *overrides: str):
    """A private copy of the shared run under `dest`, with config overrides."""
    import shutil

    cfg, args = full_run
    shutil.copytree(cfg.run.dir, dest / "runs" / "demo")
    return load_config([*args, f"run.root={dest / 'runs'}", *overrides], stage_names())


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _paper_algorithm1(q, pool, k, rng):
    """Algorithm 1 of the paper, line by line on the full score vector, as the test reference.

    Written from the paper alone (nothing from `sonify.retrieval`): t = cos(q, P); t = sign(t) sqrt(|t|);
    lb = mean(topk(t, k)) by a full sort and a correctly rounded sum; I = {i : t_i > lb}; i ~ U(I).
    The paper leaves I = {} open (k = 1, or the top k all equal); the documented rule is a uniform
    choice among the chunks tied at the maximum. Returns (I sorted by pool row, the chosen row).
    """
    import math

    import numpy as np

    t = (np.asarray(pool, np.float32) @ np.asarray(q, np.float32)).astype(np.float64)   # the scores, from the stored float32 vectors
    t = np.sign(t) * np.sqrt(np.abs(t))
    top = np.sort(t)[::-1][:min(k, t.size)]
    lb = math.fsum(top.tolist()) / top.size
    eligible = np.flatnonzero(t > lb)
    if eligible.size == 0:
        eligible = np.flatnonzero(t == t.max())
    return eligible, int(eligible[rng.integers(eligible.size)])


@pytest.fixture(scope="session")
def paper_algorithm1():
    return _paper_algorithm1


@pytest.fixture(scope="session")
def demo_cli_run(tmp_path_factory, demo_dir):
    """`python -m sonify.run pipeline=demo stage=all` as a user runs it (progress bars on), in a
    subprocess over the session's demo data with the local executor; its stdout and stderr kept."""
    import subprocess
    import sys
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("cli_run")
    cmd = [sys.executable, "-m", "sonify.run", "pipeline=demo", "stage=all", f"run.root={root / 'runs'}",
           f"demo_data.dir={demo_dir}", "demo_data.enabled=false", "run.executor=local", f"models.tiny_dir={root / 'tiny'}",
           *NO_BACKOFF]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return SimpleNamespace(run_dir=root / "runs" / "demo", stdout=p.stdout, stderr=p.stderr)


def free_ports(n: int) -> list[int]:
    """`n` free TCP ports above Ray's default worker port range (10002-19999)."""
    ports = []
    for port in range(20000 + os.getpid() % 5000, 30000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError("no free ports")


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray head for every Ray test of the session (2 CPUs, 8 declared GPUs); its address.

    Started as `ray start --head --block` in a process group of its own, on free ports and a temp
    folder of its own (other Rays on the machine are left alone); tests join it with `ray.address=`
    or `ray_driver`. At the end only this group is stopped: never `ray stop`, which stops every Ray
    on the machine."""
    gcs, client, agent, agent_grpc, metrics, env_agent = free_ports(6)
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")   # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",   # workers import this checkout's sonify
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"   # what runs on it (Ray Train's own actors) finds this head, not another Ray on the machine
    log = Path(temp) / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=2", "--num-gpus=8",
             "--include-dashboard=false", "--object-store-memory=300000000", "--disable-usage-stats",
             f"--port={gcs}", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={env_agent}", f"--temp-dir={temp}"],
            env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in log.read_bytes():   # `ray start` says so once the node is up
            assert head.poll() is None, f"ray head exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"ray head not up after 180 s: {log.read_text()[-2000:]}"
            time.sleep(0.2)   # polling a subprocess's log, not pacing the code under test
        yield f"127.0.0.1:{gcs}"
    finally:
        import shutil

        for sig, grace in ((signal.SIGTERM, 1), (signal.SIGKILL, 30)):   # only the group this fixture started
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_driver(ray_head):
    """This process joined to the session's Ray head for one test, then disconnected (the head stays up)."""
    import ray

    from sonify.engine.cluster import init_ray

    init_ray(ray_head)
    yield ray_head
    ray.shutdown()
