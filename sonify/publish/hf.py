"""Export a run as a Hugging Face `datasets` dataset: one example per mixture (image, variant).

Columns: `image` (`Image`, the source file's encoded bytes), `audio` (`Audio`, the mixture's FLAC
bytes), `concepts`, `caption`, `components` (per chunk: source, concept, CLAP scores, target and
measured LUFS, gain), the mixture's loudness figures and `split` (from the run's `shard_index`;
`unsplit` when the shards stage has not run). `save_to_disk` goes to `<out>`, the same rows as
Parquet (with the features in its metadata) to `<out>/parquet/`. The rows stream: each table is read
by DuckDB under the run's `run.plan_memory`, sorted by mixture id and merged a batch at a time, so
memory does not grow with the run.

`datasets` >= 4 decodes `Audio` with torchcodec. torchcodec's wheels for torch 2.13 are CUDA builds
(they need libnvrtc), so on a CPU-only torch decode the audio with soundfile instead: `decode_audio`
(or `ds.cast_column("audio", Audio(decode=False))` and `soundfile.read(io.BytesIO(x["bytes"]))`).
"""

from __future__ import annotations

import io
from pathlib import Path

from sonify.engine.errors import ConfigError
from sonify.engine.files import atomic_path
from sonify.engine.ids import concept_id_sql
from sonify.engine.store import saved_plan_memory
from sonify.engine.schemas import COMPONENT_TYPE, EXPORT_COMPONENT_FIELDS, STATUS_OK
from sonify.publish.data import Run
from sonify.sources.images import read_image_bytes



def features(audio=None):
    """The dataset's features; `audio` replaces the Audio feature (the writer stores plain bytes first)."""
    from datasets import Audio, Features, Image, List, Value

    arrow = {"int8": "int8", "int32": "int32", "float": "float32", "double": "float64", "string": "string", "bool": "bool"}
    comp = {n: Value(arrow[str(COMPONENT_TYPE.field(n).type)]) for n in EXPORT_COMPONENT_FIELDS}   # the mixes' component type
    comp.update(score=Value("float32"), threshold=Value("float32"), n_eligible=Value("int32"))
    concept = {"object": Value("string"), "sound": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"), "image_id": Value("string"), "variant": Value("string"), "split": Value("string"),
        "image": Image(), "audio": audio or Audio(), "sample_rate": Value("int32"),
        "caption": Value("string"), "concepts": List(concept), "components": List(comp),
        "lufs": Value("float64"), "peak_dbfs": Value("float64"), "mix_gain_db": Value("float64"),
        "image_source": Value("string"), "image_uri": Value("string"),
    })


# What each example takes from the run's tables, as sorted streams keyed by the mixture id: `m` mixes with
# `i` its image; captions, concepts and shard_index each on their own; `x` a component's ok matches row.
# The example's own names are `features()`'.
MIX_COLUMNS = {"id": "m.id", "image_id": "m.image_id", "variant": "m.variant", "path": "m.path",
               "sample_rate": "m.sample_rate", "lufs": "m.lufs", "peak_dbfs": "m.peak_dbfs", "mix_gain_db": "m.mix_gain_db",
               "components": "m.components", "image_source": "i.source", "image_uri": "i.uri",
               "tar_offset": "i.tar_offset", "nbytes": "i.nbytes"}
KEYED = {"caption": ("captions", "id", "caption"), "concepts": ("concepts", "id", "concepts"),
         "split": ("shard_index", "mix_id", "split")}   # example field: (table, its mixture id column, its column)
MATCH_FIELDS = ("score", "threshold", "n_eligible")   # per component, from its matches row
OPTIONAL_TABLES = ("captions", "concepts", "matches", "shard_index")   # absent: empty (no caption, "unsplit", ...)
BATCH_ROWS = 1024


def _connect(run: Run, memory_limit: str, spill_dir: Path | None):
    """DuckDB over the run's tables (an absent optional table is an empty view of its schema), capped at
    `memory_limit` and spilling to `spill_dir`."""
    from sonify.engine.partitions import duckdb_type, planner_connection
    from sonify.engine.schemas import table_spec

    con = planner_connection(memory_limit, spill_dir)
    for name in ("mixes", "images") + OPTIONAL_TABLES:
        if name in ("mixes", "images") or run.store.exists(name):
            run.store.view(con, name)
        else:
            cols = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in table_spec(name).schema)
            con.execute(f'CREATE VIEW "{name}" AS SELECT {cols} LIMIT 0')
    return con


def _rows(con, query, key: str, keys: str, work: Path, name: str):
    """The rows of `query(condition)` in `key` order, one record batch at a time: DuckDB writes them to a
    Parquet file in `work` first (`copy_in_order`: sorted in bounded ranges under the memory limit), then
    they are read back in batches."""
    import pyarrow.parquet as pq

    from sonify.engine.partitions import copy_in_order

    path = work / f"{name}.parquet"
    copy_in_order(con, query, key, keys, path, f"FORMAT PARQUET, ROW_GROUP_SIZE {BATCH_ROWS}", work / name)
    for batch in pq.ParquetFile(path).iter_batches(BATCH_ROWS):
        yield from batch.to_pylist()


class _Sorted:
    """A stream of rows sorted by `key`, read forward by ascending keys: a merge join's other side.
    (DuckDB sorts VARCHAR by bytes, which for UTF-8 is Python's order of str.)"""

    def __init__(self, rows, key: str):
        self.rows, self.key = rows, key
        self.row = next(rows, None)

    def take(self, key: str) -> list[dict]:
        """The rows whose key is `key` (rows with smaller keys, which no mixture asks for, are passed)."""
        out = []
        while self.row is not None and self.row[self.key] <= key:
            if self.row[self.key] == key:
                out.append(self.row)
            self.row = next(self.rows, None)
        return out


def _streams(con, work: Path):
    """The ok mixtures with their image in id order, and the keyed streams merged into them."""
    ok_ids = f"SELECT id AS k FROM mixes WHERE status = '{STATUS_OK}'"
    cols = ", ".join(f'{e} AS "{n}"' for n, e in MIX_COLUMNS.items())
    mixes = _rows(con, lambda cond: f"""
        SELECT {cols} FROM mixes m JOIN images i ON i.id = m.image_id
        WHERE m.status = '{STATUS_OK}' AND ({cond}) ORDER BY m.id""", "m.id", ok_ids, work, "mixes")
    keyed = {field: _Sorted(_rows(con, lambda cond, t=table, key=key, col=col: f"""
                 SELECT "{key}" AS k, "{col}" AS v FROM {t} WHERE {cond} ORDER BY k""",
                                  f'"{key}"', f'SELECT "{key}" AS k FROM {table}', work, table), "k")
             for field, (table, key, col) in KEYED.items()}
    # each component of each ok mixture in order, with its ok matches row's fields (the match id is
    # '<mixture id>-<concept index>'; null when there is none)
    fields = ", ".join(f"x.{f}" for f in MATCH_FIELDS)
    keyed["components"] = _Sorted(_rows(con, lambda cond: f"""
        SELECT u.mix_id AS k, {fields}
        FROM (SELECT m.id AS mix_id, unnest(m.components).concept_index AS concept_index,
                     generate_subscripts(m.components, 1) AS n
              FROM mixes m WHERE m.status = '{STATUS_OK}' AND ({cond})) u
             LEFT JOIN matches x ON x.id = {concept_id_sql('u.mix_id', 'u.concept_index')} AND x.status = '{STATUS_OK}'
        ORDER BY u.mix_id, u.n""", "m.id", ok_ids, work, "components"), "k")
    return mixes, keyed


def examples(run_dir: str, memory_limit: str = "1GB", work_dir: str | None = None):
    """The rows, one mixture at a time: sorted DuckDB results (each query alone, under `memory_limit`,
    written to Parquet in `work_dir`) merged here by mixture id, media read as each row is made. Memory
    holds a batch of each, whatever the run's size."""
    import shutil
    import tempfile

    run = Run(run_dir)
    image_paths = run.paths("images")
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sonify-hf-", dir=work_dir))
    con = _connect(run, memory_limit, work / "spill")
    try:
        mixes, keyed = _streams(con, work)
        for m in mixes:
            found = {field: stream.take(m["id"]) for field, stream in keyed.items()}
            matched = found.pop("components")
            if len(matched) != len(m["components"]):   # both come from the same mixes row: a bug if they differ
                raise RuntimeError(f"hf export: {m['id']} has {len(m['components'])} components, {len(matched)} matched")
            value = {field: rows[-1]["v"] if rows else None for field, rows in found.items()}
            img = {"source": m["image_source"], "uri": m["image_uri"]}
            yield {
                "id": m["id"], "image_id": m["image_id"], "variant": m["variant"], "split": value["split"] or "unsplit",
                "image": {"bytes": read_image_bytes(image_paths.locate(img), m["tar_offset"], m["nbytes"]),
                          "path": Path(m["image_uri"]).name},
                "audio": {"bytes": (run.dir / m["path"]).read_bytes(), "path": Path(m["path"]).name},
                "sample_rate": m["sample_rate"], "caption": value["caption"], "concepts": value["concepts"] or [],
                "components": [{**{k: c[k] for k in EXPORT_COMPONENT_FIELDS}, **{k: x[k] for k in MATCH_FIELDS}}
                               for c, x in zip(m["components"], matched)],
                "lufs": m["lufs"], "peak_dbfs": m["peak_dbfs"], "mix_gain_db": m["mix_gain_db"],
                "image_source": m["image_source"], "image_uri": m["image_uri"],
            }
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)


MARKER = "sonify-hf-export.txt"   # written into every export: what marks a folder `--out` may replace


def earlier_export(folder: Path) -> bool:
    """Whether `folder` is an export of this command: its marker, or (an export written before the marker)
    what `save_to_disk` writes plus the `parquet/` copies and nothing else."""
    if (folder / MARKER).is_file():
        return True
    names = {p.name for p in folder.iterdir()}
    return {"dataset_info.json", "state.json", "parquet"} <= names and all(
        n in ("dataset_info.json", "state.json", "parquet") or n.endswith(".arrow") for n in names)


def check_out(run_dir: str | Path, out: str | Path) -> None:
    """Refuse, in one line, an `out` whose replacement would delete something that is not an earlier export:
    the run folder itself, a folder holding it or inside it, a file, or a folder holding anything else."""
    run, dest = Path(run_dir).resolve(), Path(out).resolve()
    if dest == run or dest in run.parents or run in dest.parents:
        where = "is" if dest == run else "holds" if dest in run.parents else "lies inside"
        raise ConfigError(f"--out {out} {where} the run folder {run_dir}: the export replaces its folder whole; give another folder")
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if dest.is_dir() and any(dest.iterdir()) and not earlier_export(dest):
        raise ConfigError(f"--out {out} is a folder that holds other files (not an earlier export, no {MARKER}); "
                          "give a new or empty folder")


def export_hf(run_dir: str | Path, out: str | Path, rows_per_parquet: int = 1000) -> int:
    """Write the dataset to `out` (replacing an earlier export there whole); returns the number of examples.
    Everything refused is refused before anything is written."""
    import shutil

    import datasets

    from sonify.engine.partitions import planner_connection
    from sonify.engine.store import open_run

    if rows_per_parquet < 1:
        raise ConfigError(f"rows_per_parquet must be a positive integer, got {rows_per_parquet}")
    run = Run(run_dir)   # fails in one line before anything is written when run_dir holds no run
    check_out(run.dir, Path(out))
    open_run(run.dir, "mixes", "images").close()   # a missing table: its one-line MissingTable, not a generator's traceback
    memory = run.store.memory_limit or saved_plan_memory(run.dir)   # as every reader of the run (TableStore)
    planner_connection(memory).close()   # a bad run.plan_memory fails here in one line (ConfigError)
    raw_audio = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    with atomic_path(Path(out)) as tmp:
        (tmp / "parquet").mkdir(parents=True)
        (tmp / MARKER).write_text("written by python -m sonify.export hf; --out may replace this folder\n")
        # Audio.encode_example imports torchcodec even for bytes; the bytes are stored as they are and
        # the column is then cast to Audio (a schema change only), so writing needs no decoder
        gen_kwargs = {"run_dir": str(run_dir), "memory_limit": memory, "work_dir": str(tmp)}
        ds = datasets.Dataset.from_generator(examples, gen_kwargs=gen_kwargs, features=features(raw_audio),
                                             cache_dir=str(tmp / ".cache"))
        ds = ds.cast_column("audio", datasets.Audio())
        ds.save_to_disk(str(tmp))
        for i in range(0, len(ds), rows_per_parquet):
            ds.select(range(i, min(i + rows_per_parquet, len(ds)))).to_parquet(
                str(tmp / "parquet" / f"data-{i // rows_per_parquet:05d}.parquet"))
        n = len(ds)
        del ds
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
    return n


def decode_audio(example: dict) -> tuple:
    """(samples float64 [frames] or [frames, channels], rate) of an example's `audio`, with soundfile."""
    import soundfile as sf

    a = example["audio"]
    return sf.read(io.BytesIO(a["bytes"]) if a.get("bytes") else a["path"])
