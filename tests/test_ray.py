"""Ray paths: the stage runner on a local Ray, and `ray job submit` against a head this test starts."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_ports

from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.stages import get_stage

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def _sorted(table):
    return table.sort_by("id").to_pylist()


def test_ray_data_executor_matches_local_executor(make_cfg, tmp_path, capfd, ray_head):
    import ray

    local_cfg = make_cfg()
    ray_cfg = make_cfg(f"run.root={tmp_path / 'ray_runs'}", "run.executor=ray", f"ray.address={ray_head}")
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
    for line in ("Token authentication is enabled", "Progress bars disabled", "execution finished in",
                 "core_worker", "gcs_server", "raylet"):   # nor Ray's C++ log lines (actors built from small arguments)
        assert line not in err, err[-2000:]


def _readme_ray_lines() -> tuple[list[str], str]:
    """The README's offline lines: the `ray start --head` flags and the `ray job submit` line, as written."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## On a Ray cluster"):].split("```sh")[1].split("```")[0]
    start = next(line for line in block.splitlines() if line.startswith("ray start --head"))
    submit = next(line for line in block.splitlines() if line.startswith("ray job submit"))
    return start.split()[3:], submit


@pytest.mark.slow
def test_the_readme_ray_job_submit_line_runs_against_a_head_started_as_the_readme_says(tmp_path):
    """In a copy of the checkout: `make demo`'s first stage locally, then the README's line for stage=concepts
    as a Ray job; its table equals a local run's, with no extra error rows."""
    head_flags, submit = _readme_ray_lines()
    assert "--working-dir ." in submit and "stage=concepts" in submit and "run.root=$PWD/runs" in submit
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info",
                                                                  ".pytest_cache", "artifacts", ".hypothesis"))
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    local = [sys.executable, "-m", "sonify.run", "pipeline=demo", "run.executor=local", "run.progress=false"]
    subprocess.run([*local, "stage=images"], cwd=checkout, env=env, check=True, capture_output=True, timeout=300)
    gcs, dash, client, agent = free_ports(4)
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", *head_flags, f"--port={gcs}", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        job_env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}", "RAY_AUTH_MODE": "token"}
        deadline = time.time() + 60
        while time.time() < deadline:
            if subprocess.run(["ray", "job", "list"], env=job_env, capture_output=True).returncode == 0:
                break
            assert head.poll() is None, "ray head exited"
            time.sleep(1)
        out = subprocess.run(["bash", "-c", submit], cwd=checkout, env=job_env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "succeeded" in (out.stdout + out.stderr)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):   # only the group this test started, if any of it is left
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break   # the whole group has exited: nothing to stop, and the body's own failure stays the one shown
            try:
                head.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        head.wait()
    subprocess.run([*local, "stage=images,concepts", f"run.root={tmp_path / 'local'}"], cwd=checkout, env=env, check=True,
                   capture_output=True, timeout=400)
    job_rows = TableStore(checkout / "runs" / "demo").read("concepts").to_pylist()
    local_rows = TableStore(tmp_path / "local" / "demo").read("concepts").to_pylist()
    key = lambda r: r["id"]
    assert sorted(job_rows, key=key) == sorted(local_rows, key=key)
    assert not [r for r in job_rows if (r["error"] or "").startswith("unreadable")]


def test_a_relative_run_root_inside_a_ray_job_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}
    out = subprocess.run([sys.executable, "-m", "sonify.run", "pipeline=demo", "stage=images", "run.root=runs"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "key 'run.root'" in lines[0] and "absolute" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow   # a Ray of its own in a subprocess: about 17 s
def test_a_stale_cluster_record_on_the_machine_is_not_joined(tmp_path, demo_dir):
    """A `ray_current_cluster` file naming a dead head (in a private Ray temp dir, never the machine's
    /tmp/ray): a run without ray.address / RAY_ADDRESS starts its own Ray, says so, and finishes."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="s28-", dir="/tmp"))   # short: Ray's socket paths must fit 107 bytes
    try:
        (ray_tmp / "ray").mkdir()
        dead = free_ports(1)[0]
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(REPO))
        p = subprocess.run([sys.executable, "-m", "sonify.run", "pipeline=demo", "stage=images", f"run.root={tmp_path}",
                            f"demo_data.dir={demo_dir}", "demo_data.enabled=false", "run.executor=ray", "run.progress=false",
                            "ray.num_cpus=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "ray: started a local Ray for this run (1 CPUs" in p.stdout, p.stdout
        assert f"127.0.0.1:{dead}" not in p.stdout + p.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_model_that_does_not_load_in_a_ray_worker_is_one_line_not_a_traceback(make_cfg, tmp_path, capfd, ray_head):
    """A worker's constructor that raises ModelNotAvailable reaches the driver as that error (one line,
    printed as such, exit 2), not as Ray's ActorDiedError with the worker's stack; the stage stops."""
    from sonify.run import main

    empty = tmp_path / "no_model"
    empty.mkdir()
    cfg = make_cfg()
    args = ["pipeline=demo", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={cfg.demo_data.dir}", "demo_data.enabled=false",
            "run.progress=false", f"models.tiny_dir={tmp_path / 'tiny'}"]
    assert main([*args, "stage=audio", "run.executor=local"]) == 0
    capfd.readouterr()
    assert main([*args, "stage=embed_audio", "run.executor=ray", f"ray.address={ray_head}", f"models.clap={empty}"]) == 2
    text = capfd.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("sonify")]
    assert len(err) == 1 and err[0].startswith(f"sonify: clap at {empty} could not be loaded"), err
    assert "ActorDiedError" not in text and "Traceback" not in text, text[-2000:]
