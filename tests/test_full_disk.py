"""A really full disk: the run folder on a small tmpfs that fills up mid-stage. The stage stops in one line
naming the folder, no partial partition is ever taken for finished, and once space is freed the same
command finishes with the bytes of an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sonify.engine.store import TableStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs mounted at tmp_path/disk for this test only (skipped, in one line, where mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _mixes(run_dir: Path) -> dict[str, str]:
    """Every ok mixture's id and flac sha256, checked against the file its row names."""
    out = {}
    for r in TableStore(run_dir).read("mixes").to_pylist():
        if r["status"] == "ok":
            assert hashlib.sha256((run_dir / r["path"]).read_bytes()).hexdigest() == r["flac_sha256"], r["id"]
            out[r["id"]] = r["flac_sha256"]
    return out


def test_a_disk_full_mid_stage_stops_in_one_line_keeps_no_partial_partition_and_the_rerun_matches(full_run, small_disk):
    cfg, args = full_run
    run_dir = small_disk / "runs" / "demo"
    shutil.copytree(cfg.run.dir, run_dir, ignore=shutil.ignore_patterns("mixes", "shards", "features"))
    for table in ("mixes", "audio_features", "image_latents", "shard_index"):
        shutil.rmtree(run_dir / "manifests" / table, ignore_errors=True)
    want = _mixes(Path(cfg.run.dir))
    mix_bytes = sum(f.stat().st_size for f in (Path(cfg.run.dir) / "mixes").rglob("*.flac"))
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    with open(filler, "wb") as f:   # leave room for about half of the mixtures
        f.write(b"\0" * max(0, free - mix_bytes // 2))
    cmd = [sys.executable, "-m", "sonify.run", *[a for a in args if not a.startswith("run.root")],
           f"run.root={small_disk / 'runs'}", "stage=mix", "stages.mix.partition_rows=4", "run.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    full = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = full.stderr.strip().splitlines()
    assert full.returncode != 0 and len(lines) == 1, full.stderr[-3000:]
    assert re.fullmatch(rf"sonify: no space left on device under {re.escape(str(run_dir))} \(stage mix\): .*", lines[0]), lines
    assert "Traceback" not in full.stdout + full.stderr
    kept = _mixes(run_dir) if TableStore(run_dir).exists("mixes") else {}   # finished partitions only, every file whole
    assert len(kept) < len(want) and all(want[i] == h for i, h in kept.items())
    assert not [p for p in run_dir.rglob("*") if p.name.startswith(".tmp")]

    filler.unlink()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _mixes(run_dir) == want
    release = lambda d: (d / "release" / "release.parquet").read_bytes()
    assert release(run_dir) == release(Path(cfg.run.dir))
