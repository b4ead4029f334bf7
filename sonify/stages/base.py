"""The stage contract. Stages never import Ray: the executor decides where they run.

A stage is a class whose `__init__` loads what it needs (models load once per worker), whose
classmethod `work_list` says which rows to process, and whose `process_batch` maps a batch of those
rows to one table per output. Every input row must come back as a result or an error row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from sonify.engine.store import TableStore

# Stage settings that change where and how fast work runs, not what it produces.
RUNTIME_KEYS = {"batch_size", "concurrency", "num_cpus", "num_gpus"}


class Stage:
    name: ClassVar[str]
    version: ClassVar[int] = 1          # bump when outputs change: finished partitions are then recomputed
    outputs: ClassVar[tuple[str, ...]]  # table names
    # outputs that together hold exactly one row per input id (default: the first output)
    id_outputs: ClassVar[tuple[str, ...] | None] = None
    models: ClassVar[tuple[str, ...]] = ()  # keys of cfg.models this stage loads
    # a work-list column whose values name the partitions (e.g. one per shard); default: cut by count
    partition_by: ClassVar[str | None] = None
    whole_partition: ClassVar[bool] = False  # process_batch gets the whole partition (e.g. one shard) at once

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.conf = cfg.stages[self.name]
        self.run_dir = Path(cfg.run.dir)   # files a stage writes live under here, named by the rows that own them

    @classmethod
    def work_list(cls, cfg: DictConfig, store: TableStore) -> pa.Table:
        """The rows to process, with a unique `id` column."""
        raise NotImplementedError

    @classmethod
    def fingerprint(cls, cfg: DictConfig) -> str:
        """What the outputs depend on besides the input ids; part of every partition's name."""
        conf = OmegaConf.to_container(cfg.stages[cls.name])
        conf = {k: v for k, v in conf.items() if k not in RUNTIME_KEYS}
        return json.dumps({"stage": cls.name, "version": cls.version, "conf": conf}, sort_keys=True)

    @classmethod
    def keyed_outputs(cls) -> tuple[str, ...]:
        return cls.id_outputs or cls.outputs[:1]

    @classmethod
    def finalize(cls, cfg: DictConfig, store: TableStore) -> None:
        """Runs in the driver once every partition is finished (e.g. to build matrix files)."""

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        raise NotImplementedError
