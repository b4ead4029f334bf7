"""Export a run as a Hugging Face `datasets` dataset: one example per mixture (image, variant).

Columns: `image` (`Image`, the source file's encoded bytes), `audio` (`Audio`, the mixture's FLAC
bytes), `concepts`, `caption`, `components` (per chunk: source, concept, CLAP scores, target and
measured LUFS, gain), the mixture's loudness figures and `split` (from the run's `shard_index`;
`unsplit` when the shards stage has not run). `save_to_disk` goes to `<out>`, the same rows as
Parquet (with the features in its metadata) to `<out>/parquet/`.

`datasets` >= 4 decodes `Audio` with torchcodec. torchcodec's wheels for torch 2.13 are CUDA builds
(they need libnvrtc), so on a CPU-only torch decode the audio with soundfile instead: `decode_audio`
(or `ds.cast_column("audio", Audio(decode=False))` and `soundfile.read(io.BytesIO(x["bytes"]))`).
"""

from __future__ import annotations

import io
from pathlib import Path

from sonify.engine.files import atomic_path
from sonify.engine.schemas import STATUS_OK
from sonify.publish.data import Run
from sonify.sources.images import read_image_bytes

COMPONENT_FIELDS = ("concept_index", "text", "chunk_id", "dataset", "relpath", "offset", "duration", "cosine",
                    "target_lufs", "measured_lufs", "gain_db", "included")


def features(audio=None):
    """The dataset's features; `audio` replaces the Audio feature (the writer stores plain bytes first)."""
    from datasets import Audio, Features, Image, List, Value

    comp = {"concept_index": Value("int8"), "text": Value("string"), "chunk_id": Value("string"),
            "dataset": Value("string"), "relpath": Value("string"), "offset": Value("float64"),
            "duration": Value("float64"), "cosine": Value("float32"), "score": Value("float32"),
            "threshold": Value("float32"), "n_eligible": Value("int32"), "target_lufs": Value("float64"),
            "measured_lufs": Value("float64"), "gain_db": Value("float64"), "included": Value("bool")}
    concept = {"object": Value("string"), "sound": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"), "image_id": Value("string"), "variant": Value("string"), "split": Value("string"),
        "image": Image(), "audio": audio or Audio(), "sample_rate": Value("int32"),
        "caption": Value("string"), "concepts": List(concept), "components": List(comp),
        "lufs": Value("float64"), "peak_dbfs": Value("float64"), "mix_gain_db": Value("float64"),
        "image_source": Value("string"), "image_relpath": Value("string"),
    })


# What each example takes from the run's tables (`m` mixes, `i` images, `cap` captions, `con` concepts,
# `s` shard_index); the example's own names are `features()`'.
MIX_COLUMNS = {"id": "m.id", "image_id": "m.image_id", "variant": "m.vlm", "path": "m.path",
               "sample_rate": "m.sample_rate", "lufs": "m.lufs", "peak_dbfs": "m.peak_dbfs", "mix_gain_db": "m.mix_gain_db",
               "components": "m.components", "image_source": "i.source", "image_uri": "i.uri", "image_relpath": "i.relpath",
               "tar_offset": "i.tar_offset", "nbytes": "i.nbytes", "caption": "cap.caption", "concepts": "con.concepts",
               "split": "s.split"}
MATCH_FIELDS = ("score", "threshold", "n_eligible")   # per component, from its matches row
OPTIONAL_TABLES = ("captions", "concepts", "matches", "shard_index")   # absent: empty (no caption, "unsplit", ...)
BATCH_ROWS = 1024


def _connect(run: Run, memory_limit: str, spill_dir: Path | None):
    """DuckDB over the run's tables (an absent optional table is an empty view of its schema), capped at
    `memory_limit` and spilling to `spill_dir`: the joins stream, no table is held in Python."""
    from sonify.engine.partitions import duckdb_type, planner_connection
    from sonify.engine.schemas import table_spec

    con = planner_connection(memory_limit, spill_dir)
    con.execute("SET preserve_insertion_order = true")
    for name in ("mixes", "images") + OPTIONAL_TABLES:
        if name in ("mixes", "images") or run.store.exists(name):
            run.store.view(con, name)
        else:
            cols = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in table_spec(name).schema)
            con.execute(f'CREATE VIEW "{name}" AS SELECT {cols} LIMIT 0')
    return con


def _rows(cursor, sql: str):
    for batch in cursor.sql(sql).fetch_record_batch(BATCH_ROWS):
        yield from batch.to_pylist()


def _mix_rows(con):
    """The ok mixtures in id order with their image, caption, concepts and split: one batch at a time."""
    cols = ", ".join(f'{e} AS "{n}"' for n, e in MIX_COLUMNS.items())
    return _rows(con.cursor(), f"""
        SELECT {cols}
        FROM mixes m JOIN images i ON i.id = m.image_id
             LEFT JOIN captions cap ON cap.id = m.id
             LEFT JOIN concepts con ON con.id = m.id
             LEFT JOIN shard_index s ON s.mix_id = m.id
        WHERE m.status = '{STATUS_OK}'
        ORDER BY m.id""")


def _component_matches(con):
    """Each ok mixture's components in order (same mixture order as `_mix_rows`) with its ok matches row's
    fields (the match id is '<mixture id>-<concept index>'; null when there is none)."""
    fields = ", ".join(f"x.{f}" for f in MATCH_FIELDS)
    return _rows(con.cursor(), f"""
        SELECT u.mix_id, {fields}
        FROM (SELECT m.id AS mix_id, unnest(m.components).concept_index AS concept_index,
                     generate_subscripts(m.components, 1) AS k
              FROM mixes m WHERE m.status = '{STATUS_OK}') u
             LEFT JOIN matches x ON x.id = u.mix_id || '-' || u.concept_index AND x.status = '{STATUS_OK}'
        ORDER BY u.mix_id, u.k""")


def examples(run_dir: str, memory_limit: str = "1GB", spill_dir: str | None = None):
    """The rows, one mixture at a time, from two sorted DuckDB streams merged here (media read as each row
    is made): memory holds a batch of each, whatever the run's size."""
    run = Run(run_dir)
    image_paths = run.paths("images")
    con = _connect(run, memory_limit, Path(spill_dir) if spill_dir else None)
    try:
        matched = _component_matches(con)
        for m in _mix_rows(con):
            comps = []
            for c in m["components"]:
                match = next(matched, None)
                if match is None or match["mix_id"] != m["id"]:   # both streams sort by mixture id: a bug if they part
                    raise RuntimeError(f"hf export: components of {m['id']} out of step with their matches")
                comps.append({**{k: c[k] for k in COMPONENT_FIELDS}, **{k: match[k] for k in MATCH_FIELDS}})
            img = {"source": m["image_source"], "uri": m["image_uri"]}
            yield {
                "id": m["id"], "image_id": m["image_id"], "variant": m["variant"], "split": m["split"] or "unsplit",
                "image": {"bytes": read_image_bytes(image_paths.locate(img), m["tar_offset"], m["nbytes"]),
                          "path": Path(m["image_relpath"]).name},
                "audio": {"bytes": (run.dir / m["path"]).read_bytes(), "path": Path(m["path"]).name},
                "sample_rate": m["sample_rate"], "caption": m["caption"], "concepts": m["concepts"] or [],
                "components": comps, "lufs": m["lufs"], "peak_dbfs": m["peak_dbfs"], "mix_gain_db": m["mix_gain_db"],
                "image_source": m["image_source"], "image_relpath": m["image_relpath"],
            }
    finally:
        con.close()


def _plan_memory(run: Run) -> str:
    """The run's `run.plan_memory` from the config it saved (the default where it saved none)."""
    from omegaconf import OmegaConf

    saved = run.dir / "config.yaml"
    conf = OmegaConf.load(saved) if saved.is_file() else None
    return str(OmegaConf.select(conf, "run.plan_memory", default=None) or run.store.memory_limit)


def export_hf(run_dir: str | Path, out: str | Path, rows_per_parquet: int = 1000) -> int:
    """Write the dataset to `out` (replacing it whole); returns the number of examples."""
    import shutil

    import datasets

    run = Run(run_dir)   # fails in one line before anything is written when run_dir holds no run
    raw_audio = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    with atomic_path(Path(out)) as tmp:
        (tmp / "parquet").mkdir(parents=True)
        # Audio.encode_example imports torchcodec even for bytes; the bytes are stored as they are and
        # the column is then cast to Audio (a schema change only), so writing needs no decoder
        gen_kwargs = {"run_dir": str(run_dir), "memory_limit": _plan_memory(run), "spill_dir": str(tmp / ".spill")}
        ds = datasets.Dataset.from_generator(examples, gen_kwargs=gen_kwargs, features=features(raw_audio),
                                             cache_dir=str(tmp / ".cache"))
        ds = ds.cast_column("audio", datasets.Audio())
        ds.save_to_disk(str(tmp))
        for i in range(0, len(ds), rows_per_parquet):
            ds.select(range(i, min(i + rows_per_parquet, len(ds)))).to_parquet(
                str(tmp / "parquet" / f"data-{i // rows_per_parquet:05d}.parquet"))
        n = len(ds)
        del ds
        for scratch in (".cache", ".spill"):
            shutil.rmtree(tmp / scratch, ignore_errors=True)
    return n


def decode_audio(example: dict) -> tuple:
    """(samples float64 [frames] or [frames, channels], rate) of an example's `audio`, with soundfile."""
    import soundfile as sf

    a = example["audio"]
    return sf.read(io.BytesIO(a["bytes"]) if a.get("bytes") else a["path"])
