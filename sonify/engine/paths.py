"""Where configs are found and where a run's paths point: pipeline files, absolute roots, the run folder.

Paths that travel to other nodes (`run.root`, source roots) are made absolute on the driver, so a stored
path means the same on every node.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from sonify.engine.errors import ConfigError
from sonify.engine.files import ensure_writable_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
OTHER_CONFIGS = ("train_", "eval_")   # pipelines/ also holds the training and evaluation configs
# set by Ray in the driver of a job started with `ray job submit`, whose working dir is Ray's temporary copy
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def pipelines_dir() -> Path:
    env = os.environ.get("SONIFY_PIPELINES")
    if env:
        return Path(env)
    cwd = Path.cwd() / "pipelines"
    return cwd if cwd.is_dir() else REPO_ROOT / "pipelines"


def available_pipelines(pattern: str = "*.yaml") -> list[str]:
    """Config names matching `pattern`; for the default pattern, pipelines only (not `train_*`/`eval_*`)."""
    names = sorted(p.stem for p in pipelines_dir().glob(pattern))
    return [n for n in names if not n.startswith(OTHER_CONFIGS)] if pattern == "*.yaml" else names


def config_file(name: str, what: str = "pipeline", pattern: str = "*.yaml") -> Path:
    """`name` as a .yaml path, or as a file of `pipelines/`; else one line listing the valid names."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = pipelines_dir() / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"unknown {what} {name!r}; valid choices: {', '.join(available_pipelines(pattern))} (or a path to a .yaml file)")


def check_run_dir(cfg: DictConfig) -> Path:
    """Create the run folder and prove it writable, or fail in one line naming `run.root` (or `run.dir`)."""
    run_dir = Path(cfg.run.dir)
    key = "run.root" if run_dir.is_relative_to(Path(cfg.run.root)) else "run.dir"
    value = cfg.run.root if key == "run.root" else cfg.run.dir
    try:
        ensure_writable_dir(run_dir)
    except OSError as e:
        raise ConfigError(f"bad value {value!r} for key '{key}': {run_dir} is not a writable folder "
                          f"({e.strerror or type(e).__name__})") from None
    return run_dir


def absolute_run_root(cfg: DictConfig) -> None:
    """`run.root` becomes absolute here, on the driver, before anything ships to Ray: every stored path
    derived from it then means the same on every node. Inside a `ray job submit` job a relative root
    would land in Ray's copy of the working dir and vanish with it, so it is refused in one line."""
    cfg.run.root = _absolute(str(cfg.run.root), "run.root", " (e.g. run.root=$PWD/runs)")


def _absolute(value: str, key: str, example: str = "") -> str:
    """`value` made absolute against the cwd; refused in one line inside a Ray job (see `absolute_run_root`)."""
    if not value or os.path.isabs(value):
        return value
    if os.environ.get(RAY_JOB_ENV):
        raise ConfigError(f"bad value {value!r} for key '{key}': relative, and this is a Ray job whose working dir is "
                          f"a temporary copy; give an absolute path{example}")
    return os.path.abspath(value)


def absolute_source_paths(cfg: DictConfig) -> None:
    """Source roots (`path`, and `root` of recipes and lists) become absolute on the driver, as `run.root`
    does, so the roots that resolve stored paths (`sonify.sources.SourcePaths`) mean the same on every node."""
    for role in ("images", "audio"):
        for i, src in enumerate(cfg.sources[role]):
            for key in ("path", "root"):
                src[key] = _absolute(str(src[key]), f"sources.{role}[{i}].{key}")
