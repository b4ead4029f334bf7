"""Stage `embed`: CLAP audio embeddings of every usable chunk, CLAP text embeddings of every concept.

Chunks are decoded from their source file and resampled to CLAP's rate (48 kHz) here, not from a
16 kHz copy, and zero-padded to the chunk length exactly as the mix stage uses them, so CLAP scores
the audio that is mixed (the feature extractor then fills its 10 s window from the padded 5 s;
an unpadded tail would be repeat-padded, heard looped). `stages.embed.audio_input=paper16k` feeds
the paper's A.7 pool instead: decoded at 16 kHz with channels summed, then resampled to 48 kHz. Only concepts of images the filter kept are embedded. Embeddings are L2-normalised
and stored as float16 (Parquet, readable in DuckDB) and, once the stage finishes, as one
contiguous matrix file per table (`sonify.retrieval.matrices`) for retrieval.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.store import rows_to_table
from sonify.media.audio import load_chunk
from sonify.models.clap import ClapEmbedder, normalise
from sonify.retrieval.matrices import build_matrix
from sonify.stages.base import Stage

PAPER_POOL_RATE = 16000   # A.7: the pool is standardised to 16 kHz mono (channels summed)

WORK_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()),
    # audio rows
    ("file_id", pa.string()), ("uri", pa.string()), ("start_frame", pa.int64()), ("num_frames", pa.int64()),
    # text rows
    ("concept_id", pa.string()), ("image_id", pa.string()), ("vlm", pa.string()), ("concept_index", pa.int8()), ("text", pa.string()),
])


class EmbedStage(Stage):
    name = "embed"
    version = 2                         # 2: the last chunk of a file is zero-padded as mixed
    outputs = ("audio_embeddings", "concept_embeddings")
    id_outputs = ("audio_embeddings", "concept_embeddings")
    models = ("clap",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.clap = ClapEmbedder(cfg.models.clap, cfg.models.tiny_dir, self.conf.device, self.conf.dtype)
        self.chunk_seconds = float(cfg.stages.audio.chunk_seconds)
        paper = self.conf.audio_input == "paper16k"
        self.decode = {"downmix": "sum" if paper else "mean", "via_sr": PAPER_POOL_RATE if paper else None}

    @classmethod
    def work_list(cls, cfg, store) -> pa.Table:
        import duckdb

        con = duckdb.connect()
        con.register("chunks", store.read("audio_chunks", columns=["id", "file_id", "uri", "start_frame", "num_frames", "status"]))
        con.register("concepts", store.read("concepts", columns=["id", "image_id", "vlm", "concepts", "status"]))
        con.register("kept", store.read("kept_images", columns=["id", "kept"]))
        return con.sql("""
            SELECT id, 'audio' AS kind, file_id, uri, start_frame, num_frames,
                   NULL::VARCHAR AS concept_id, NULL::VARCHAR AS image_id, NULL::VARCHAR AS vlm,
                   NULL::TINYINT AS concept_index, NULL::VARCHAR AS text
            FROM chunks WHERE status = 'ok'
            UNION ALL
            SELECT c.id || '-' || (u.i - 1)::VARCHAR, 'text', NULL, NULL, NULL, NULL,
                   c.id, c.image_id, c.vlm, (u.i - 1)::TINYINT, c.concepts[u.i].text
            FROM concepts c JOIN kept k ON k.id = c.image_id AND k.kept,
                 LATERAL (SELECT unnest(range(1, len(c.concepts) + 1)) AS i) u
            WHERE c.status = 'ok'
        """).to_arrow_table().cast(WORK_SCHEMA)

    @classmethod
    def fingerprint(cls, cfg) -> str:
        return super().fingerprint(cfg) + "|" + cfg.models.clap + f"|chunk={float(cfg.stages.audio.chunk_seconds)}"

    @classmethod
    def finalize(cls, cfg, store) -> None:
        for table in cls.outputs:
            if store.exists(table):
                build_matrix(store, table)

    def _vectors(self, rows: list[dict], embed, base) -> list[dict]:
        if not rows:
            return []
        try:
            raw = embed()
        except Exception as e:
            return [{**base(r), "status": STATUS_ERROR, "error": error_text("clap_error", f"{type(e).__name__}: {e}")} for r in rows]
        unit, norms, ok = normalise(raw)
        out = []
        for r, vec, norm, good in zip(rows, unit, norms, ok):
            row = {**base(r), "norm": float(norm) if np.isfinite(norm) else None}
            if good:
                row.update(embedding=vec, status=STATUS_OK, error=None)
            else:
                row.update(status=STATUS_ERROR, error=error_text("bad_embedding", f"norm {norm} (NaN or zero)"))
            out.append(row)
        return out

    def _audio(self, rows: list[dict]) -> list[dict]:
        sr, good, clips, out = self.clap.sampling_rate, [], [], []
        base = lambda r: {"id": r["id"], "file_id": r["file_id"], "model": self.clap.name}
        for r in rows:
            try:
                clips.append(load_chunk(r["uri"], r["start_frame"], r["num_frames"], sr, self.chunk_seconds, **self.decode))
                good.append(r)
            except Exception as e:
                out.append({**base(r), "status": STATUS_ERROR, "error": error_text("decode_error", f"{type(e).__name__}: {e}")})
        return out + self._vectors(good, lambda: self.clap.embed_audio(clips), base)

    def _text(self, rows: list[dict]) -> list[dict]:
        base = lambda r: {k: r[k] for k in ("id", "concept_id", "image_id", "vlm", "concept_index", "text")} | {"model": self.clap.name}
        out = []
        bs = max(1, int(self.conf.text_batch_size))
        for s in range(0, len(rows), bs):
            chunk = rows[s:s + bs]
            out += self._vectors(chunk, lambda: self.clap.embed_text([r["text"] or "" for r in chunk]), base)
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

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        rows = batch.to_pylist()
        audio = self._audio([r for r in rows if r["kind"] == "audio"])
        text = self._text([r for r in rows if r["kind"] == "text"])
        return {"audio_embeddings": self._table("audio_embeddings", audio),
                "concept_embeddings": self._table("concept_embeddings", text)}
