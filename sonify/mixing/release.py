"""Release manifests: everything needed to rebuild each mixture from the source audio alone.

One row per mixture: the image (id, source, path inside the source), the variant, and per summed
component the audio dataset, the file's path inside it, the frame span at the native rate, the
concept text, its CLAP similarity, the target and measured loudness and the applied gain, plus
the mixture's peak-guard gain and the hashes of the result. No model is needed to use it:
`python -m sonify.mix --manifest release.parquet --audio-root DIR` renders every mixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sonify.engine.files import atomic_write

RELEASE_VERSION = "1"

RELEASE_COMPONENT = pa.struct([
    ("dataset", pa.string()), ("relpath", pa.string()), ("source_rate", pa.int32()),
    ("start_frame", pa.int64()), ("num_frames", pa.int64()), ("offset", pa.float64()), ("duration", pa.float64()),
    ("concept_index", pa.int8()), ("concept_text", pa.string()), ("similarity", pa.float32()),
    ("target_lufs", pa.float64()), ("measured_lufs", pa.float64()), ("gain_db", pa.float64()),
])

RELEASE_SCHEMA = pa.schema([
    ("mix_id", pa.string()), ("path", pa.string()), ("image_id", pa.string()), ("image_source", pa.string()),
    ("image_relpath", pa.string()), ("variant", pa.string()), ("sample_rate", pa.int32()),
    ("chunk_seconds", pa.float64()), ("duration", pa.float64()), ("mix_gain_db", pa.float64()),
    ("lufs", pa.float64()), ("peak_dbfs", pa.float64()), ("pcm24_sha256", pa.string()), ("flac_sha256", pa.string()),
    ("components", pa.list_(RELEASE_COMPONENT)),
], metadata={"sonify.release_version": RELEASE_VERSION})


def release_paths(run_dir: str | Path) -> tuple[Path, Path]:
    d = Path(run_dir) / "release"
    return d / "release.parquet", d / "release.jsonl"


def build_release(cfg, store) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    con.register("mixes", store.read("mixes"))
    con.register("images", store.read("images", columns=["id", "source", "relpath"]))
    table = con.sql(f"""
        SELECT m.id AS mix_id, regexp_replace(m.path, '^mixes/[^/]+/', '') AS path, m.image_id, i.source AS image_source,
               i.relpath AS image_relpath, m.vlm AS variant, m.sample_rate,
               {float(cfg.stages.audio.chunk_seconds)}::DOUBLE AS chunk_seconds, m.duration, m.mix_gain_db, m.lufs,
               m.peak_dbfs, m.pcm24_sha256, m.flac_sha256,
               list_transform(list_filter(m.components, lambda c: c.included), lambda c: struct_pack(
                   dataset := c.dataset, relpath := c.relpath, source_rate := c.source_rate,
                   start_frame := c.start_frame, num_frames := c.num_frames, "offset" := c."offset",
                   duration := c.duration, concept_index := c.concept_index, concept_text := c.text,
                   similarity := c.cosine, target_lufs := c.target_lufs, measured_lufs := c.measured_lufs,
                   gain_db := c.gain_db)) AS components
        FROM mixes m JOIN images i ON i.id = m.image_id
        WHERE m.status = 'ok'
        ORDER BY m.id
    """).to_arrow_table()
    return table.cast(RELEASE_SCHEMA)


def write_release(cfg, store) -> Path:
    parquet_path, jsonl_path = release_paths(cfg.run.dir)
    table = build_release(cfg, store)
    atomic_write(parquet_path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    if cfg.stages.mix.release_jsonl:
        atomic_write(jsonl_path, "".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return parquet_path


def read_release(path: str | Path) -> list[dict]:
    """Rows of a release manifest (Parquet or JSON Lines); refuses another release version."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = pq.read_schema(path).metadata or {}
    version = meta.get(b"sonify.release_version", b"?").decode()
    if version != RELEASE_VERSION:
        raise ValueError(f"{path}: release manifest version {version}, this sonify reads version {RELEASE_VERSION}")
    return pq.read_table(path).to_pylist()
