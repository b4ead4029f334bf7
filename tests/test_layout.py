"""The package layout rule: the top level holds the commands users type; everything else lives in a
folder named for its concern, and every import points down the floors below (never up, never to a command).
No import cycles either, inside a folder too: a module-level import never closes one, and an import inside a
function may break one only with a comment on it (or the line above) that says why ("cycle: ...")."""

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


def _imports_run(tree: ast.Module):
    """(import node, inside a function) for every import that can run: TYPE_CHECKING blocks never do."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from ((n, in_function) for c in child.orelse for n in walk(ast.Module([c], []), in_function))
            else:
                yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def import_graph(pkg: Path) -> dict[str, set[str]]:
    """Module -> the package modules its imports run: `from a.b import c` is a.b.c when c is a module, else a.b
    (a package's `__init__`); importing a.b.c does not count as importing a.b's `__init__` (Python has run it
    whole before a.b.c starts, so that is no cycle). An import inside a function whose line, or the line
    above, holds a comment naming a cycle is left out: the sanctioned, commented way to break one."""
    def name_of(path):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(p): p for p in sorted(pkg.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        lines = path.read_text().splitlines()
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node, in_function in _imports_run(ast.parse(path.read_text())):
            near = " ".join(lines[max(node.lineno - 2, 0):node.lineno])
            if in_function and "#" in near and "cycle" in near.split("#", 1)[1].lower():
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
                continue
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) if node.level \
                else node.module or ""
            subs = {f"{base}.{a.name}" for a in node.names} & set(files)
            edges |= subs
            if len(subs) < len(node.names) and base in files:
                edges.add(base)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph(PKG)
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(f"{m} (imports {sorted(graph[m] & set(c))})" for m in c) for c in found)


def test_the_cycle_check_catches_a_planted_cycle(tmp_path, monkeypatch):
    """Inside one folder: a module-level import one way and a function's import back is a cycle; the same
    function import commented as a cycle breaker is not; neither is an annotation-only TYPE_CHECKING import;
    a package `__init__` importing a submodule that imports the package back is one."""
    fake = tmp_path / "sonify"
    (fake / "thing").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "thing" / "__init__.py").write_text("")
    (fake / "thing" / "a.py").write_text("from sonify.thing.b import helper\n")
    (fake / "thing" / "b.py").write_text("def helper():\n    from . import a\n    return a\n")
    assert cycles(import_graph(fake)) == [["sonify.thing.a", "sonify.thing.b"]]
    (fake / "thing" / "b.py").write_text("def helper():\n    from . import a   # cycle: a imports helper at load\n    return a\n")
    assert cycles(import_graph(fake)) == []
    (fake / "thing" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sonify.thing import a\n")
    assert cycles(import_graph(fake)) == []
    (fake / "thing" / "__init__.py").write_text("from sonify.thing.c import REGISTRY\n")
    (fake / "thing" / "c.py").write_text("REGISTRY = {}\ndef lookup():\n    from sonify.thing import REGISTRY as r\n    return r\n")
    assert cycles(import_graph(fake)) == [["sonify.thing", "sonify.thing.c"]]
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    with pytest.raises(AssertionError, match="import cycles: sonify.thing"):
        test_no_import_cycles()
