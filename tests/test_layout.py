"""The package layout rule: the top level holds the commands users type; everything else lives in a
folder named for its concern, and every import points down the floors below (never up, never to a command)."""

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sonify"

COMMANDS = {"run", "mix", "train_dit", "generate", "query", "bench", "recipes", "report", "export", "evaluate", "app", "experiments"}   # `bench` is a package of benchmark commands
# Each concern may import its own floor's concerns' lower floors only. Floor 0 imports nothing of sonify.
FLOORS = {
    "engine": 0,
    "media": 1, "concepts": 1, "models": 1, "retrieval": 1,
    "sources": 2, "mixing": 2,
    "stages": 3, "training": 3,
    "publish": 4,
    "evaluation": 4,
    "webapp": 5,
    "studies": 5,
}
MAX_COMMAND_LINES = 200


def modules():
    for path in sorted(PKG.rglob("*.py")):
        yield path, path.relative_to(PKG).with_suffix("").parts


def sonify_imports(path: Path):
    """Absolute module names of every sonify import in a file, relative ones resolved."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            if name.split(".")[0] == "sonify":
                yield name, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "sonify":
                    yield a.name, []


def test_top_level_holds_only_the_commands():
    top = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top <= COMMANDS, f"top-level modules that are not commands: {sorted(top - COMMANDS)}"
    assert folders - COMMANDS <= set(FLOORS), f"folders with no declared concern: {sorted(folders - COMMANDS - set(FLOORS))}"


@pytest.mark.parametrize("name", sorted(COMMANDS - {"bench"}))
def test_each_command_is_thin(name):
    lines = len((PKG / f"{name}.py").read_text().splitlines())
    assert lines <= MAX_COMMAND_LINES, f"sonify/{name}.py has {lines} lines; move its logic into a concern folder"


def test_no_module_imports_a_command():
    bad = []
    for path, parts in modules():
        for name, names in sonify_imports(path):
            bits = name.split(".")
            target = bits[1] if len(bits) > 1 else (names[0] if names else "")
            if target in COMMANDS and target != parts[0]:
                bad.append(f"{'/'.join(parts)} imports {name}")
    assert not bad, bad


def test_imports_point_down():
    bad = []
    for path, parts in modules():
        here = parts[0]
        if here not in FLOORS:
            continue   # commands may import any concern
        for name, _ in sonify_imports(path):
            bits = name.split(".")
            there = bits[1] if len(bits) > 1 else None
            if there == here:
                continue
            if there not in FLOORS or FLOORS[there] >= FLOORS[here]:
                bad.append(f"{'/'.join(parts)} (floor {FLOORS[here]}) imports {name} (floor {FLOORS.get(there, 'command')})")
    assert not bad, bad


def test_the_engine_imports_no_stage():
    for path in (PKG / "engine").rglob("*.py"):
        assert not any(n.startswith("sonify.stages") for n, _ in sonify_imports(path)), path


def test_the_rule_catches_a_violation(tmp_path, monkeypatch):
    """The checks above can fail: an engine module importing a stage is an upward import."""
    fake = tmp_path / "sonify"
    (fake / "engine").mkdir(parents=True)
    bad = fake / "engine" / "oops.py"
    bad.write_text("from sonify.stages import get_stage\nfrom ..run import main\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    imported = dict(sonify_imports(bad))
    assert "sonify.stages" in imported and "sonify.run" in imported
    with pytest.raises(AssertionError):
        test_imports_point_down()
    with pytest.raises(AssertionError):
        test_no_module_imports_a_command()
