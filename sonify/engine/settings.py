"""Typed settings: the sections of a pipeline config the engine reads, the base of every stage's settings
class (the runtime fields every stage has), and the rules a field's metadata carries.

A field says which values it takes in its `metadata`, and the loader (`engine.config`) checks them, in one
line naming the key:
- `choices`: the valid values (for a list field, of each item);
- `range`: (test, what is valid); `test(value, cfg)` gets the value and the whole config (for a rule
  between two keys);
- `runtime`: true for a setting that changes where and how fast work runs, never what it produces; it stays
  out of the stage's fingerprint, so it must never change an output. (A setting read only by the stage's
  `finalize`, which runs even when every partition is skipped, is runtime too: `stages.mix.release_jsonl`.)
A subclass that redeclares a field with its own default keeps the base's rules (`rules`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional

from sonify.engine import model_ids

# (test(value, cfg), what is valid)
AT_LEAST_1 = (lambda v, c: v >= 1, "an integer >= 1")
POSITIVE = (lambda v, c: v > 0, "a number > 0")
NON_NEGATIVE = (lambda v, c: v >= 0, "a number >= 0")
NONE_OR_AT_LEAST_1 = (lambda v, c: v is None or v >= 1, "null or an integer >= 1")
FRACTION = (lambda v, c: 0 <= v <= 1, "a fraction in [0, 1]")
MEMORY_SIZE = (lambda v, c: _is_memory_size(v), "a memory size, e.g. 1GB or 512MB")
DTYPES = ["auto", "float32", "bfloat16", "float16"]
FRONTENDS = ["torch", "transformers"]   # an audio model's features: torch (batched on its device) | transformers (the reference)


def _is_memory_size(value: Any) -> bool:
    from sonify.engine.partitions import is_memory_size   # DuckDB's reading, imported only when checked

    return is_memory_size(value)


def ranged(default: Any, rule: tuple, runtime: bool = False) -> Any:
    return field(default=default, metadata={"range": rule, "runtime": runtime})


def choice(default: Any, choices: list, runtime: bool = False) -> Any:
    return field(default=default, metadata={"choices": list(choices), "runtime": runtime})


def runtime(default: Any = None) -> Any:
    return field(default=default, metadata={"runtime": True})


def rules(cls: type, name: str) -> dict:
    """The metadata of field `name` of `cls`, from the nearest class that gives it some."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata:
            return dict(f.metadata)
    return {}


def runtime_keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if rules(cls, f.name).get("runtime")}


@dataclass
class StageSettings:
    """Every stage's runtime settings; a stage's own class (in its module) extends this."""
    partition_rows: int = ranged(256, AT_LEAST_1, runtime=True)   # input rows per output Parquet file (the unit of resume)
    batch_size: int = ranged(64, AT_LEAST_1, runtime=True)        # rows per call of the stage's process_batch
    concurrency: int = ranged(2, AT_LEAST_1, runtime=True)        # Ray actors for this stage
    num_cpus: float = ranged(1.0, NON_NEGATIVE, runtime=True)     # per actor
    num_gpus: float = ranged(0.0, NON_NEGATIVE, runtime=True)     # per actor (a fraction shares a GPU: CLAP and AST need little)
    accelerator_type: Optional[str] = runtime()   # e.g. A100: run this stage's actors on such nodes (Ray's accelerator_type)


@dataclass
class RunConf:
    name: str = "${pipeline}"          # outputs go to <root>/<name>/
    root: str = "runs"
    dir: str = "${run.root}/${run.name}"
    seed: int = 0
    force: bool = False                # recompute finished partitions
    executor: str = choice("ray", ["ray", "local"])   # local: a plain loop in this process, for debugging
    torch_threads: int = ranged(1, AT_LEAST_1)   # threads of every model call, on any executor (float bits depend on it)
    max_retries: int = ranged(3, NON_NEGATIVE)   # a partition whose processing raises (model, device, I/O) is retried this often
    retry_backoff_s: float = ranged(2.0, NON_NEGATIVE)   # ... after 2 s, 4 s, 8 s
    # a stage stops when more of its computed rows than this are error rows
    max_error_fraction: float = ranged(0.5, (lambda v, c: 0 < v <= 1, "a fraction in (0, 1]"))
    # ... judged once at least this many rows were computed (a few bad files are not a trend)
    error_fraction_min_rows: int = ranged(20, NON_NEGATIVE)
    plan_memory: str = ranged("1GB", MEMORY_SIZE)   # DuckDB memory limit of the driver's planning (it spills to <run>/plan/ beyond it)
    progress: bool = True


@dataclass
class RayConf:
    address: Optional[str] = None      # join this cluster; else RAY_ADDRESS; else start a local Ray
    num_cpus: Optional[int] = ranged(None, NONE_OR_AT_LEAST_1)   # CPUs of the local Ray (None: all cores)
    object_store_memory: Optional[int] = ranged(None, NONE_OR_AT_LEAST_1)


@dataclass
class SourceConf:
    name: str = "default"
    kind: str = "folder"               # folder | tar | parquet | csv | recipe (`SOURCE_KINDS`: per role)
    path: str = ""                     # the folder, tar or list file (every kind but recipe)
    recipe: str = ""                   # kind recipe: the corpus (sa1b | audioset | fsd50k | bbc_sfx | vggsound)
    root: str = ""                     # recipe: the local copy in its official layout; csv/parquet lists: the folder their
                                       # entries are stored relative to (default: the list file's folder)
    uri_column: str = "uri"            # list sources: column holding the path or URL
    labels_column: str = "labels"      # audio list sources: labels (list, or ';'-separated string)
    recursive: bool = True
    follow_outside_links: bool = False # folder/tar sources: links resolving outside `path` are error rows 'outside_root' unless true
    list_workers: int = 0              # folder/tar sources: processes listing sub-folders or tars at once (0: one per core)


SOURCE_KINDS = {"images": ["folder", "tar", "parquet", "csv", "recipe"], "audio": ["folder", "parquet", "csv", "recipe"]}


@dataclass
class SourcesConf:
    images: List[SourceConf] = field(default_factory=list)
    audio: List[SourceConf] = field(default_factory=list)


@dataclass
class ModelsConf:
    """Hugging Face ids or local paths; 'tiny:<kind>' builds a tiny random model (tests, demo)."""
    clap: str = model_ids.CLAP
    vlms: List[str] = field(default_factory=lambda: [model_ids.VLM])
    ast: str = model_ids.AST
    vae: str = model_ids.PIXART
    dit: str = model_ids.PIXART
    trust_remote_code: bool = False    # needed for CogVLM (THUDM/cogvlm-chat-hf); opt-in
    tiny_dir: str = "${run.root}/_tiny_models"


@dataclass
class DemoDataConf:
    enabled: bool = False              # generate the offline demo data before running stages
    dir: str = "${run.dir}/data"
    num_images: int = ranged(30, AT_LEAST_1)
    seed: int = 0


@dataclass
class SonifyConf:
    """A pipeline's config; `stages` is the stage registry's section (`sonify.stages.settings_schema`)."""
    pipeline: str = "demo"
    stage: str = "all"
    run: RunConf = field(default_factory=RunConf)
    ray: RayConf = field(default_factory=RayConf)
    sources: SourcesConf = field(default_factory=SourcesConf)
    stages: Any = None
    models: ModelsConf = field(default_factory=ModelsConf)
    demo_data: DemoDataConf = field(default_factory=DemoDataConf)



def describe(cls: type, prefix: str = "", title: str = "") -> list[str]:
    """Every key of the config class `cls` with its default (and its choices), a heading per section: the key
    list a command's `--help` prints, generated from the classes so it cannot drift from what loads."""
    import typing

    hints, plain, sections = typing.get_type_hints(cls), [], []
    for f in dataclasses.fields(cls):
        typ, key = hints[f.name], f"{prefix}{f.name}"
        item = typing.get_args(typ)[0] if typing.get_origin(typ) in (list, List) and typing.get_args(typ) else None
        if dataclasses.is_dataclass(typ):
            sections += describe(typ, f"{key}.", f"[{key}]")
        elif dataclasses.is_dataclass(item):
            sections += describe(item, f"{key}[i].", f"[{key}]  (a list; each item has these keys)")
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            choices = rules(cls, f.name).get("choices")
            plain.append(f"  {key} = {'(required)' if default is dataclasses.MISSING else default}"
                         + (f"   (one of: {', '.join(map(str, choices))})" if isinstance(choices, list) else ""))
    return ([""] + ([title] if title else []) + plain if plain else []) + sections
