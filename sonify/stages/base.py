"""The stage contract. Stages never import Ray: the executor decides where they run.

A stage is a class whose `__init__` loads what it needs (models load once per worker), whose
classmethod `work_list` says which rows to process, and whose `process_batch` maps a batch of those
rows to one table per output. Every input row must come back as a result or an error row.

Lineage: a stage's fingerprint covers its output-relevant config (prompt and keyword files by
content), the models it loads (`models.identity`), the other settings it reads (`uses`), its version
and its output schemas' versions, and the fingerprints of the stages it reads (`upstream`),
transitively. Files a stage writes (`files_dir`) live in a folder per partition, so they go with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from sonify.engine.config import resolve_text
from sonify.engine.schemas import table_spec
from sonify.engine.store import TableStore
from sonify.stages import get_stage

# Stage settings that change where and how fast work runs, not what it produces: never in a fingerprint,
# so they must never change an output (model calls run at the fixed shape `model_batch` whatever they are).
RUNTIME_KEYS = {"batch_size", "text_batch_size", "concurrency", "num_cpus", "num_gpus", "accelerator_type", "device", "block_mb",
                "partition_rows"}


class Stage:
    name: ClassVar[str]
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

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.conf = cfg.stages[self.conf_key or self.name]
        self.run_dir = Path(cfg.run.dir)
        self.partition: str | None = None   # set by the executor before each partition

    def owned_path(self, relpath: str) -> tuple[str, Path]:
        """A file of the current partition: (path relative to the run folder, absolute path)."""
        if self.files_dir is None or self.partition is None:
            raise RuntimeError(f"stage {self.name} writes files without files_dir or outside a partition")
        rel = f"{self.files_dir}/{self.partition}/{relpath}"
        return rel, self.run_dir / rel

    @classmethod
    def settings(cls, cfg: DictConfig) -> dict:
        return cfg.stages[cls.conf_key or cls.name]

    @classmethod
    def work_list(cls, cfg: DictConfig, store: TableStore):
        """The rows to process, with a unique `id` column: a DuckDB relation over the store's tables
        (`store.connect`), streamed to disk by the planner, or an Arrow table (a source listing)."""
        raise NotImplementedError

    @classmethod
    def own_fingerprint(cls, cfg: DictConfig) -> dict:
        """Everything of this stage alone that its outputs depend on (no upstream, no data)."""
        from sonify.models.identity import model_identity

        conf = OmegaConf.to_container(cls.settings(cfg), resolve=True)
        conf = {k: (resolve_text(v) if isinstance(v, str) and v.endswith(".txt") else v)
                for k, v in conf.items() if k not in RUNTIME_KEYS}
        models = {}
        for role in cls.models:
            names = cfg.models[role]
            models[role] = [model_identity(str(n)) for n in names] if not isinstance(names, str) else model_identity(names)
        if cls.models:
            conf["run.torch_threads"] = int(cfg.run.torch_threads)   # float bits depend on the thread count
        return {"stage": cls.name, "version": cls.version, "conf": conf, "models": models,
                "uses": {k: OmegaConf.select(cfg, k) for k in cls.uses},
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
