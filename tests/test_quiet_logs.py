"""What a user sees: a demo run's stderr holds stage progress bars and nothing a user must learn to ignore."""

import re

import pytest

from sonify.stages import stage_names

# Lines a normal run may print on stderr besides the stage bars. Keep this short: a new entry is a
# decision that users should see that line.
ALLOWED: tuple[str, ...] = ()


def unexpected_lines(stderr: str) -> list[str]:
    """What is left once every stage bar is cut out (a bar has no newline: a warning may follow it on its line)."""
    bar = re.compile(rf"({'|'.join(stage_names())}): +\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]")
    pieces = (bar.sub("", p).strip() for line in stderr.split("\n") for p in line.split("\r"))
    return [p for p in pieces if p and not any(a in p for a in ALLOWED)]


def test_a_demo_run_prints_stage_bars_and_no_warnings(demo_cli_run):
    assert re.search(r"^shards: +100%\|", demo_cli_run.stderr.replace("\r", "\n"), re.M)   # the bars are there
    assert unexpected_lines(demo_cli_run.stderr) == []
    assert "Traceback" not in demo_cli_run.stdout and "warn" not in demo_cli_run.stdout.lower()


def test_the_filter_finds_what_it_is_for():
    """The check itself: warnings of the kinds this run used to print are caught; bars are not."""
    seen = unexpected_lines(
        "images:  50%|#####     | 2/4 [00:00<00:00]\rimages: 100%|##########| 4/4 [00:00<00:00, 5.0part/s, rows=2]\n"
        "features:  50%|#####     | 1/2 [00:00<00:00, 2.47part/s]"
        "/x/transformers/audio_utils.py:860: UserWarning: At least one mel filter has all zero values.\n"
        "Loading weights: 100%|██████████| 64/64\n"
        "There are modules in AutoencoderKL that should be kept in float32: [].\n")
    assert len(seen) == 3 and seen[0].startswith("/x/transformers") and seen[1].startswith("Loading weights")


@pytest.mark.slow
@pytest.mark.ray
def test_a_demo_run_on_ray_prints_no_line_of_rays_own_logs(tmp_path, demo_dir):
    """`stage=all` on a local Ray (actor pools for every stage, then teardown): none of Ray's C++ log lines
    (the core worker's object-store constructor warning, gcs_server's kill at teardown, the raylet's)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "sonify.run", "pipeline=demo", "stage=all", f"run.root={tmp_path / 'runs'}",
                        f"demo_data.dir={demo_dir}", "demo_data.enabled=false", "run.executor=ray",
                        f"models.tiny_dir={tmp_path / 'tiny'}"], cwd=repo, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert not [line for line in out.splitlines() if any(w in line for w in ("core_worker", "gcs_server", "raylet"))], out[-3000:]
    assert unexpected_lines(p.stderr) == []
