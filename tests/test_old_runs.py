"""A run folder written before the renames (previous schema versions) is recomputed once by today's code,
then skipped; nothing is lost and no id or hash changes.

The old run is made by the code of commit 2ae2197 (the last commit before the renames), taken from this
repository's history with `git archive` and run in a subprocess over the session's demo data.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import pytest
from conftest import NO_BACKOFF, REPO

OLD_COMMIT = "2ae2197"
# what must come through unchanged: ids and content hashes of the tables users and trainers read
SAME = {"images": "id, sha256, status, error", "audio_chunks": "id, pcm_sha256, status", "concepts": "id, status, error",
        "matches": "id, chunk_id, cosine, status", "mixes": "id, pcm24_sha256, flac_sha256, status",
        "shard_index": "id, split, shard, position, status"}


def _old_code(dest: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    have = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"], capture_output=True)
    if have.returncode:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout's history")
    data = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "sonify", "pipelines", "prompts"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="data")
    return dest


def _run(code: Path, args: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    p = subprocess.run([sys.executable, "-m", "sonify.run", *args], cwd=code, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _summary(run_dir: Path) -> dict[str, dict]:
    return {s["stage"]: s for s in json.loads((run_dir / "summary.json").read_text())}


def _tables(run_dir: Path) -> dict[str, set]:
    return {t: set(duckdb.sql(f"SELECT {cols} FROM read_parquet('{run_dir}/manifests/{t}/*.parquet')").fetchall())
            for t, cols in SAME.items()}


@pytest.mark.slow
def test_an_old_run_folder_is_recomputed_once_then_skipped(tmp_path, demo_dir):
    old = _old_code(tmp_path / "old")
    args = ["pipeline=demo", "stage=all", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}", "demo_data.enabled=false",
            "run.executor=local", "run.progress=false", "models.vlms=[]", f"models.tiny_dir={tmp_path / 'tiny'}", *NO_BACKOFF]
    run_dir = tmp_path / "runs" / "demo"
    _run(old, args)
    before = _tables(run_dir)
    assert "vlm" in duckdb.sql(f"SELECT * FROM read_parquet('{run_dir}/manifests/mixes/*.parquet') LIMIT 0").columns

    _run(REPO, args)
    first = _summary(run_dir)
    assert all(s["computed"] > 0 and not s["failed"] for s in first.values()), first   # every stage's schemas or inputs changed
    assert first["images"]["stale_removed"] > 0                                       # the old partitions are gone
    assert _tables(run_dir) == before                                                 # nothing lost, no id or hash changed

    from sonify.engine.store import TableStore

    store = TableStore(run_dir)
    assert "variant" in store.read("mixes").column_names and "relpath" not in store.read("images").column_names  # today's schemas

    _run(REPO, args)
    second = _summary(run_dir)
    assert sum(s["computed"] for s in second.values()) == 0, second
    assert all(s["skipped"] == first[name]["partitions"] for name, s in second.items())
