"""Stage `filter`: keep images that can sound.

An image is dropped when any of its captions names a silent thing (logo, icon, emblem, symbol,
trademark, sign: whole words, plurals too; 'signal' and 'design' do not match), or when no VLM
variant gave it a concept. Every decoded image gets a row with the decision and its reason.

Order rule (so that a plan, a partition name and a reason never depend on the order rows arrive in):
an image's captions are taken in order of VLM name (then caption row id); `caption_hits` keeps that
order, and the reason is the keyword of the first hit in it (`keyword:<word>` of the first match in
that caption).

`caption_vlms` names the VLMs whose captions the keyword rule reads (the paper's A.2: LLaVA's only);
empty, every VLM's captions count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import pyarrow as pa

from sonify.concepts.keywords import keyword_pattern, read_keywords
from sonify.engine.schemas import STATUS_OK
from sonify.engine.settings import StageSettings
from sonify.engine.store import rows_to_table
from sonify.stages.base import Stage
from sonify.stages.concepts import _literal


def _variants(cfg) -> list[str]:
    """The variant names `caption_vlms` may name: the VLMs and the imports."""
    return list(cfg.models.vlms) + [imp.name for imp in cfg.stages.concepts.imports]


@dataclass
class FilterSettings(StageSettings):
    partition_rows: int = 4096
    batch_size: int = 4096
    keywords: str = "prompts/silent_keywords.txt"   # one word per line; plurals match too
    drop_on_keyword: bool = True
    drop_without_concepts: bool = True
    # VLMs (as in models.vlms, or an import's name) whose captions the keyword rule reads; empty: every VLM's.
    # The paper (A.2) filters on LLaVA's captions only.
    caption_vlms: List[str] = field(default_factory=list, metadata={"choices": _variants})


class FilterStage(Stage):
    name = "filter"
    Settings = FilterSettings
    version = 2   # 2: captions ordered by VLM (the reason no longer depends on row order)
    outputs = ("kept_images",)
    upstream = ("concepts",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pattern = keyword_pattern(read_keywords(self.conf.keywords))

    @classmethod
    def work_list(cls, cfg, store):
        """Each decoded image with its variants that have concepts and its captions (of `caption_vlms`, when
        set), ordered by VLM (then caption id): every aggregate here is ordered, so the work list's content
        is the same in every plan, whatever DuckDB's thread count or the order of the tables' files."""
        only = cls.settings(cfg).caption_vlms
        which = f"AND variant IN ({', '.join(_literal(v) for v in only)})" if only else ""
        return store.connect("images", "concepts", "captions").sql(f"""
            SELECT i.id, v.variants, c.captions
            FROM images i
            LEFT JOIN (SELECT image_id, list(DISTINCT variant ORDER BY variant) AS variants FROM concepts
                       WHERE status = 'ok' AND n_concepts > 0 GROUP BY image_id) v ON v.image_id = i.id
            LEFT JOIN (SELECT image_id, list(caption ORDER BY variant, id) AS captions FROM captions
                       WHERE status = 'ok' AND caption IS NOT NULL {which} GROUP BY image_id) c ON c.image_id = i.id
            WHERE i.status = 'ok'""")

    def decide(self, variants: list[str] | None, captions: list[str] | None) -> dict:
        variants = sorted(set(variants or []))
        hits = [c for c in captions or [] if self.pattern.search(c)]
        reason = None
        if self.conf.drop_on_keyword and hits:
            reason = f"keyword:{self.pattern.search(hits[0]).group(1).lower()}"
        elif self.conf.drop_without_concepts and not variants:
            reason = "no_concepts"
        return {"kept": reason is None, "reason": reason, "variants": variants, "n_variants": len(variants), "caption_hits": hits}

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        rows = [{"id": r["id"], **self.decide(r["variants"], r["captions"]), "status": STATUS_OK, "error": None}
                for r in batch.to_pylist()]
        return {"kept_images": rows_to_table("kept_images", rows)}
