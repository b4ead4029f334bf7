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
