"""Stages `embed_audio` and `embed_text` (`stage=embed` runs both): CLAP audio embeddings of every
usable chunk, CLAP text embeddings of every concept.

Chunks are decoded from their source file and resampled to CLAP's rate (48 kHz) here, not from a
16 kHz copy, and zero-padded to the chunk length exactly as the mix stage uses them, so CLAP scores
the audio that is mixed (the feature extractor then fills its 10 s window from the padded 5 s;
an unpadded tail would be repeat-padded, heard looped). `stages.embed.audio_input=paper16k` feeds
the paper's A.7 pool instead: decoded at 16 kHz with channels summed, then resampled to 48 kHz. Only concepts of images the filter kept are embedded. Embeddings are L2-normalised
and stored as float16 (Parquet, readable in DuckDB) and, once the stage finishes, as one
contiguous matrix file per table (`sonify.retrieval.matrices`) for retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.ids import concept_id_sql
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.settings import AT_LEAST_1, DTYPES, FRONTENDS, StageSettings, choice, ranged, runtime
from sonify.engine.store import rows_to_table
from sonify.media.audio import load_chunk
from sonify.models.clap import ClapEmbedder, normalise
from sonify.retrieval.matrices import build_matrix
from sonify.sources import SourcePaths
from sonify.stages.base import Stage

PAPER_POOL_RATE = 16000   # A.7: the pool is standardised to 16 kHz mono (channels summed)


@dataclass
class EmbedSettings(StageSettings):
    """`stages.embed`: both embed stages'."""
    partition_rows: int = 1024
    batch_size: int = 32
    concurrency: int = 1
    text_batch_size: int = ranged(256, AT_LEAST_1, runtime=True)   # concept texts per process call (audio rows use batch_size)
    model_batch: int = ranged(8, AT_LEAST_1)   # clips or texts per model call, a fixed shape (the last call padded): in the fingerprint
    text_max_tokens: int = ranged(77, AT_LEAST_1)   # every text is padded (or cut) to this many tokens, as CLAP was trained
    # CLAP's audio input: source48k = decoded from the source straight to 48 kHz, channels averaged;
    # paper16k = the paper's A.7 pool (decoded at 16 kHz, channels summed), then resampled to 48 kHz
    audio_input: str = choice("source48k", ["source48k", "paper16k"])
    frontend: str = choice("torch", FRONTENDS)   # CLAP's log-mel features
    dtype: str = choice("auto", DTYPES)   # auto (fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = runtime("auto")


class _EmbedStage(Stage):
    """CLAP embeddings of one kind of row; the audio pool and the concept texts are separate work,
    so adding images never re-embeds audio and adding audio embeds only the new chunks."""
    conf_key = "embed"
    Settings = EmbedSettings
    models = ("clap",)
    pool_matrix = False   # the audio pool also gets a float32 matrix, which retrieve workers map (shared per node)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.clap = ClapEmbedder(cfg.models.clap, cfg.models.tiny_dir, self.conf.device, self.conf.dtype,
                                 self.conf.model_batch, self.conf.text_max_tokens, self.conf.frontend)
        paper = self.conf.audio_input == "paper16k"
        self.decode = {"downmix": "sum" if paper else "mean", "via_sr": PAPER_POOL_RATE if paper else None}

    @classmethod
    def finalize(cls, cfg, store) -> None:
        if store.exists(cls.outputs[0]):
            build_matrix(store, cls.outputs[0], float32=cls.pool_matrix)

    def _vectors(self, rows: list[dict], embed, base) -> list[dict]:
        if not rows:
            return []
        unit, norms, ok = normalise(embed())   # a model failure raises: the executor retries the partition
        out = []
        for r, vec, norm, good in zip(rows, unit, norms, ok):
            row = {**base(r), "norm": float(norm) if np.isfinite(norm) else None}
            if good:
                row.update(embedding=vec, status=STATUS_OK, error=None)
            else:
                row.update(status=STATUS_ERROR, error=error_text("bad_embedding", f"norm {norm} (NaN or zero)"))
            out.append(row)
        return out

    def _table(self, name: str, rows: list[dict]) -> pa.Table:
        """Rows to a table whose embedding column is a fixed-size list of CLAP's width (null on error rows)."""
        if not rows:
            return rows_to_table(name, [])
        dim = self.clap.dim
        vectors = [r.pop("embedding", None) for r in rows]
        table = rows_to_table(name, rows).drop(["embedding"])
        filled = np.stack([v if v is not None else np.zeros(dim, np.float32) for v in vectors])
        values = pa.array(filled.astype(np.float16).ravel(), pa.float16())
        emb = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array([v is None for v in vectors], pa.bool_()))
        return table.add_column(table.schema.get_field_index("norm"), "embedding", emb)


class EmbedAudioStage(_EmbedStage):
    name = "embed_audio"
    version = 3                         # 2: the last chunk of a file is zero-padded as mixed; 3: the torch front end
    outputs = ("audio_embeddings",)
    pool_matrix = True
    upstream = ("audio",)
    uses = ("stages.audio.chunk_seconds",)

    @classmethod
    def work_list(cls, cfg, store):
        return store.connect("audio_chunks").sql(
            "SELECT id, file_id, source, uri, start_frame, num_frames, pcm_sha256 FROM audio_chunks WHERE status = 'ok'")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.paths = SourcePaths.of(cfg, "audio")
        self.chunk_seconds = cfg.stages.audio.chunk_seconds   # `uses`: embed_text does not read it

    def decode_batch(self, batch: pa.Table, pmap=map) -> list:
        """Per chunk its samples at CLAP's rate, or the exception that decoding raised (CPU only: the
        executor runs this on worker threads ahead of the model, `sonify.engine.prefetch`)."""
        sr = self.clap.sampling_rate

        def one(r: dict):
            try:
                return load_chunk(self.paths.locate(r), r["start_frame"], r["num_frames"], sr, self.chunk_seconds, **self.decode)
            except Exception as e:
                return e

        return list(pmap(one, batch.to_pylist()))

    def process_batch(self, batch: pa.Table, decoded: list | None = None) -> dict[str, pa.Table]:
        rows = batch.to_pylist()
        good, clips, out = [], [], []
        base = lambda r: {"id": r["id"], "file_id": r["file_id"], "model": self.clap.name}
        for r, d in zip(rows, decoded if decoded is not None else self.decode_batch(batch)):
            if isinstance(d, Exception):
                out.append({**base(r), "status": STATUS_ERROR, "error": error_text("decode_error", f"{type(d).__name__}: {d}")})
            else:
                clips.append(d)
                good.append(r)
        return {"audio_embeddings": self._table("audio_embeddings", out + self._vectors(good, lambda: self.clap.embed_audio(clips, [r["id"] for r in good]), base))}


class EmbedTextStage(_EmbedStage):
    name = "embed_text"
    outputs = ("concept_embeddings",)
    upstream = ("concepts", "filter")

    @classmethod
    def work_list(cls, cfg, store):
        return store.connect("concepts", kept="kept_images").sql(f"""
            SELECT {concept_id_sql("c.id", "u.i - 1")} AS id, c.id AS concept_id, c.image_id, c.variant,
                   (u.i - 1)::TINYINT AS concept_index, c.concepts[u.i].text AS text
            FROM concepts c JOIN kept k ON k.id = c.image_id AND k.kept,
                 LATERAL (SELECT unnest(range(1, len(c.concepts) + 1)) AS i) u
            WHERE c.status = 'ok'
        """)

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        rows = batch.to_pylist()
        base = lambda r: {k: r[k] for k in ("id", "concept_id", "image_id", "variant", "concept_index", "text")} | {"model": self.clap.name}
        out = []
        bs = self.conf.text_batch_size
        for s in range(0, len(rows), bs):
            chunk = rows[s:s + bs]
            out += self._vectors(chunk, lambda: self.clap.embed_text([r["text"] or "" for r in chunk]), base)
        return {"concept_embeddings": self._table("concept_embeddings", out)}

