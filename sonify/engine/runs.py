"""`run=`: which run folder a command reads, decided in one place for every command that takes it.

`run=X` is, in this order: a folder as given (`run=runs/demo`, `run=/data/runs/x`); else a run made by
`python -m sonify.run run.name=X` under `run.root` (the `run.root=DIR` given alongside, else the default
`runs` of the cwd and the `run.root` a pipeline file sets); else the pipeline X, whose `run.dir` holds it
(`run=demo`). A name that matches two different folders, or none, fails in one line listing what was tried.
"""

from __future__ import annotations

from pathlib import Path

from sonify.engine.errors import ConfigError

DEFAULT_RUN = "demo"          # what a command reads when `run=` is not given: the demo pipeline's run
RUN_KEYS = ("run", "run.root")


def is_run_folder(path: Path) -> bool:
    """A folder `sonify.run` wrote into: its saved config or its tables are there."""
    return (path / "config.yaml").is_file() or (path / "manifests").is_dir()


def _pipeline_roots() -> list[str]:
    """The `run.root` each pipeline file sets (most keep the default), read from the files without composing them."""
    from omegaconf import OmegaConf

    from sonify.engine.paths import available_pipelines, pipelines_dir

    roots = []
    for name in available_pipelines():
        raw = OmegaConf.to_container(OmegaConf.load(pipelines_dir() / f"{name}.yaml"), resolve=False)
        root = ((raw or {}).get("run") or {}).get("root") if isinstance(raw, dict) else None
        if isinstance(root, str) and "${" not in root:   # an interpolated root needs the whole config: not guessed here
            roots.append(root)
    return roots


def _pipeline_dir(name: str, root: str | None) -> tuple[Path | None, str]:
    """The `run.dir` of pipeline `name` (None when there is no such pipeline) and how it was tried."""
    from sonify.engine.config import load_config
    from sonify.engine.paths import pipelines_dir

    if "/" in name or not (pipelines_dir() / f"{name}.yaml").is_file():
        return None, f"no pipeline {name!r} in {pipelines_dir()}"
    try:
        return Path(load_config([f"pipeline={name}"] + ([f"run.root={root}"] if root else [])).run.dir), f"pipeline {name}'s run.dir"
    except ConfigError as e:
        return None, f"pipeline {name}: {e}"


def resolve_run(arg: str, root: str | None = None) -> Path:
    """The run folder `run=arg` names (see the module docstring); ConfigError in one line otherwise."""
    if not arg:
        raise ConfigError("run= is empty; give a run folder, a run name under run.root or a pipeline name")
    given = Path(arg)
    if given.is_dir():
        return given
    tried = [f"no folder {given}"]
    found: dict[Path, str] = {}
    if "/" not in arg:
        roots = [root] if root else list(dict.fromkeys(["runs", *_pipeline_roots()]))
        for r in roots:
            folder = Path(r) / arg
            if folder.is_dir() and is_run_folder(folder):   # its saved config or tables: a run, not any folder
                found.setdefault(folder.resolve(), f"run {arg!r} under run.root {r}")
            else:
                tried.append(f"no run {arg!r} under run.root {r}")
    pipeline_dir, how = _pipeline_dir(arg, root)
    if pipeline_dir is not None and pipeline_dir.is_dir():
        found.setdefault(pipeline_dir.resolve(), how)
    else:
        tried.append(f"{how} {pipeline_dir} does not exist" if pipeline_dir is not None else how)
    if len(found) > 1:
        raise ConfigError(f"run={arg} is ambiguous: " + "; ".join(f"{why} ({path})" for path, why in found.items())
                          + "; pass the folder instead (run=<path>)")
    if not found:
        raise ConfigError(f"run={arg} names no run: " + "; ".join(tried))
    return next(iter(found))


def split_run_arg(argv: list[str], default: str | None = DEFAULT_RUN) -> tuple[Path | None, list[str]]:
    """The run folder that `run=` (with `run.root=`, when given) names, the demo's when absent (None when
    `default` is None), and the other arguments."""
    values = {key: [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")] for key in RUN_KEYS}
    rest = [a for a in argv if not a.startswith(tuple(k + "=" for k in RUN_KEYS))]
    arg = values["run"][-1] if values["run"] else default
    root = values["run.root"][-1] if values["run.root"] else None
    return (resolve_run(arg, root) if arg is not None else None), rest
