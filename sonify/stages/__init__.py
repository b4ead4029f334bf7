"""Stage registry, in pipeline order: the one list of stage names (the run, the tests and the benchmarks read
it) and the pipeline config's `stages` section, assembled from each stage's settings class (`settings_schema`).
Classes import lazily so the CLI starts fast."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import TYPE_CHECKING

from sonify.engine.config import use_stage_settings

if TYPE_CHECKING:   # for the annotation only: base.py imports this registry
    from sonify.stages.base import Stage

STAGES: dict[str, str] = {
    "images": "sonify.stages.images:ImagesStage",
    "audio": "sonify.stages.audio:AudioStage",
    "concepts": "sonify.stages.concepts:ConceptsStage",
    "filter": "sonify.stages.filter:FilterStage",
    "embed_audio": "sonify.stages.embed:EmbedAudioStage",
    "embed_text": "sonify.stages.embed:EmbedTextStage",
    "retrieve": "sonify.stages.retrieve:RetrieveStage",
    "mix": "sonify.stages.mix:MixStage",
    "features": "sonify.stages.features:FeaturesStage",
    "latents": "sonify.stages.latents:LatentsStage",
    "shards": "sonify.stages.shards:ShardsStage",
}


# names that select several stages (`stage=embed`)
GROUPS: dict[str, list[str]] = {"embed": ["embed_audio", "embed_text"]}


def stage_names() -> list[str]:
    """Every stage and group name a user may select, in pipeline order."""
    names = []
    for s in STAGES:
        group = next((g for g, members in GROUPS.items() if members[0] == s), None)
        names += ([group] if group else []) + [s]
    return names


def expand(names: list[str]) -> list[str]:
    """Selected names (groups expanded, 'all' for every stage) as stage names in pipeline order."""
    wanted = set(names)
    if "all" in wanted:
        return list(STAGES)
    for g, members in GROUPS.items():
        if g in wanted:
            wanted.update(members)
    return [s for s in STAGES if s in wanted]


def get_stage(name: str) -> type[Stage]:
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


@functools.cache
def settings_schema() -> type:
    """The pipeline config's `stages` section: one field per settings class (`Stage.Settings`, declared in
    the stage's module), in pipeline order; stages sharing a section (`conf_key`) share its class."""
    sections: dict[str, type] = {}
    for name in STAGES:
        cls = get_stage(name)
        sections.setdefault(cls.conf_key or name, cls.Settings)
    return dataclasses.make_dataclass("StagesConf", [(k, v, dataclasses.field(default_factory=v)) for k, v in sections.items()])


use_stage_settings(settings_schema)   # the engine's loader gets the section from here; it imports no stage


def producer_of(table: str) -> str | None:
    """The stage that writes `table` (None for a table no stage writes)."""
    return next((name for name in STAGES if table in get_stage(name).outputs), None)


def missing_table_line(stage: str, table: str) -> str:
    """The one wording for a stage that reads a table nobody has written yet."""
    return f"stage {stage} needs table {table}: run stage={producer_of(table)} first"


def missing_inputs(cfg, stages: list[str]) -> str | None:
    """One line when a selected stage reads a table that no earlier stage wrote (and none selected before it
    writes): it names the stage to run first and, for the images and audio stages, the configured sources
    whose files are not there (a build started without its corpora)."""
    import os

    from sonify.engine.store import TableStore
    from sonify.sources import source_root

    store, selected = TableStore(cfg.run.dir), set()
    for name in stages:
        for up in get_stage(name).upstream:
            table = get_stage(up).outputs[0]
            if up in selected or store.exists(table):
                continue
            line = missing_table_line(name, table)
            if up in ("images", "audio"):
                absent = [f"{s.name} ({s.path or source_root(s)})" for s in cfg.sources[up]
                          if not os.path.exists(str(s.path or source_root(s)))]
                if absent:
                    return f"{line}; missing {up} source(s): {', '.join(absent)} (point sources.{up} at local copies)"
            return line
        selected.add(name)
    return None
