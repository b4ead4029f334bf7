"""Stage `concepts`: ask each VLM for an image's sounding concepts and a short caption.

Every (image, VLM) pair is one variant (the paper's augmentation) and one row in `concepts` and
`captions`. Concepts can also be imported from a table (released or earlier concepts), which
makes a variant without running a model. Replies that hold no list become `parse_error` rows
with the raw reply kept.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import pyarrow as pa

from sonify.concepts.parser import Concept, ParseResult, item_line, make_text, parse_concepts, split_item
from sonify.engine.config import resolve_text
from sonify.engine.errors import ConfigError, error_text
from sonify.engine.ids import stable_id, stable_id_sql, variant_id, variant_id_from_key_sql, variant_key
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.settings import AT_LEAST_1, DTYPES, StageSettings, choice, ranged, runtime
from sonify.engine.store import rows_to_table
from sonify.media.image import ImageRejected
from sonify.sources import SourcePaths
from sonify.sources.images import load_image
from sonify.stages.base import Stage


@dataclass
class ConceptImport:
    name: str = "import"               # the `variant` value of its rows (one variant)
    path: str = ""                     # Parquet or JSONL with: image_id or uri (alias relpath), concepts, [caption]
    image_source: str = ""             # with a uri (relpath) column: the image source the paths belong to


@dataclass
class ConceptsSettings(StageSettings):
    partition_rows: int = 64
    batch_size: int = 8
    concurrency: int = 1
    generate: bool = True              # run every VLM in models.vlms
    imports: List[ConceptImport] = field(default_factory=list)
    backend: str = choice("hf", ["hf", "vllm"])   # hf (transformers generate) | vllm (GPU clusters; needs the vllm extra)
    model_batch: int = ranged(8, AT_LEAST_1)       # images per model call, a fixed shape (the last call padded): in the fingerprint
    concepts_prompt: str = "prompts/concepts.txt"   # a file, or the prompt text itself
    caption_prompt: str = "prompts/caption.txt"
    max_concepts: int = ranged(3, AT_LEAST_1)
    text_template: str = "{line}"      # the CLAP query: {line} (the item as written, no list marker), {object}, {sound}
    dtype: str = choice("auto", DTYPES)   # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = runtime("auto")      # auto | cpu | cuda | cuda:N
    max_image_side: int = ranged(1024, AT_LEAST_1)   # images are decoded no larger than this before the processor
    # per VLM (its models.vlms entry or hub id): its image processor's own settings, in the fingerprint;
    # a tiling processor resizes to its own size first, e.g. {HuggingFaceTB/SmolVLM-Instruct: {size: {longest_edge: 768}}}
    processor_kwargs: Dict[str, Any] = field(default_factory=dict)
    max_pixels: int = ranged(89_478_485, AT_LEAST_1)
    generation: Dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 96, "do_sample": False, "num_beams": 1})
    caption_generation: Dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 40, "do_sample": False, "num_beams": 1})


IMPORT_BATCH_ROWS = 65536   # JSON Lines records read from an import file at once
IMPORT_SCHEMA = pa.schema([(n, pa.string()) for n in ("id", "image_id", "variant", "import_json", "import_caption")] + [("n", pa.int64())])
IMPORT_NEEDS = "needs a 'concepts' field and 'image_id' or 'uri'"
IMPORT_PATH_FIELDS = ("uri", "relpath")   # an image's path inside its source; `relpath` (releases before schema 2) an alias of `uri`


def read_import(path: str, batch_rows: int | None = None) -> Iterator[list[dict]]:
    """Records of a JSON Lines import (where `concepts` may differ in type per line), in batches: a
    release names millions of variants, never all at once."""
    rows, batch_rows = [], batch_rows or IMPORT_BATCH_ROWS
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"concepts import {path}, line {n}: {e}") from None
            if len(rows) == batch_rows:
                yield rows
                rows = []
    if rows:
        yield rows


def _jsonl_rows(imp) -> Iterator[pa.Table]:
    """The variants a JSON Lines import names (its image, concepts and caption), a batch at a time."""
    fields, seen = set(), 0
    for records in read_import(imp.path):
        rows = []
        for r in records:
            fields.update(r)
            uri = next((r[k] for k in IMPORT_PATH_FIELDS if r.get(k)), None)
            if not (r.get("image_id") or uri):
                raise ValueError(f"concepts import {imp.path}, row {seen + len(rows) + 1}: needs 'image_id' or 'uri'")
            image_id = r.get("image_id") or stable_id(r.get("source") or imp.image_source, uri)
            rows.append({"id": variant_id(imp.name, image_id), "image_id": image_id, "variant": imp.name,
                         "import_json": json.dumps(r.get("concepts")), "import_caption": r.get("caption"),
                         "n": seen + len(rows)})
        seen += len(rows)
        yield pa.Table.from_pylist(rows, schema=IMPORT_SCHEMA)
    if seen and "concepts" not in fields:
        raise ValueError(f"concepts import {imp.path}: {IMPORT_NEEDS}; has {sorted(fields)}")


def _parquet_rows(imp, base: int) -> str:
    """The variants a Parquet import names, as SQL over the file: no row passes through Python.
    An image named by path (`uri`, or its alias `relpath`) gets `stable_id`'s id: the first 16 hex digits of
    sha1(source NUL uri)."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(imp.path).names)
    if "concepts" not in names or not ({"image_id", *IMPORT_PATH_FIELDS} & names):
        raise ValueError(f"concepts import {imp.path}: {IMPORT_NEEDS}; has {sorted(names)}")
    col = lambda c: f"NULLIF(CAST(\"{c}\" AS VARCHAR), '')" if c in names else "NULL::VARCHAR"
    source = f"COALESCE({col('source')}, {_literal(imp.image_source)})"
    uri = f"COALESCE({', '.join(col(k) for k in IMPORT_PATH_FIELDS)})"
    image_id = f"COALESCE({col('image_id')}, {stable_id_sql(source, uri)})"
    rows = f"SELECT {image_id} AS image_id, to_json(concepts)::VARCHAR AS import_json, {col('caption')} AS import_caption, " \
           f"file_row_number AS n FROM read_parquet({_literal(imp.path)}, file_row_number = true)"
    return f"SELECT {variant_id_from_key_sql(_literal(variant_key(imp.name)), 'image_id')}, image_id, {_literal(imp.name)}, import_json, import_caption, " \
           f"{base} + n FROM ({rows})"


def _load_imports(con, imports) -> None:
    """Table `imports` in DuckDB (it spills under `run.plan_memory`): Parquet files inserted by DuckDB
    itself, JSON Lines a batch at a time."""
    con.execute("CREATE TEMP TABLE imports (id VARCHAR, image_id VARCHAR, variant VARCHAR, import_json VARCHAR, import_caption VARCHAR, "
                "n BIGINT)")   # n: the record's place in the imports (file, then row), which decides between duplicates
    for f, imp in enumerate(imports):
        base = f << 40
        if not Path(imp.path).is_file():
            raise FileNotFoundError(f"concepts import {imp.path} not found")
        if Path(imp.path).suffix not in (".jsonl", ".json"):
            con.execute(f"INSERT INTO imports {_parquet_rows(imp, base)}")   # one pass over the file; then the check
            missing = con.execute("SELECT count(*) FROM imports WHERE image_id IS NULL").fetchall()[0][0]
            if missing:
                raise ValueError(f"concepts import {imp.path}: {missing} rows have neither 'image_id' nor 'uri'")
            continue
        for batch in _jsonl_rows(imp):
            con.register("import_batch", batch)
            con.execute("INSERT INTO imports SELECT * REPLACE (? + n AS n) FROM import_batch", [base])
            con.unregister("import_batch")


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def check_template(template: str) -> None:
    """A text_template with an unknown placeholder fails in one line before any work."""
    try:
        make_text("object", "sound", template, "line")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"bad value {template!r} for key 'stages.concepts.text_template' ({type(e).__name__}: {e}); "
                          "valid placeholders: {line}, {object}, {sound}") from None


class ConceptsStage(Stage):
    name = "concepts"
    Settings = ConceptsSettings
    version = 2           # 2: both prompts of an image continue from one shared image prefill (float rounding differs)
    outputs = ("concepts", "captions")
    models = ("vlms",)
    upstream = ("images",)
    pass_column = "variant"   # each VLM (or import) is its own pass, with its own actor pool
    expected_errors = frozenset({"parse_error", "unknown_image"})
    # the image's bytes (by hash) and the import's content; not where the image is stored
    content_columns = ("id", "image_id", "variant", "origin", "sha256", "import_json", "import_caption", "list_error")

    def __init__(self, cfg):
        super().__init__(cfg)
        from sonify.models.vlm import load_vlm, processor_settings

        self.concepts_prompt = resolve_text(self.conf.concepts_prompt)
        self.caption_prompt = resolve_text(self.conf.caption_prompt)
        self.generation = dict(self.conf.generation)
        self.caption_generation = dict(self.conf.caption_generation)
        self.paths = SourcePaths.of(cfg, "images")
        self.vlms = {}
        if self.conf.generate:
            for name in cfg.models.vlms:
                self.vlms[name] = load_vlm(name, self.conf.backend, cfg.models.tiny_dir, self.conf.device,
                                           self.conf.dtype, cfg.models.trust_remote_code, self.conf.model_batch,
                                           processor_settings(self.conf.processor_kwargs, name))

    @classmethod
    def own_fingerprint(cls, cfg) -> dict:
        """An import's rows enter by content (the work list's `import_json`); where its file lies is not content,
        so moving it recomputes nothing."""
        fp = super().own_fingerprint(cfg)
        fp["conf"]["imports"] = [{k: v for k, v in imp.items() if k != "path"} for imp in fp["conf"]["imports"]]
        return fp

    @classmethod
    def pass_config(cls, cfg, value: str):
        """Workers of one pass load only that pass's VLM (none for an import)."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(OmegaConf.to_container(cfg))
        cfg.models.vlms = [value] if value in cfg.models.vlms else []
        return cfg

    @classmethod
    def work_list(cls, cfg, store):
        """One row per (decoded image, VLM) and per imported variant, as a DuckDB query over the images table."""
        conf = cls.settings(cfg)
        check_template(conf.text_template)
        con = store.connect("images")
        selects = [f"""SELECT {variant_id_from_key_sql(_literal(variant_key(vlm)), 'id')} AS id, id AS image_id, {_literal(vlm)} AS variant,
                              'generate' AS origin, source, uri, tar_offset, nbytes, sha256, NULL::VARCHAR AS import_json,
                              NULL::VARCHAR AS import_caption, NULL::VARCHAR AS list_error
                       FROM images WHERE status = 'ok'""" for vlm in (cfg.models.vlms if conf.generate else [])]
        if conf.imports:
            _load_imports(con, conf.imports)
            selects.append("""SELECT m.id, m.image_id, m.variant, 'import' AS origin, i.source, i.uri, NULL::BIGINT AS tar_offset,
                                     NULL::BIGINT AS nbytes, NULL::VARCHAR AS sha256, m.import_json, m.import_caption,
                                     CASE WHEN i.id IS NULL THEN 'unknown_image: ' || m.image_id
                                          || ' is not a decodable image of this run' END AS list_error
                              FROM (SELECT * FROM imports QUALIFY row_number() OVER (PARTITION BY id ORDER BY n) = 1) m
                              LEFT JOIN (SELECT id, source, uri FROM images WHERE status = 'ok') i ON i.id = m.image_id""")
            # a variant named twice keeps its first record (file order, then row): chosen here, by a key, because
            # the planner's own rule (the first row of the work list) would follow DuckDB's unordered output
        if not selects:
            raise ValueError("stage concepts has nothing to do: no models.vlms with generate=true and no imports")
        return con.sql(" UNION ALL ".join(selects))

    def _base(self, row: dict, prompt: str) -> dict:
        return {"id": row["id"], "image_id": row["image_id"], "variant": row["variant"], "origin": row["origin"], "prompt": prompt}

    def _concepts_row(self, row: dict, prompt: str, raw: str | None, parsed=None, error: str | None = None) -> dict:
        out = {**self._base(row, prompt), "raw": raw}
        if error is None and parsed is not None and parsed.error:
            error = parsed.error
        if parsed is not None:
            out.update(concepts=[c.__dict__ for c in parsed.concepts], n_concepts=len(parsed.concepts), items_found=parsed.items_found)
        return {**out, "status": STATUS_ERROR if error else STATUS_OK, "error": error}

    def _caption_row(self, row: dict, caption: str | None, error: str | None = None) -> dict:
        return {**self._base(row, self.caption_prompt), "caption": caption,
                "status": STATUS_ERROR if error else STATUS_OK, "error": error}

    def _imported(self, row: dict) -> tuple[dict, dict]:
        items = json.loads(row["import_json"]) if row["import_json"] else None
        if isinstance(items, str):
            parsed = parse_concepts(items, self.conf.max_concepts, self.conf.text_template)
            raw = items
        else:
            concepts = []
            for item in items or []:
                if isinstance(item, dict):
                    obj, sound = str(item.get("object") or "").strip(), str(item.get("sound") or item.get("object") or "").strip()
                    text = item.get("text") or make_text(obj, sound, self.conf.text_template)
                elif item:
                    obj, sound = split_item(str(item))
                    text = make_text(obj, sound, self.conf.text_template, item_line(str(item)))
                else:
                    continue
                if obj:
                    concepts.append(Concept(obj, sound, text))
            parsed = ParseResult(concepts=concepts[: self.conf.max_concepts], items_found=len(concepts),
                                 error=None if concepts else "parse_error: the imported concept list is empty")
            raw = "\n".join(str(i) for i in items or [])
        return self._concepts_row(row, "(imported)", raw, parsed), self._caption_row(row, row["import_caption"])

    def decode_batch(self, batch: pa.Table, pmap=map) -> dict:
        """Per row the VLM will read: its decoded image or the ImageRejected that says why not (CPU only:
        the executor runs this on worker threads ahead of the model, `sonify.engine.prefetch`)."""
        def one(row: dict):
            try:
                return load_image(row, self.paths, self.conf.max_pixels, self.conf.max_image_side)
            except ImageRejected as e:
                return e

        rows = [r for r in batch.to_pylist() if not r["list_error"] and r["origin"] != "import"]
        return dict(zip((r["id"] for r in rows), pmap(one, rows)))

    def _generated(self, rows: list[dict], decoded: dict) -> list[tuple[dict, dict]]:
        out: dict[str, tuple[dict, dict]] = {}
        images, good = [], []
        failed = lambda row, err: (self._concepts_row(row, self.concepts_prompt, None, error=err), self._caption_row(row, None, err))
        for row in rows:
            image = decoded[row["id"]]
            if isinstance(image, ImageRejected):
                out[row["id"]] = failed(row, error_text(image.reason, image.detail))
            else:
                images.append(image)
                good.append(row)
        if good:   # a model failure is not the rows' fault: it raises, and the executor retries the partition
            vlm = self.vlms[good[0]["variant"]]
            asks = [(self.caption_prompt, self.caption_generation), (self.concepts_prompt, self.generation)]
            if hasattr(vlm, "generate_prompts"):   # one image prefill for both prompts
                captions, replies = vlm.generate_prompts(images, asks)
            else:
                captions, replies = (vlm.generate(images, prompt, gen) for prompt, gen in asks)
            for row, caption, reply in zip(good, captions, replies):
                parsed = parse_concepts(reply, self.conf.max_concepts, self.conf.text_template)
                out[row["id"]] = (self._concepts_row(row, self.concepts_prompt, reply, parsed), self._caption_row(row, caption))
        return [out[r["id"]] for r in rows]

    def process_batch(self, batch: pa.Table, decoded: dict | None = None) -> dict[str, pa.Table]:
        decoded = decoded if decoded is not None else self.decode_batch(batch)
        results = []
        by_variant = defaultdict(list)
        for row in batch.to_pylist():
            if row["list_error"]:
                results.append((self._concepts_row(row, "", None, error=row["list_error"]), self._caption_row(row, None, row["list_error"])))
            elif row["origin"] == "import":
                results.append(self._imported(row))
            else:
                by_variant[row["variant"]].append(row)
        for rows in by_variant.values():
            results.extend(self._generated(rows, decoded))
        return {"concepts": rows_to_table("concepts", [c for c, _ in results]),
                "captions": rows_to_table("captions", [c for _, c in results])}
