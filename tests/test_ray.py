"""Ray paths: the stage runner on a local Ray, and `ray job submit` against a head this test starts."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.stages import get_stage

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def _sorted(table):
    return table.sort_by("id").to_pylist()


def test_ray_data_executor_matches_local_executor(make_cfg, tmp_path, capfd):
    import ray

    local_cfg = make_cfg()
    ray_cfg = make_cfg(f"run.root={tmp_path / 'ray_runs'}", "run.executor=ray")
    from sonify.engine.cluster import connect_ray

    connect_ray(ray_cfg)
    try:
        for stage in ("images", "audio"):
            r_local = run_stage(get_stage(stage), local_cfg, progress_bar=False)
            r_ray = run_stage(get_stage(stage), ray_cfg, progress_bar=False)
            assert r_ray.computed == r_ray.partitions > 1 and not r_ray.failed
            assert r_local.tables == r_ray.tables
        for table in ("images", "audio_files", "audio_chunks"):
            a, b = TableStore(local_cfg.run.dir).read(table), TableStore(ray_cfg.run.dir).read(table)
            assert _sorted(a) == _sorted(b), table
        assert run_stage(get_stage("audio"), ray_cfg, progress_bar=False).skipped > 0  # resume works on Ray too
    finally:
        ray.shutdown()
    err = capfd.readouterr().err   # what a user would see: none of Ray's start-up and Ray Data chatter
    for line in ("Token authentication is enabled", "Progress bars disabled", "execution finished in"):
        assert line not in err, err[-2000:]


def _free_ports(n: int) -> list[int]:
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


def test_ray_job_submit_runs_a_stage_on_a_head_started_here(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, client, agent = _free_ports(4)
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        job_env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}", "RAY_AUTH_MODE": "token"}
        deadline = time.time() + 60
        while time.time() < deadline:
            ok = subprocess.run(["ray", "job", "list"], env=job_env, capture_output=True).returncode == 0
            if ok:
                break
            assert head.poll() is None, "ray head exited"
            time.sleep(1)
        run_root = tmp_path / "jobruns"
        out = subprocess.run(
            ["ray", "job", "submit", "--working-dir", str(REPO), "--",
             "python", "-m", "sonify.run", "pipeline=demo", "stage=audio", f"run.root={run_root}", "run.progress=false"],
            env=job_env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "audio_files" in out.stdout and "succeeded" in (out.stdout + out.stderr)
        store = TableStore(run_root / "demo")
        files = store.read("audio_files")
        assert files.num_rows >= 10 and store.read("audio_chunks").num_rows > files.num_rows
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(head.pid, signal.SIGKILL)  # only the group this test started
        head.wait()
