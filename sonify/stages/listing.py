"""The shape shared by the stages that list a source role (`images`, `audio`): the work list is the listing
of `sources.<name>` by the role's lister, with the stage's `extensions`; workers read the files through
the role's roots (`SourcePaths`)."""

from __future__ import annotations

from typing import Callable, ClassVar

from sonify.sources import SourcePaths, list_sources
from sonify.stages.base import Stage


class ListingStage(Stage):
    lister: ClassVar[Callable]   # (source, extensions) -> its listing (`sonify.sources.images.list_images`, ...)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.paths = SourcePaths.of(self.cfg, self.name)

    @classmethod
    def work_list(cls, cfg, store):
        return list_sources(cfg.sources[cls.name], cls.lister, cls.settings(cfg).extensions, cls.name)
