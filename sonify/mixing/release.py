"""Release manifests: everything needed to rebuild each mixture from the source audio alone.

One row per mixture: the image (id, source, path inside the source), the variant, and per summed
component the audio source, the file's path inside it (`uri`), the frame span at the native rate, the
concept text, its CLAP cosine, the target and measured loudness and the applied gain, plus
the mixture's peak-guard gain and the hashes of the result. No model is needed to use it:
`python -m sonify.mix --manifest release.parquet --source NAME=DIR` renders every mixture.

The components' fields are the mixes table's (`RELEASE_COMPONENT_FIELDS` of `COMPONENT_TYPE`). Releases
of version 1 (written before the renames) are read through `LEGACY_NAMES`, the one place old names live.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from sonify.engine.files import atomic_write, temp_path
from sonify.engine.partitions import copy_in_order, duckdb_type, ordered, planner_connection, sql_text
from sonify.engine.schemas import (OLD_COMPONENT_NAMES, OLD_NAMES, RELEASE_COMPONENT_FIELDS, component_sql,
                                   component_struct)

RELEASE_VERSION = "2"    # 2: image_relpath -> image_uri; components' dataset -> source, relpath -> uri,
                         # concept_text -> text, similarity -> cosine (the tables' names)
RELEASE_ROW_GROUP = 8192     # rows per Parquet row group: a reader streams a row group at a time

RELEASE_COMPONENT = component_struct(RELEASE_COMPONENT_FIELDS)

RELEASE_SCHEMA = pa.schema([
    ("mix_id", pa.string()), ("path", pa.string()), ("image_id", pa.string()), ("image_source", pa.string()),
    ("image_uri", pa.string()), ("variant", pa.string()), ("sample_rate", pa.int32()),
    ("chunk_seconds", pa.float64()), ("duration", pa.float64()), ("mix_gain_db", pa.float64()),
    ("lufs", pa.float64()), ("peak_dbfs", pa.float64()), ("pcm24_sha256", pa.string()), ("flac_sha256", pa.string()),
    ("components", pa.list_(RELEASE_COMPONENT)),
], metadata={"sonify.release_version": RELEASE_VERSION})

# Old names by release version: (top-level columns, component fields) -> today's names (`engine.schemas`). A
# release of an older version (or a JSON Lines copy that uses the old names) is read through this map.
LEGACY_NAMES = {"1": (OLD_NAMES, OLD_COMPONENT_NAMES)}
READABLE_VERSIONS = (RELEASE_VERSION, *LEGACY_NAMES)


def release_paths(run_dir: str | Path) -> tuple[Path, Path]:
    d = Path(run_dir) / "release"
    return d / "release.parquet", d / "release.jsonl"


# Where each release column comes from: `m` is a mixes row, `i` its images row, `c` one included component.
# The release's own names and types are RELEASE_SCHEMA's; this maps them onto the run's tables.
RELEASE_FROM = {
    "mix_id": "m.id", "path": "regexp_replace(m.path, '^mixes/[^/]+/', '')", "image_id": "m.image_id",
    "image_source": "i.source", "image_uri": "i.uri", "variant": "m.variant", "sample_rate": "m.sample_rate",
    "chunk_seconds": "{chunk_seconds}", "duration": "m.duration", "mix_gain_db": "m.mix_gain_db", "lufs": "m.lufs",
    "peak_dbfs": "m.peak_dbfs", "pcm24_sha256": "m.pcm24_sha256", "flac_sha256": "m.flac_sha256",
}
RELEASE_IMAGE_COLUMNS = ["id", "source", "uri"]   # what the release reads of `images`
RELEASE_KEYS = "SELECT id AS k FROM mixes WHERE status = 'ok'"   # the sort key's values (copy_in_order)


def release_sql(chunk_seconds: float, condition: str = "true") -> str:
    """The release's rows (those also meeting `condition`) as one DuckDB query over views `mixes` and
    `images`, in mix id order, typed as RELEASE_SCHEMA (names and types from the schema, sources from
    RELEASE_FROM and RELEASE_COMPONENT_FIELDS)."""
    fields = {"chunk_seconds": f"{float(chunk_seconds)!r}"}
    component = component_sql(RELEASE_COMPONENT_FIELDS, "c")   # the release's components are the mixes' fields
    exprs = {n: e.format(**fields) for n, e in RELEASE_FROM.items()}
    exprs["components"] = f"list_transform(list_filter(m.components, lambda c: c.included), lambda c: {component})"
    columns = ",\n       ".join(f'CAST({exprs[f.name]} AS {duckdb_type(f.type)}) AS "{f.name}"' for f in RELEASE_SCHEMA)
    return f"""SELECT {columns}
FROM mixes m JOIN images i ON i.id = m.image_id
WHERE m.status = 'ok' AND ({condition})
ORDER BY m.id"""


@contextmanager
def release_connection(cfg, store):
    """(connection, work folder): DuckDB over the run's `mixes` and `images` (views over their Parquet
    files), capped at `run.plan_memory` and spilling to a temp work folder inside the run's release folder
    (removed afterwards)."""
    work = temp_path(release_paths(cfg.run.dir)[0].parent / "work")
    con = planner_connection(str(cfg.run.plan_memory), work / "spill")
    try:
        store.view(con, "mixes")
        store.view(con, "images", columns=RELEASE_IMAGE_COLUMNS)
        yield con, work
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)


def build_release(cfg, store) -> pa.Table:
    """The release as an Arrow table (for tools and tests on small runs; `write_release` streams)."""
    with release_connection(cfg, store) as (con, _):
        return con.sql(release_sql(cfg.stages.audio.chunk_seconds)).to_arrow_table().cast(RELEASE_SCHEMA)


def write_release(cfg, store) -> Path:
    """Write `release/release.parquet` (and `release.jsonl` with `stages.mix.release_jsonl`) by DuckDB `COPY`:
    rows stream from the run's Parquet files to the file under `run.plan_memory` (sorted in bounded id
    ranges, `copy_in_order`), never held in Python. Each file appears atomically."""
    parquet_path, jsonl_path = release_paths(cfg.run.dir)
    meta = ", ".join(f"{sql_text(k.decode())}: {sql_text(v.decode())}" for k, v in RELEASE_SCHEMA.metadata.items())
    options = f"FORMAT PARQUET, COMPRESSION zstd, ROW_GROUP_SIZE {RELEASE_ROW_GROUP}, KV_METADATA {{{meta}}}"
    with release_connection(cfg, store) as (con, work):
        atomic_write(parquet_path, lambda tmp: copy_in_order(
            con, lambda condition: release_sql(cfg.stages.audio.chunk_seconds, condition), "m.id", RELEASE_KEYS,
            tmp, options, work))
        if cfg.stages.mix.release_jsonl:
            # the human-readable copy, from the Parquet file just written; floats widened to doubles, so a
            # float32 reads back as the same number the Parquet holds (as Python's json wrote it)
            columns = ", ".join(f'CAST("{f.name}" AS {duckdb_type(f.type, float32="DOUBLE")}) AS "{f.name}"'
                                for f in RELEASE_SCHEMA)
            with ordered(con):
                atomic_write(jsonl_path, lambda tmp: con.execute(
                    f"COPY (SELECT {columns} FROM read_parquet({sql_text(parquet_path)})) TO {sql_text(tmp)} (FORMAT JSON)"))
        else:   # a copy of an earlier release would no longer match the Parquet beside it
            jsonl_path.unlink(missing_ok=True)
    return parquet_path


# What `sonify.mix` needs of each row (the other columns describe the mixture and may be absent).
NEEDED_COLUMNS = ("mix_id", "path", "sample_rate", "chunk_seconds", "mix_gain_db", "components")
NEEDED_COMPONENT_FIELDS = ("source", "uri", "start_frame", "num_frames", "gain_db")
OPTIONAL_COLUMNS = ("pcm24_sha256", "flac_sha256")


class ManifestError(ValueError):
    """A manifest that cannot be rendered at all; the message is one line naming the column."""


def _same_kind(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Types that hold the same kind of value (widths may differ: the cast below checks the values)."""
    t = pa.types
    if t.is_null(actual):
        return True  # all values null: the null check names it
    if t.is_string(expected):
        return t.is_string(actual) or t.is_large_string(actual)
    if t.is_integer(expected):
        return t.is_integer(actual)
    if t.is_floating(expected):
        return t.is_integer(actual) or t.is_floating(actual)
    return actual == expected


def _check_column(name: str, col: pa.ChunkedArray, expected: pa.DataType, nullable: bool) -> None:
    t = pa.types
    if t.is_list(expected) and not t.is_null(col.type):
        if not ((t.is_list(col.type) or t.is_large_list(col.type)) and t.is_struct(col.type.value_type)):
            raise ManifestError(f"column {name!r} has type {col.type}, expected a list of structs ({', '.join(NEEDED_COMPONENT_FIELDS)})")
        values = pa.chunked_array([c.flatten() for c in col.chunks], type=col.type.value_type)
        if values.null_count:
            raise ManifestError(f"column {name!r} holds {values.null_count} empty components")
        present = {f.name for f in col.type.value_type}
        for sub in NEEDED_COMPONENT_FIELDS:
            if sub not in present:
                raise ManifestError(f"column '{name}.{sub}' is missing (each component needs {', '.join(NEEDED_COMPONENT_FIELDS)})")
            _check_column(f"{name}.{sub}", pa.chunked_array([c.field(sub) for c in values.chunks], type=col.type.value_type.field(sub).type),
                          expected.value_type.field(sub).type, nullable=False)
    elif not _same_kind(col.type, expected):
        raise ManifestError(f"column {name!r} has type {col.type}, expected {expected}")
    if not nullable and col.null_count:
        raise ManifestError(f"column {name!r} has {col.null_count} empty values")


def check_release(table: pa.Table) -> None:
    """Check the columns rendering needs against RELEASE_SCHEMA's kinds of values.

    Fails on the first problem with one line that names the column: a missing one, a value of the
    wrong kind (text where a number belongs), empty values where they are needed.
    """
    missing = [c for c in NEEDED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"missing column {missing[0]!r} (a release manifest needs {', '.join(NEEDED_COLUMNS)})")
    names = NEEDED_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in table.column_names)
    for name in names:
        _check_column(name, table.column(name), RELEASE_SCHEMA.field(name).type, nullable=name in OPTIONAL_COLUMNS)


def _renamed_components(col: pa.ChunkedArray, names: dict[str, str]) -> pa.ChunkedArray:
    """A list-of-struct column with its struct fields renamed by `names` (a field whose new name is taken is kept)."""
    t = pa.types
    if not ((t.is_list(col.type) or t.is_large_list(col.type)) and t.is_struct(col.type.value_type)):
        return col   # not components: check_release names the problem
    present = {f.name for f in col.type.value_type}
    rename = {old: new for old, new in names.items() if old in present and new not in present}
    if not rename:
        return col
    chunks = []
    for chunk in col.chunks:
        values = chunk.values
        fields = values.type
        renamed = pa.StructArray.from_arrays([values.field(i) for i in range(fields.num_fields)],
                                             names=[rename.get(f.name, f.name) for f in fields],
                                             mask=values.is_null() if values.null_count else None)
        chunks.append(type(chunk).from_arrays(chunk.offsets, renamed, mask=chunk.is_null() if chunk.null_count else None))
    return pa.chunked_array(chunks)


def upgrade_release(table: pa.Table, version: str | None = None) -> pa.Table:
    """A release table in today's names: `version`'s old names (every version's, when None: a JSON Lines copy
    carries no version) renamed through `LEGACY_NAMES`; a column already in today's name is left alone."""
    maps = [LEGACY_NAMES[version]] if version in LEGACY_NAMES else list(LEGACY_NAMES.values()) if version is None else []
    for columns, fields in maps:
        names = [columns.get(n, n) if columns.get(n) not in table.column_names else n for n in table.column_names]
        table = table.rename_columns(names)
        if "components" in table.column_names:
            i = table.column_names.index("components")
            table = table.set_column(i, "components", _renamed_components(table.column("components"), fields))
    return table


def _jsonl_table(path: Path) -> pa.Table:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"line {i} is not JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise ManifestError(f"line {i} is not a JSON object")
        rows.append(row)
    if not rows:
        raise ManifestError("no rows")
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([r.get(name) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ManifestError(f"column {name!r} mixes kinds of values: {str(e).splitlines()[0]}") from None
    return upgrade_release(pa.table(columns))


class Release:
    """A release manifest read in batches: Parquet is streamed (`ParquetFile.iter_batches`), so memory does
    not grow with the manifest; JSON Lines, the human-readable copy, is read whole.

    Reads this version and the older ones of `LEGACY_NAMES` (renamed as they are read); refuses another
    (`ValueError`); each batch is checked by `check_release` as it is read.
    """

    def __init__(self, path: str | Path, batch_rows: int = 4096):
        self.path, self.batch_rows = Path(path), batch_rows
        if self.path.suffix in (".jsonl", ".json"):
            self._table = _jsonl_table(self.path)
            self.num_rows = self._table.num_rows
        else:
            self._table = None
            meta = pq.read_schema(self.path).metadata or {}
            self.version = meta.get(b"sonify.release_version", b"?").decode()
            if self.version not in READABLE_VERSIONS:
                raise ValueError(f"release manifest version {self.version}, this sonify reads versions "
                                 f"{', '.join(sorted(READABLE_VERSIONS))}")
            self.num_rows = pq.ParquetFile(self.path).metadata.num_rows
            # a missing column fails before any row is read
            check_release(upgrade_release(pq.read_schema(self.path).empty_table(), self.version))

    def batches(self) -> Iterator[pa.Table]:
        if self._table is not None:
            parts = (pa.Table.from_batches([b]) for b in self._table.to_batches(self.batch_rows))
        else:
            parts = (upgrade_release(pa.Table.from_batches([b]), self.version)
                     for b in pq.ParquetFile(self.path).iter_batches(self.batch_rows))
        start = 0
        for t in parts:
            try:
                check_release(t)
            except ManifestError as e:   # counts in the message are this batch's: say which rows
                raise ManifestError(f"{e} (in rows {start}..{start + t.num_rows - 1})") from None
            start += t.num_rows
            yield t

    def rows(self) -> Iterator[dict]:
        for t in self.batches():
            yield from t.to_pylist()


def read_release(path: str | Path) -> list[dict]:
    """Every row of a (small) release manifest, checked; `sonify.mix` streams a `Release` instead."""
    return list(Release(path).rows())
