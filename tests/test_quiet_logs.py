"""What a user sees: a demo run's stderr holds stage progress bars and nothing a user must learn to ignore."""

import re

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
