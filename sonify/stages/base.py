"""The stage contract. Stages never import Ray: the executor decides where they run.

A stage is one module: a class whose `__init__` loads what it needs (models load once per worker), whose
classmethod `work_list` says which rows to process, and whose `process_batch` maps a batch of those
rows to one table per output. Every input row must come back as a result or an error row. Its settings
are a dataclass in the same module (`Settings`, extending `engine.settings.StageSettings`: types,
defaults, allowed values and ranges in the fields' metadata); the registry assembles them into the
config's `stages` section, and the stage reads them typed (`self.conf`, `cls.settings(cfg)`).

Lineage: a stage's fingerprint covers its output-relevant config (prompt and keyword files by
content), the models it loads (`models.identity`), the other settings it reads (`uses`), its version
and its output schemas' versions, and the fingerprints of the stages it reads (`upstream`),
transitively. Files a stage writes (`files_dir`) live in a folder per partition, so they go with it.

Guarded reads, so that lineage cannot miss a dependency: wherever a stage gets the config (`__init__`, so
`process_batch` too, `work_list`, `own_fingerprint`, `data_fingerprint`, `finalize`) it gets a view
(`StageConfig`) that lets it read only
- its own section `stages.<conf_key or name>` (runtime fields included),
- the keys in its `uses`,
- `models.<role>` for each role in its `models` (and then `run.torch_threads`: all in the fingerprint),
- what the engine gives every stage, which never changes an output: `run.dir`, `run.plan_memory`,
  `models.tiny_dir`, `models.trust_remote_code`,
- `sources.<role>` when it is the `images` or `audio` stage that lists them, or reads that stage's table
  (`upstream`): where the files are, not what they hold (a work list carries their content hashes).
Reading anything else raises `UndeclaredSetting`, naming the key and the stage. `pass_config` gets the
whole config: it only narrows what a pass's workers load.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from sonify.engine.config import resolve_text
from sonify.engine.errors import StageContractError
from sonify.engine.schemas import table_spec
from sonify.engine.settings import StageSettings, runtime_keys
from sonify.engine.store import TableStore
from sonify.stages import get_stage

ENGINE_KEYS = ("run.dir", "run.plan_memory", "models.tiny_dir", "models.trust_remote_code")   # every stage may read these
SOURCE_STAGES = ("images", "audio")   # the stages that list `sources.<their name>`
GUARDED = ("__init__", "work_list", "own_fingerprint", "data_fingerprint", "finalize")   # hooks that get a `StageConfig`


class UndeclaredSetting(StageContractError):
    """A stage read a config key that is neither its settings nor in its `uses` (a bug: not retried)."""


class StageConfig:
    """The pipeline config as one stage sees it (the rule: the module docstring). A readable key's node is
    returned as it is (DictConfig, list, value); any other section comes back as another view, and any
    other value raises `UndeclaredSetting`."""

    def __init__(self, cfg: Any, stage: str, readable: frozenset[str], path: str = ""):
        self._cfg, self._stage, self._readable, self._path = cfg, stage, readable, path

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]

    def __getitem__(self, key: str) -> Any:
        path = f"{self._path}.{key}" if self._path else str(key)
        value = self._cfg[key]
        if any(path == r or path.startswith(r + ".") for r in self._readable):
            return value
        if isinstance(value, DictConfig):   # a section: the check falls on the key read inside it
            return StageConfig(value, self._stage, self._readable, path)
        raise UndeclaredSetting(f"stage {self._stage} read '{path}', which is not in its settings or `uses` "
                                f"(declare it in `uses`: it then joins the stage's fingerprint)")

    def __contains__(self, key: str) -> bool:
        return key in self._cfg

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def select(self, key: str) -> Any:
        """The value at a dotted key (e.g. one of `uses`)."""
        return functools.reduce(lambda node, k: node[k], key.split("."), self)


def _guard(fn, method: bool):
    """`fn` with its config argument replaced by the stage's view (`Stage.view`)."""
    @functools.wraps(fn)
    def guarded(self_or_cls, cfg, *args, **kwargs):
        klass = type(self_or_cls) if method else self_or_cls
        return fn(self_or_cls, klass.view(cfg), *args, **kwargs)
    return guarded


class Stage:
    name: ClassVar[str]
    Settings: ClassVar[type] = StageSettings   # its settings class, declared in its module
    conf_key: ClassVar[str | None] = None   # its section under `stages` (default: its name)
    version: ClassVar[int] = 1          # bump when outputs change: finished partitions are then recomputed
    outputs: ClassVar[tuple[str, ...]]  # table names; the first holds exactly one row per input id (`keyed_output`)
    models: ClassVar[tuple[str, ...]] = ()  # keys of cfg.models this stage loads
    upstream: ClassVar[tuple[str, ...]] = ()  # stages whose tables it reads
    uses: ClassVar[tuple[str, ...]] = ()      # other config keys its outputs depend on (e.g. run.seed)
    # work-list columns whose values determine the outputs (default: all); locations such as paths are not content
    content_columns: ClassVar[tuple[str, ...] | None] = None
    files_dir: ClassVar[str | None] = None  # files it writes go under <run>/<files_dir>/<partition>/
    # a work-list column whose values name the partitions (e.g. one per shard); default: cut by count
    partition_by: ClassVar[str | None] = None
    whole_partition: ClassVar[bool] = False  # process_batch gets the whole partition (e.g. one shard) at once
    # a work-list column whose values are run as separate passes, each with its own workers (one VLM per actor pool)
    pass_column: ClassVar[str | None] = None
    # a work-list column whose equal values always share a partition (every concept of an image variant)
    keep_together: ClassVar[str | None] = None
    # error reasons that are expected outcomes of good data (a VLM reply with no list, a silent chunk), not failures
    expected_errors: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook in GUARDED:
            if hook in cls.__dict__:
                fn = cls.__dict__[hook]
                setattr(cls, hook, _guard(fn, True) if hook == "__init__" else classmethod(_guard(fn.__func__, False)))

    def __init__(self, cfg: DictConfig):
        self.cfg = self.view(cfg)
        self.conf = self.settings(self.cfg)
        self.run_dir = Path(self.cfg.run.dir)
        self.partition: str | None = None   # set by the executor before each partition

    @classmethod
    def readable(cls) -> frozenset[str]:
        """The config keys this stage may read (the rule: the module docstring)."""
        keys = {f"stages.{cls.conf_key or cls.name}", *cls.uses, *ENGINE_KEYS, *(f"models.{m}" for m in cls.models)}
        keys |= {"run.torch_threads"} if cls.models else set()
        return frozenset(keys | {f"sources.{s}" for s in SOURCE_STAGES if s == cls.name or s in cls.upstream})

    @classmethod
    def view(cls, cfg: Any) -> StageConfig:
        """The config as this stage may read it; the whole config is taken back out of another stage's view."""
        if isinstance(cfg, StageConfig):
            if cfg._stage == cls.name:
                return cfg
            cfg = cfg._cfg
        return StageConfig(cfg, cls.name, cls.readable())

    def owned_path(self, relpath: str) -> tuple[str, Path]:
        """A file of the current partition: (path relative to the run folder, absolute path)."""
        if self.files_dir is None or self.partition is None:
            raise RuntimeError(f"stage {self.name} writes files without files_dir or outside a partition")
        rel = f"{self.files_dir}/{self.partition}/{relpath}"
        return rel, self.run_dir / rel

    @classmethod
    def settings(cls, cfg: DictConfig) -> Any:
        """This stage's settings as its typed class (a worker's config is plain: typed again here)."""
        node = cfg.stages[cls.conf_key or cls.name]
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Settings), node))

    @classmethod
    def work_list(cls, cfg: DictConfig, store: TableStore):
        """The rows to process, with a unique `id` column: a DuckDB relation over the store's tables
        (`store.connect`), streamed to disk by the planner, or an Arrow table (a source listing)."""
        raise NotImplementedError

    @classmethod
    def own_fingerprint(cls, cfg: DictConfig) -> dict:
        """Everything of this stage alone that its outputs depend on (no upstream, no data)."""
        from sonify.models.identity import model_identity

        cfg = cls.view(cfg)
        conf = OmegaConf.to_container(cfg.stages[cls.conf_key or cls.name], resolve=True)
        conf = {k: (resolve_text(v) if isinstance(v, str) and v.endswith(".txt") else v)
                for k, v in conf.items() if k not in runtime_keys(cls.Settings)}
        models = {}
        for role in cls.models:
            names = cfg.models[role]
            models[role] = [model_identity(str(n)) for n in names] if not isinstance(names, str) else model_identity(names)
        if cls.models:
            conf["run.torch_threads"] = cfg.run.torch_threads   # float bits depend on the thread count
        return {"stage": cls.name, "version": cls.version, "conf": conf, "models": models,
                "uses": {k: cfg.select(k) for k in cls.uses},
                "schemas": {t: table_spec(t).version for t in cls.outputs}}

    @classmethod
    def lineage(cls, cfg: DictConfig) -> str:
        """A digest of this stage's own fingerprint and its upstream stages' lineages, transitively."""
        parts = {"own": cls.own_fingerprint(cfg), "upstream": {u: get_stage(u).lineage(cfg) for u in cls.upstream}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    @classmethod
    def data_fingerprint(cls, cfg: DictConfig, store: TableStore) -> str:
        """Data every row depends on beyond its own row (e.g. the whole audio pool for retrieval)."""
        return ""

    @classmethod
    def fingerprint(cls, cfg: DictConfig, store: TableStore) -> str:
        """Part of every partition's name: lineage plus whole-table data dependencies."""
        return f"{cls.name}:{cls.lineage(cfg)}:{cls.data_fingerprint(cfg, store)}"

    @classmethod
    def pass_config(cls, cfg: DictConfig, value: str) -> DictConfig:
        """The config a pass's workers get (e.g. only that pass's model)."""
        return cfg

    @classmethod
    def keyed_output(cls) -> str:
        """The output holding one row per input row (the engine checks it; the others are derived)."""
        return cls.outputs[0]

    @classmethod
    def finalize(cls, cfg: DictConfig, store: TableStore) -> None:
        """Runs in the driver once every partition is finished (e.g. to build matrix files)."""

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        raise NotImplementedError
