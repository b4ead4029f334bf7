"""Stage registry, in pipeline order. Classes import lazily so the CLI starts fast."""

from __future__ import annotations

import importlib

from sonify.stages.base import Stage

STAGES: dict[str, str] = {
    "images": "sonify.stages.images:ImagesStage",
    "audio": "sonify.stages.audio:AudioStage",
    "concepts": "sonify.stages.concepts:ConceptsStage",
    "filter": "sonify.stages.filter:FilterStage",
    "embed": "sonify.stages.embed:EmbedStage",
    "retrieve": "sonify.stages.retrieve:RetrieveStage",
    "mix": "sonify.stages.mix:MixStage",
    "features": "sonify.stages.features:FeaturesStage",
    "latents": "sonify.stages.latents:LatentsStage",
    "shards": "sonify.stages.shards:ShardsStage",
}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> type[Stage]:
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)
