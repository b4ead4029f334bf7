"""Stage `retrieve`: Algorithm 1 for every embedded concept against the whole audio pool.

Workers map the pool (the audio embedding matrix, float32) read-only from its file, so the workers of
one node share one copy in the page cache (on GPU each worker copies it to its device), and
run queries in blocks (matmul + top-k); see `sonify.retrieval.algorithm`. The choice is keyed by
(run.seed, image, variant, concept index), so matches do not depend on block size, workers or order.

Partitions hold whole image variants (`keep_together`: the planner never cuts between rows of one
`concept_id`), and `process_batch` gets a whole partition at once. So every concept of a variant is
in one call, which `stages.retrieve.distinct_within_variant` needs (the concepts of a variant are
matched in concept order, each excluding the chunks the earlier ones took).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np
import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.ids import ablation_id
from sonify.engine.keys import keyed_rng
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.settings import AT_LEAST_1, NON_NEGATIVE, POSITIVE, StageSettings, choice, ranged, runtime
from sonify.engine.store import TableStore, rows_to_table
from sonify.retrieval.algorithm import BlockedRetriever, choose, choose_distinct
from sonify.retrieval.matrices import load_pool, matrix_paths
from sonify.stages.base import Stage

MODES = ["ssr", "raw", "argmax", "softmax"]


@dataclass
class RetrieveSettings(StageSettings):
    partition_rows: int = 8192
    batch_size: int = 8192
    concurrency: int = 1
    mode: str = choice("ssr", MODES)   # ssr (Algorithm 1) | raw (same threshold, no SSR) | argmax | softmax
    ablation_modes: List[str] = field(default_factory=list, metadata={"choices": MODES})  # also pick with these (table match_ablations)
    k: int = ranged(32, AT_LEAST_1)    # top-k of the dynamic threshold (pool smaller than k: the whole pool)
    temperature: float = ranged(0.05, POSITIVE)   # softmax mode: sampling over the top-k cosines / temperature
    device: str = runtime("auto")      # the pool sits here (cuda when present)
    block_mb: int = ranged(256, NON_NEGATIVE, runtime=True)   # memory for one block of query x pool scores (0: one query a block)
    # opt-in: concepts of one image variant never share a chunk while the eligible set allows it
    # (a repeat is the generator's next draw from the same set without the taken chunks);
    # false = Algorithm 1 exactly as the paper (repeats possible, recorded in mixes.repeated_chunks)
    distinct_within_variant: bool = False


class RetrieveStage(Stage):
    name = "retrieve"
    Settings = RetrieveSettings
    outputs = ("matches", "match_ablations")
    upstream = ("embed_audio", "embed_text")
    uses = ("run.seed",)
    # what a match depends on; `row` (its place in the concept matrix) moves when concepts are added
    content_columns = ("id", "concept_id", "image_id", "variant", "concept_index", "text")
    keep_together = "concept_id"        # every concept of an image variant in one partition (distinct draws)
    whole_partition = True

    def __init__(self, cfg):
        super().__init__(cfg)
        store = TableStore(cfg.run.dir)
        pool, self.chunk_ids = load_pool(store, "audio_embeddings")     # mapped, shared per node; ids by row
        self.retriever = BlockedRetriever(pool, self.conf.k, self.conf.device, self.conf.block_mb << 20)
        self.queries = np.load(matrix_paths(store, "concept_embeddings")[0], mmap_mode="r")   # rows come with the work list

    @classmethod
    def work_list(cls, cfg, store):
        """Embedded concepts with their row in the concept matrix, joined by DuckDB: workers look queries up by
        position and hold no map of every concept id."""
        ids_path = matrix_paths(store, "concept_embeddings")[1]
        con = store.connect(emb="concept_embeddings")
        rows = (f"read_parquet('{ids_path}')" if ids_path.exists() else
                "(SELECT NULL::VARCHAR AS id, NULL::BIGINT AS row WHERE false)")
        return con.sql(f"""SELECT e.id, e.concept_id, e.image_id, e.variant, e.concept_index, e.text, r.row
                           FROM emb e LEFT JOIN {rows} r USING (id) WHERE e.status = 'ok'""")

    @classmethod
    def data_fingerprint(cls, cfg, store) -> str:
        """Algorithm 1's thresholds depend on the whole pool: every match is recomputed when the pool
        changes (its partitions are named by their content). Concepts only matter row by row."""
        import hashlib

        return hashlib.sha1(",".join(sorted(store.partitions("audio_embeddings"))).encode()).hexdigest()[:16]

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        rows = batch.to_pylist()
        seed, primary = self.cfg.run.seed, self.conf.mode
        modes = [primary] + [m for m in self.conf.ablation_modes if m != primary]
        base = lambda r, mode: ({k: r[k] for k in ("id", "image_id", "variant", "concept_index", "text")}
                                | {"mode": mode, "k": self.retriever.k})
        out, ablations, todo = {}, [], []
        for r in rows:
            if r["row"] is None:
                out[r["id"]] = {**base(r, primary), "status": STATUS_ERROR, "error": error_text("no_embedding", "not in the concept matrix; re-run embed")}
            else:
                todo.append(r)
        if todo:
            # a variant's concepts in concept order, so each sees what the earlier ones took (the
            # default rule ignores order: its choices are keyed by ids alone)
            todo.sort(key=lambda r: (r["concept_id"], r["concept_index"]))
            q = np.asarray(self.queries[[r["row"] for r in todo]], dtype=np.float32)
            need_ties = any(m in ("ssr", "raw", "argmax") for m in modes)
            distinct = self.conf.distinct_within_variant
            taken: dict[tuple[str, str], set[int]] = {}
            for r, (vals, idx, ties) in zip(todo, self.retriever.topk(q, need_ties)):
                for mode in modes:  # one top-k, every rule: a fresh keyed generator each, as in a run of that mode alone
                    rng = keyed_rng(seed, r["image_id"], r["variant"], r["concept_index"])
                    if distinct:
                        used = taken.setdefault((r["concept_id"], mode), set())
                        m = choose_distinct(vals, idx, mode, rng, used, self.conf.temperature, ties)
                        used.add(m.chunk)
                    else:
                        m = choose(vals, idx, mode, rng, self.conf.temperature, ties)
                    row = {**base(r, mode), "chunk_id": self.chunk_ids[m.chunk].as_py(), "cosine": m.cosine, "score": m.score,
                           "threshold": m.threshold, "n_eligible": m.n_eligible, "rank": m.rank,
                           "fallback": m.fallback, "status": STATUS_OK, "error": None}
                    if mode == primary:
                        out[r["id"]] = row
                    else:
                        ablations.append({**row, "id": ablation_id(r["id"], mode)})
        return {"matches": rows_to_table("matches", [out[r["id"]] for r in rows]),
                "match_ablations": rows_to_table("match_ablations", ablations)}
