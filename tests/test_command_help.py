"""Every `python -m sonify.*` command that the README and docs/ show answers `--help`: exit 0 and a usage text.
In-process (each command has a `main(argv)`), so the whole check costs one import of each command."""

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "manifests" / "README.md", REPO / "BENCHMARKS.md"]
WITH_SUBCOMMANDS = {"bench", "evaluate", "export"}   # the word after these is a subcommand with its own --help


def shown_commands() -> list[tuple[str, ...]]:
    found = set()
    for doc in DOCS:
        for module, rest in re.findall(r"python -m sonify\.([a-z_]+)((?: [a-z][a-z_-]*)?)", doc.read_text()):
            sub = rest.strip()
            found.add((module, sub) if module in WITH_SUBCOMMANDS and sub else (module,))
    return sorted(found)


def test_the_docs_show_the_mission_commands():
    shown = {c[0] for c in shown_commands()}
    assert {"run", "mix", "train_dit", "query", "generate", "evaluate", "experiments", "report", "export", "app", "bench"} <= shown


def _main(command: tuple[str, ...]):
    if command[0] == "bench":
        from sonify.bench.__main__ import BENCHES

        if len(command) == 1:
            from sonify.bench.__main__ import main

            return main, ["--help"]
        assert command[1] in BENCHES, f"the docs show `python -m sonify.{' '.join(command)}`, which is no benchmark"
        return importlib.import_module(BENCHES[command[1]]).main, ["--help"]
    return importlib.import_module(f"sonify.{command[0]}").main, [*command[1:], "--help"]


@pytest.mark.parametrize("command", shown_commands(), ids=" ".join)
def test_each_shown_command_answers_help(command, capsys):
    main, argv = _main(command)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert code in (0, None), f"python -m sonify.{' '.join(command)} --help exited {code}: {text[-500:]}"
    # argparse's "usage:" line, or (the key=value commands) a text naming the command and its keys
    assert ("usage:" in text.lower() or f"python -m sonify.{command[0]}" in text) and len(text.strip().splitlines()) >= 2, text


COMMANDS = ("run", "mix", "query", "train_dit", "evaluate", "export", "report", "generate", "experiments", "recipes", "app")


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_argument_is_one_line_and_exit_2(name, capsys):
    """docs/cli.md: every command answers an argument it does not know with one line and exit status 2."""
    main = importlib.import_module(f"sonify.{name}").main
    try:
        code = main(["--no-such-flag"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sonify:" if name == "run" else f"sonify.{name}:"), (code, err)


A_FILE = str(Path(__file__).resolve())   # an existing file where a folder is asked for
BAD_VALUES = [("report", ["--out", A_FILE], "--out"), ("report", ["--page-size", "0"], "--page-size"),
              ("report", ["--max-images", "-1"], "--max-images"), ("report", ["--page-size", "many"], "--page-size"),
              ("export", ["hf", "--out", "x", "--rows-per-parquet", "0"], "--rows-per-parquet"),
              ("export", ["hf", "--out", A_FILE], "--out"),
              ("generate", ["--checkpoint", "nowhere", "--audio", "a.wav", "--num-images", "0"], "--num-images"),
              ("generate", ["--checkpoint", "nowhere", "--audio", "a.wav", "--steps", "0"], "--steps"),
              ("generate", ["--checkpoint", "nowhere", "--audio", "a.wav", "--out", A_FILE], "--out"),
              ("query", ["--max-rows", "-1", "SELECT 1"], "--max-rows")]


@pytest.mark.parametrize("name, argv, flag", BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_bad_flag_value_is_one_line_naming_the_flag_and_exit_2(name, argv, flag, capsys):
    """A value a flag cannot take (0 pages, -1 rows, a file for a folder) is refused as the line is read:
    one line naming the flag, exit 2, before any work (no traceback, nothing written first)."""
    main = importlib.import_module(f"sonify.{name}").main
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"sonify.{name}:") and flag in err[0], (code, err)


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["audio", "--no-such-flag"], ["plan", "--images", "many"]])
def test_a_bad_benchmark_argument_is_one_line_and_exit_2(argv, capsys):
    from sonify.bench.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("sonify.bench"), err


def test_the_documented_command_line_convention_is_linked():
    assert "docs/cli.md" in (REPO / "README.md").read_text()
    text = (REPO / "docs" / "cli.md").read_text()
    assert all(f"| `{name}` |" in text for name in (*COMMANDS, "bench"))


def test_settings_and_flag_values_are_told_apart():
    """`key=value` words are settings (the last of a key wins); a flag's value and SQL never are."""
    from sonify.engine.cli import split_settings
    from sonify.evaluate import _parser

    words = ["prepare", "landscapes_itw", "--root", "landscapes=/a", "config=eval_demo", "--root", "intothewild=/b",
             "--out=x=y", "score.ndb_k=50", "config=eval_default"]
    settings, rest = split_settings(words, _parser())
    assert settings == {"score.ndb_k": "50", "config": "eval_default"}
    assert rest == ["prepare", "landscapes_itw", "--root", "landscapes=/a", "--root", "intothewild=/b", "--out=x=y"]
    assert split_settings(["run=demo", "SELECT a=1 FROM t"]) == ({"run": "demo"}, ["SELECT a=1 FROM t"])
