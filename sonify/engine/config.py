"""The config loader: typed defaults (dataclasses) <- a YAML file <- `key=value` overrides, checked and resolved.

Generic over its schema: a pipeline's (`engine.settings.SonifyConf`, its `stages` section handed in by the stage
registry, `use_stage_settings`), the trainer's and the evaluation's. Unknown keys, bad choices and values out of
range (the fields' metadata, `engine.settings`) fail in one line that names the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, List

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sonify.engine.errors import ConfigError
from sonify.engine.lazy import RolesOf
from sonify.engine.paths import REPO_ROOT, absolute_run_root, absolute_source_paths, config_file
from sonify.engine.settings import SOURCE_KINDS, SonifyConf, SourceConf, rules  # noqa: F401 (SourceConf: re-exported)

RECIPES = RolesOf("sonify.sources.recipes", "RECIPES")   # the recipes of each role, read from their one registry
_STAGE_SETTINGS: list[Callable[[], type]] = []   # set by the stage registry when it is imported


def use_stage_settings(schema: Callable[[], type]) -> None:
    """The stage registry (`sonify.stages`) hands over its `stages` section's class: the engine imports no stage.
    Without it (a command that only reads `run` or `sources`), the `stages` section is taken as written."""
    _STAGE_SETTINGS[:] = [schema]


def resolve_text(value: str) -> str:
    """A prompt setting is either a path to a text file (relative to cwd or the repo) or the text itself."""
    for base in (Path.cwd(), REPO_ROOT):
        p = base / value
        if len(value) < 4096 and p.suffix == ".txt" and p.is_file():
            return p.read_text().strip()
    if value.endswith(".txt"):
        bases = " or ".join(dict.fromkeys(str(b.resolve()) for b in (Path.cwd(), REPO_ROOT)))
        raise ConfigError(f"prompt file {value!r} not found (relative to {bases})")
    return value.strip()


def _nested(typ: Any) -> type | None:
    """The dataclass of a list-of-dataclasses field (sources), else None."""
    args = typing.get_args(typ)
    return args[0] if typing.get_origin(typ) in (list, List) and args and dataclasses.is_dataclass(args[0]) else None


def check_keys(cls: type, data: Any, prefix: str = "") -> None:
    """Walk user data against the dataclass tree; fail on the first unknown key."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            where = f" under '{prefix[:-1]}'" if prefix else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys{where}: {', '.join(f.name for f in dataclasses.fields(cls))}")
        if dataclasses.is_dataclass(hints[key]) and not isinstance(value, dict):
            raise ConfigError(f"key '{prefix}{key}' is a section, not a value ({value!r}); set its keys, e.g. "
                              f"{prefix}{key}.{dataclasses.fields(hints[key])[0].name}=...")
        if dataclasses.is_dataclass(hints[key]):
            check_keys(hints[key], value, f"{prefix}{key}.")
        elif _nested(hints[key]) and isinstance(value, list):
            for i, item in enumerate(value):
                check_keys(_nested(hints[key]), item, f"{prefix}{key}[{i}].")


def check_rules(cls: type, node: Any, root: Any, prefix: str = "") -> None:
    """Every field's `choices` and `range` (its metadata), walking the schema and the config together."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, value, typ = f"{prefix}{f.name}", node[f.name], hints[f.name]
        if dataclasses.is_dataclass(typ):
            check_rules(typ, value, root, f"{key}.")
        for i, item in enumerate(value if _nested(typ) else []):
            check_rules(_nested(typ), item, root, f"{key}[{i}].")
        meta = rules(cls, f.name)
        valid = meta["choices"](root) if callable(meta.get("choices")) else meta.get("choices")
        for item in (value if isinstance(value, (list, ListConfig)) else [value]) if valid is not None else []:
            if item not in valid:
                where = "in" if isinstance(value, (list, ListConfig)) else "for"
                raise ConfigError(f"bad value {item!r} {where} key '{key}'; valid choices: {', '.join(map(str, valid)) or 'none'}")
        if "range" in meta and not meta["range"][0](value, root):
            raise ConfigError(f"bad value {value!r} for key '{key}'; valid values: {meta['range'][1]}")


def check_choices(cfg: Any, choices: dict[str, list]) -> None:
    for key, valid in choices.items():
        value = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else getattr(cfg, key)
        if value not in valid:
            raise ConfigError(f"bad value {value!r} for key '{key}'; valid choices: {', '.join(map(str, valid))}")


def _check_pipeline(cfg: DictConfig, stage_names: list[str]) -> None:
    """What the fields' metadata cannot say: the selected stages, and each source by its role."""
    valid_stages = stage_names + ["all"]
    for s in (s.strip() for s in str(cfg.stage).split(",")):
        if s not in valid_stages:
            raise ConfigError(f"unknown stage {s!r} for key 'stage'; valid choices: {', '.join(valid_stages)}")
    for role, kinds in SOURCE_KINDS.items():
        for i, src in enumerate(cfg.sources[role]):
            if src.kind not in kinds:
                raise ConfigError(f"bad value {src.kind!r} for key 'sources.{role}[{i}].kind'; valid choices: {', '.join(kinds)}")
            if src.kind == "recipe":
                if src.recipe not in RECIPES[role]:
                    raise ConfigError(f"bad value {src.recipe!r} for key 'sources.{role}[{i}].recipe'; valid choices: {', '.join(RECIPES[role])}")
                if not src.root:
                    raise ConfigError(f"key 'sources.{role}[{i}].root' is empty; give the folder of the local {src.recipe} copy")
            elif not src.path:
                raise ConfigError(f"key 'sources.{role}[{i}].path' is empty; give the folder or list file of source {src.name!r}")
        names = [s.name for s in cfg.sources[role]]
        if dup := {n for n in names if names.count(n) > 1}:
            raise ConfigError(f"source names under 'sources.{role}' must be unique; repeated: {', '.join(sorted(dup))}")


def parse_overrides(overrides: list[str], example: str) -> dict:
    """`key=value` arguments as a nested dict; anything else fails in one line with an example."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not key=value (e.g. {example})")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None


def _dotted(data: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict (to name what an error without a key came from)."""
    return [k for key, v in data.items() for k in (_dotted(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def compose(schema: type, path: Path, override_data: dict, before_resolve=None, **set_after: Any) -> DictConfig:
    """The one config loader: defaults of `schema` <- the YAML file <- overrides, keys and rules checked, resolved.
    `before_resolve(cfg)` may adjust values that interpolations derive from."""
    file_data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    check_keys(schema, file_data)
    check_keys(schema, override_data)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), file_data, override_data)
        for key, value in set_after.items():
            cfg[key] = value
        if before_resolve is not None:
            before_resolve(cfg)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        msg, key = str(e).splitlines()[0], getattr(e, "full_key", None) or getattr(e, "key", None)
        where = f"key '{key}'" if key else f"{path.name} or the overrides ({', '.join(_dotted(override_data))})"
        raise ConfigError(f"bad value for {where}: {msg}") from None
    check_rules(schema, cfg, cfg)
    return cfg


def load_object(schema: type, argv: list[str], default: str, what: str, pattern: str, example: str) -> Any:
    """A typed config object: `config=<name>` picks `pipelines/<name>.yaml` (default `default`), the rest are
    `key=value` overrides; for the commands whose configs are not pipelines (training, evaluation)."""
    over = parse_overrides(argv, example)
    path = config_file(str(over.pop("config", default)), what, pattern)
    try:
        return OmegaConf.to_object(compose(schema, path, over))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"bad {what}: {str(e).splitlines()[0]}") from None


def pipeline_schema() -> type:
    """`SonifyConf` with the stage registry's `stages` section (as written when no registry is imported)."""
    if not _STAGE_SETTINGS:
        return SonifyConf
    stages = _STAGE_SETTINGS[0]()
    return dataclasses.make_dataclass("SonifyConf", [("stages", stages, dataclasses.field(default_factory=stages))],
                                      bases=(SonifyConf,))


def load_config(overrides: list[str], stage_names: list[str] | None = None) -> DictConfig:
    """Defaults <- pipelines/<pipeline>.yaml <- `key=value` overrides, validated and resolved."""
    override_data = parse_overrides(overrides, "pipeline=demo stage=audio run.force=true")
    pipeline = str(override_data.get("pipeline", SonifyConf.pipeline))
    path = config_file(pipeline)
    cfg = compose(pipeline_schema(), path, override_data, before_resolve=absolute_run_root,
                  pipeline=Path(pipeline).stem if path.suffix else pipeline)
    _check_pipeline(cfg, stage_names or [])
    absolute_source_paths(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)

