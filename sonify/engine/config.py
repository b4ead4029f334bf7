"""Pipeline configuration: typed defaults here, pipelines in `pipelines/*.yaml`, `key=value` overrides.

Unknown keys and bad choices fail in one line that names the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sonify.engine import model_ids
from sonify.engine.errors import ConfigError
from sonify.engine.files import ensure_writable_dir
from sonify.engine.lazy import RolesOf

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunConf:
    name: str = "${pipeline}"          # outputs go to <root>/<name>/
    root: str = "runs"
    dir: str = "${run.root}/${run.name}"
    seed: int = 0
    force: bool = False                # recompute finished partitions
    executor: str = "ray"              # ray | local (plain loop in this process, for debugging)
    torch_threads: int = 1             # threads of every model call, on any executor (float bits depend on it)
    max_retries: int = 3               # a partition whose processing raises (model, device, I/O) is retried this often
    retry_backoff_s: float = 2.0       # ... after 2 s, 4 s, 8 s
    max_error_fraction: float = 0.5    # a stage stops when more of its computed rows than this are error rows
    error_fraction_min_rows: int = 20  # ... judged once at least this many rows were computed (a few bad files are not a trend)
    plan_memory: str = "1GB"           # DuckDB memory limit of the driver's planning (it spills to <run>/plan/ beyond it)
    progress: bool = True


@dataclass
class RayConf:
    address: Optional[str] = None      # join this cluster; else RAY_ADDRESS; else start a local Ray
    num_cpus: Optional[int] = None     # CPUs of the local Ray (None: all cores)
    object_store_memory: Optional[int] = None


@dataclass
class SourceConf:
    name: str = "default"
    kind: str = "folder"               # folder | tar | parquet | csv | recipe
    path: str = ""                     # the folder, tar or list file (every kind but recipe)
    recipe: str = ""                   # kind recipe: the corpus (sa1b | audioset | fsd50k | bbc_sfx | vggsound)
    root: str = ""                     # recipe: the local copy in its official layout; csv/parquet lists: the folder their
                                       # entries are stored relative to (default: the list file's folder)
    uri_column: str = "uri"            # list sources: column holding the path or URL
    labels_column: str = "labels"      # audio list sources: labels (list, or ';'-separated string)
    recursive: bool = True
    follow_outside_links: bool = False # folder/tar sources: links resolving outside `path` are error rows 'outside_root' unless true
    list_workers: int = 0              # folder/tar sources: processes listing sub-folders or tars at once (0: one per core)


@dataclass
class SourcesConf:
    images: List[SourceConf] = field(default_factory=list)
    audio: List[SourceConf] = field(default_factory=list)


@dataclass
class StageConf:
    partition_rows: int = 256          # input rows per output Parquet file (the unit of resume)
    batch_size: int = 64               # rows per call of the stage's process_batch
    concurrency: int = 2               # Ray actors for this stage
    num_cpus: float = 1.0              # per actor
    num_gpus: float = 0.0              # per actor (a fraction shares a GPU: CLAP and AST need little)
    accelerator_type: Optional[str] = None  # e.g. A100: run this stage's actors on such nodes (Ray's accelerator_type)


@dataclass
class ImagesStageConf(StageConf):
    max_pixels: int = 89_478_485       # larger images are error rows (decompression bombs); PIL's default
    decode_check: str = "full"         # full: decode every pixel (catches truncation) | header
    url_timeout_s: float = 20.0        # a whole read of one image (URL, file or tar member) must finish within this
    extensions: List[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"])


@dataclass
class AudioStageConf(StageConf):
    chunk_seconds: float = 5.0         # the paper's chunk length (A.7)
    silence_dbfs: float = -90.0        # chunks whose peak is below this are error rows 'silent'
    extensions: List[str] = field(default_factory=lambda: [".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"])


@dataclass
class ConceptImportConf:
    name: str = "import"               # the `vlm` value of its rows (one variant)
    path: str = ""                     # Parquet or JSONL with: image_id or relpath, concepts, [caption]
    image_source: str = ""             # with a relpath column: the image source the paths belong to


@dataclass
class ConceptsStageConf(StageConf):
    generate: bool = True              # run every VLM in models.vlms
    imports: List[ConceptImportConf] = field(default_factory=list)
    backend: str = "hf"                # hf (transformers generate) | vllm (GPU clusters; needs the vllm extra)
    model_batch: int = 8               # images per model call, a fixed shape (the last call padded): in the fingerprint
    concepts_prompt: str = "prompts/concepts.txt"   # a file, or the prompt text itself
    caption_prompt: str = "prompts/caption.txt"
    max_concepts: int = 3
    text_template: str = "{line}"      # the CLAP query: {line} (the item as written, no list marker), {object}, {sound}
    dtype: str = "auto"                # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    max_image_side: int = 1024         # images are decoded no larger than this before the processor
    # per VLM (its models.vlms entry or hub id): its image processor's own settings, in the fingerprint;
    # a tiling processor resizes to its own size first, e.g. {HuggingFaceTB/SmolVLM-Instruct: {size: {longest_edge: 768}}}
    processor_kwargs: Dict[str, Any] = field(default_factory=dict)
    max_pixels: int = 89_478_485
    generation: Dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 96, "do_sample": False, "num_beams": 1})
    caption_generation: Dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 40, "do_sample": False, "num_beams": 1})


@dataclass
class FilterStageConf(StageConf):
    keywords: str = "prompts/silent_keywords.txt"   # one word per line; plurals match too
    drop_on_keyword: bool = True
    drop_without_concepts: bool = True
    # VLMs (as in models.vlms, or an import's name) whose captions the keyword rule reads; empty: every VLM's.
    # The paper (A.2) filters on LLaVA's captions only.
    caption_vlms: List[str] = field(default_factory=list)


@dataclass
class EmbedStageConf(StageConf):
    text_batch_size: int = 256         # concept texts per process call (audio rows use batch_size)
    model_batch: int = 8               # clips or texts per model call, a fixed shape (the last call padded): in the fingerprint
    text_max_tokens: int = 77          # every text is padded (or cut) to this many tokens, as CLAP was trained
    # CLAP's audio input: source48k = decoded from the source straight to 48 kHz, channels averaged;
    # paper16k = the paper's A.7 pool (decoded at 16 kHz, channels summed), then resampled to 48 kHz
    audio_input: str = "source48k"
    # CLAP's log-mel features: torch (batched on the model's device) | transformers (the extractor, the reference)
    frontend: str = "torch"
    dtype: str = "auto"                # auto (fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"


@dataclass
class RetrieveStageConf(StageConf):
    mode: str = "ssr"                  # ssr (Algorithm 1) | raw (same threshold, no SSR) | argmax | softmax
    ablation_modes: List[str] = field(default_factory=list)  # also pick with these (table match_ablations)
    k: int = 32                        # top-k of the dynamic threshold (pool smaller than k: the whole pool)
    temperature: float = 0.05          # softmax mode: sampling over the top-k cosines / temperature
    device: str = "auto"               # the pool sits here (cuda when present)
    block_mb: int = 256                # memory for one block of query x pool scores
    # opt-in: concepts of one image variant never share a chunk while the eligible set allows it
    # (a repeat is the generator's next draw from the same set without the taken chunks);
    # false = Algorithm 1 exactly as the paper (repeats possible, recorded in mixes.repeated_chunks)
    distinct_within_variant: bool = False


@dataclass
class MixStageConf(StageConf):
    sample_rate: int = 16000           # rate of the mixtures (AST takes 16 kHz)
    lufs_min: float = -24.0            # each component's target is drawn uniformly from [lufs_min, lufs_max]
    lufs_max: float = -22.0            # (a narrow range around EBU R128's -23 LUFS)
    peak_ceiling_dbfs: float = -1.0    # the summed mixture is scaled down if its sample peak is above this
    release_jsonl: bool = False        # also write release/release.jsonl beside release.parquet


@dataclass
class FeaturesStageConf(StageConf):
    pooling: str = "mean"              # pool AST patch tokens over frequency: mean | max | none
    input_frames: Optional[int] = None # filterbank frames fed to AST; null: the mixtures' length (5 s -> 498)
    model_batch: int = 8               # clips per model call, a fixed shape (the last call padded): in the fingerprint
    # AST's filterbanks: torch (batched on the model's device) | transformers (the extractor, the reference)
    frontend: str = "torch"
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class LatentsStageConf(StageConf):
    resolution: int = 512              # shorter side resized to this, then centre-cropped square
    vae_subfolder: str = "vae"         # the VAE inside models.vae (PixArt-alpha repos keep it in vae/)
    model_batch: int = 8               # images per model call, a fixed shape (the last call padded): in the fingerprint
    dtype: str = "auto"
    device: str = "auto"
    max_pixels: int = 89_478_485


@dataclass
class ShardsStageConf(StageConf):
    samples_per_shard: int = 1000
    val_fraction: float = 0.01         # by a hash of the image id: all variants of an image on one side
    include_jpg: bool = False          # the centre-cropped image as jpg
    include_flac: bool = False         # the mixture as flac
    jpg_quality: int = 90


@dataclass
class StagesConf:
    images: ImagesStageConf = field(default_factory=ImagesStageConf)
    audio: AudioStageConf = field(default_factory=AudioStageConf)
    concepts: ConceptsStageConf = field(default_factory=lambda: ConceptsStageConf(partition_rows=64, batch_size=8, concurrency=1))
    filter: FilterStageConf = field(default_factory=lambda: FilterStageConf(partition_rows=4096, batch_size=4096))
    embed: EmbedStageConf = field(default_factory=lambda: EmbedStageConf(partition_rows=1024, batch_size=32, concurrency=1))
    retrieve: RetrieveStageConf = field(default_factory=lambda: RetrieveStageConf(partition_rows=8192, batch_size=8192, concurrency=1))
    mix: MixStageConf = field(default_factory=lambda: MixStageConf(partition_rows=512, batch_size=64, concurrency=2))
    features: FeaturesStageConf = field(default_factory=lambda: FeaturesStageConf(partition_rows=512, batch_size=32, concurrency=1))
    latents: LatentsStageConf = field(default_factory=lambda: LatentsStageConf(partition_rows=512, batch_size=16, concurrency=1))
    shards: ShardsStageConf = field(default_factory=lambda: ShardsStageConf(batch_size=1000, concurrency=2))


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
    num_images: int = 30
    seed: int = 0


@dataclass
class SonifyConf:
    pipeline: str = "demo"
    stage: str = "all"
    run: RunConf = field(default_factory=RunConf)
    ray: RayConf = field(default_factory=RayConf)
    sources: SourcesConf = field(default_factory=SourcesConf)
    stages: StagesConf = field(default_factory=StagesConf)
    models: ModelsConf = field(default_factory=ModelsConf)
    demo_data: DemoDataConf = field(default_factory=DemoDataConf)


CHOICES = {
    "run.executor": ["ray", "local"],
    "stages.images.decode_check": ["full", "header"],
    "stages.concepts.backend": ["hf", "vllm"],
    "stages.concepts.dtype": ["auto", "float32", "bfloat16", "float16"],
    "stages.embed.dtype": ["auto", "float32", "bfloat16", "float16"],
    "stages.embed.audio_input": ["source48k", "paper16k"],
    "stages.embed.frontend": ["torch", "transformers"],
    "stages.features.frontend": ["torch", "transformers"],
    "stages.retrieve.mode": ["ssr", "raw", "argmax", "softmax"],
    "stages.features.pooling": ["mean", "max", "none"],
    "stages.features.dtype": ["auto", "float32", "bfloat16", "float16"],
    "stages.latents.dtype": ["auto", "float32", "bfloat16", "float16"],
}
# Numeric settings: a rule is (test, what is valid). Every stage's runtime settings, then the rest.
AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
POSITIVE = (lambda v: v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
NONE_OR_AT_LEAST_1 = (lambda v: v is None or v >= 1, "null or an integer >= 1")
STAGE_RANGES = {"partition_rows": AT_LEAST_1, "batch_size": AT_LEAST_1, "concurrency": AT_LEAST_1,
                "num_cpus": NON_NEGATIVE, "num_gpus": NON_NEGATIVE}
RANGES = {
    "stages.images.max_pixels": AT_LEAST_1, "stages.images.url_timeout_s": POSITIVE,
    "stages.audio.chunk_seconds": POSITIVE,
    "stages.concepts.max_concepts": AT_LEAST_1, "stages.concepts.max_image_side": AT_LEAST_1,
    "stages.concepts.max_pixels": AT_LEAST_1,
    "stages.embed.text_batch_size": AT_LEAST_1,
    "stages.retrieve.k": AT_LEAST_1, "stages.retrieve.temperature": POSITIVE,
    "stages.retrieve.block_mb": NON_NEGATIVE,  # 0: one query per block
    "stages.mix.sample_rate": AT_LEAST_1, "stages.mix.peak_ceiling_dbfs": (lambda v: v <= 0, "a level in dBFS <= 0"),
    "stages.mix.lufs_max": (None, "a loudness >= stages.mix.lufs_min"),
    "stages.features.input_frames": NONE_OR_AT_LEAST_1,
    "stages.latents.resolution": AT_LEAST_1, "stages.latents.max_pixels": AT_LEAST_1,
    "stages.shards.samples_per_shard": AT_LEAST_1,
    "stages.shards.val_fraction": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "stages.shards.jpg_quality": (lambda v: 0 <= v <= 100, "an integer in [0, 100]"),
    "ray.num_cpus": NONE_OR_AT_LEAST_1, "ray.object_store_memory": NONE_OR_AT_LEAST_1,
    "demo_data.num_images": AT_LEAST_1, "run.torch_threads": AT_LEAST_1, "run.max_retries": NON_NEGATIVE,
    "run.retry_backoff_s": NON_NEGATIVE, "run.max_error_fraction": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "run.error_fraction_min_rows": NON_NEGATIVE,
    "stages.concepts.model_batch": AT_LEAST_1, "stages.embed.model_batch": AT_LEAST_1, "stages.embed.text_max_tokens": AT_LEAST_1,
    "stages.features.model_batch": AT_LEAST_1, "stages.latents.model_batch": AT_LEAST_1,
}
SOURCE_KINDS = {"images": ["folder", "tar", "parquet", "csv", "recipe"], "audio": ["folder", "parquet", "csv", "recipe"]}
RECIPES = RolesOf("sonify.sources.recipes", "RECIPES")   # the recipes of each role, read from their one registry


def resolve_text(value: str) -> str:
    """A prompt setting is either a path to a text file (relative to cwd or the repo) or the text itself."""
    for base in (Path.cwd(), REPO_ROOT):
        p = base / value
        if len(value) < 4096 and p.suffix == ".txt" and p.is_file():
            return p.read_text().strip()
    if value.endswith(".txt"):
        raise ConfigError(f"prompt file {value!r} not found (relative to {Path.cwd()} or {REPO_ROOT})")
    return value.strip()


def pipelines_dir() -> Path:
    env = os.environ.get("SONIFY_PIPELINES")
    if env:
        return Path(env)
    cwd = Path.cwd() / "pipelines"
    return cwd if cwd.is_dir() else REPO_ROOT / "pipelines"


OTHER_CONFIGS = ("train_", "eval_")   # pipelines/ also holds the training and evaluation configs


def available_pipelines(pattern: str = "*.yaml") -> list[str]:
    """Config names matching `pattern`; for the default pattern, pipelines only (not `train_*`/`eval_*`)."""
    names = sorted(p.stem for p in pipelines_dir().glob(pattern))
    return [n for n in names if not n.startswith(OTHER_CONFIGS)] if pattern == "*.yaml" else names


def config_file(name: str, what: str = "pipeline", pattern: str = "*.yaml") -> Path:
    """`name` as a .yaml path, or as a file of `pipelines/`; else one line listing the valid names."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = pipelines_dir() / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"unknown {what} {name!r}; valid choices: {', '.join(available_pipelines(pattern))} (or a path to a .yaml file)")


def check_keys(cls: type, data: Any, prefix: str = "") -> None:
    """Walk user data against the dataclass tree; fail on the first unknown key."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in hints:
            where = f" under '{prefix[:-1]}'" if prefix else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys{where}: {', '.join(names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            check_keys(typ, value, f"{prefix}{key}.")
        elif typing.get_origin(typ) in (list, List) and isinstance(value, list):
            (elem,) = typing.get_args(typ)
            if dataclasses.is_dataclass(elem):
                for i, item in enumerate(value):
                    check_keys(elem, item, f"{prefix}{key}[{i}].")


def _check_choices(cfg: DictConfig, stage_names: list[str]) -> None:
    valid_stages = stage_names + ["all"]
    stages = [s.strip() for s in str(cfg.stage).split(",")]
    for s in stages:
        if s not in valid_stages:
            raise ConfigError(f"unknown stage {s!r} for key 'stage'; valid choices: {', '.join(valid_stages)}")
    check_choices(cfg, CHOICES)
    check_ranges(cfg)
    for mode in cfg.stages.retrieve.ablation_modes:
        if mode not in CHOICES["stages.retrieve.mode"]:
            raise ConfigError(f"bad value {mode!r} in key 'stages.retrieve.ablation_modes'; valid choices: {', '.join(CHOICES['stages.retrieve.mode'])}")
    variants = list(cfg.models.vlms) + [imp.name for imp in cfg.stages.concepts.imports]
    for name in cfg.stages.filter.caption_vlms:
        if name not in variants:
            raise ConfigError(f"bad value {name!r} in key 'stages.filter.caption_vlms'; valid choices: "
                              f"{', '.join(variants) or 'none (models.vlms and stages.concepts.imports are empty)'}")
    for role, kinds in SOURCE_KINDS.items():
        for i, src in enumerate(cfg.sources[role]):
            if src.kind not in kinds:
                raise ConfigError(f"bad value {src.kind!r} for key 'sources.{role}[{i}].kind'; valid choices: {', '.join(kinds)}")
            if src.kind == "recipe":
                if src.recipe not in RECIPES[role]:
                    raise ConfigError(f"bad value {src.recipe!r} for key 'sources.{role}[{i}].recipe'; valid choices: {', '.join(RECIPES[role])}")
                if not src.root:
                    raise ConfigError(f"key 'sources.{role}[{i}].root' is empty; give the folder of the local {src.recipe} copy")
            elif not src.path:
                raise ConfigError(f"key 'sources.{role}[{i}].path' is empty; give the folder or list file of source {src.name!r}")
        names = [s.name for s in cfg.sources[role]]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"source names under 'sources.{role}' must be unique; repeated: {', '.join(sorted(dup))}")


def check_ranges(cfg: DictConfig) -> None:
    """Numeric settings outside their valid range fail in one line naming the key (NaN included)."""
    rules = {f"stages.{f.name}.{key}": rule for f in dataclasses.fields(StagesConf) for key, rule in STAGE_RANGES.items()}
    rules.update(RANGES)
    rules["stages.mix.lufs_max"] = (lambda v: v >= cfg.stages.mix.lufs_min, RANGES["stages.mix.lufs_max"][1])
    for key, (ok, valid) in rules.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"bad value {value!r} for key '{key}'; valid values: {valid}")


def check_run_dir(cfg: DictConfig) -> Path:
    """Create the run folder and prove it writable, or fail in one line naming `run.root` (or `run.dir`)."""
    run_dir = Path(cfg.run.dir)
    key = "run.root" if run_dir.is_relative_to(Path(cfg.run.root)) else "run.dir"
    value = cfg.run.root if key == "run.root" else cfg.run.dir
    try:
        ensure_writable_dir(run_dir)
    except OSError as e:
        raise ConfigError(f"bad value {value!r} for key '{key}': {run_dir} is not a writable folder "
                          f"({e.strerror or type(e).__name__})") from None
    return run_dir


def check_choices(cfg: Any, choices: dict[str, list]) -> None:
    for key, valid in choices.items():
        value = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else getattr(cfg, key)
        if value not in valid:
            raise ConfigError(f"bad value {value!r} for key '{key}'; valid choices: {', '.join(map(str, valid))}")


def parse_overrides(overrides: list[str], example: str) -> dict:
    """`key=value` arguments as a nested dict; anything else fails in one line with an example."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not key=value (e.g. {example})")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None


def compose(schema: type, path: Path, override_data: dict, before_resolve=None, **set_after: Any) -> DictConfig:
    """The one config loader: defaults of `schema` <- the YAML file <- overrides, keys checked, resolved.
    `before_resolve(cfg)` may adjust values that interpolations derive from."""
    file_data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    check_keys(schema, file_data)
    check_keys(schema, override_data)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), file_data, override_data)
        for key, value in set_after.items():
            cfg[key] = value
        if before_resolve is not None:
            before_resolve(cfg)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad value for key '{key}': {msg}") from None
    return cfg


def load_object(schema: type, argv: list[str], default: str, what: str, pattern: str, example: str) -> Any:
    """A typed config object: `config=<name>` picks `pipelines/<name>.yaml` (default `default`), the rest are
    `key=value` overrides; for the commands whose configs are not pipelines (training, evaluation)."""
    over = parse_overrides(argv, example)
    path = config_file(str(over.pop("config", default)), what, pattern)
    try:
        return OmegaConf.to_object(compose(schema, path, over))
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"bad {what}: {str(e).splitlines()[0]}") from None


def load_config(overrides: list[str], stage_names: list[str] | None = None) -> DictConfig:
    """Defaults <- pipelines/<pipeline>.yaml <- `key=value` overrides, validated and resolved."""
    override_data = parse_overrides(overrides, "pipeline=demo stage=audio run.force=true")
    pipeline = str(override_data.get("pipeline", SonifyConf.pipeline))
    path = config_file(pipeline)
    cfg = compose(SonifyConf, path, override_data, before_resolve=absolute_run_root,
                  pipeline=Path(pipeline).stem if path.suffix else pipeline)
    _check_choices(cfg, stage_names or [])
    absolute_source_paths(cfg)
    return cfg


# set by Ray in the driver of a job started with `ray job submit`, whose working dir is Ray's temporary copy
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def absolute_run_root(cfg: DictConfig) -> None:
    """`run.root` becomes absolute here, on the driver, before anything ships to Ray: every stored path
    derived from it then means the same on every node. Inside a `ray job submit` job a relative root
    would land in Ray's copy of the working dir and vanish with it, so it is refused in one line."""
    cfg.run.root = _absolute(str(cfg.run.root), "run.root", " (e.g. run.root=$PWD/runs)")


def _absolute(value: str, key: str, example: str = "") -> str:
    """`value` made absolute against the cwd; refused in one line inside a Ray job (see `absolute_run_root`)."""
    if not value or os.path.isabs(value):
        return value
    if os.environ.get(RAY_JOB_ENV):
        raise ConfigError(f"bad value {value!r} for key '{key}': relative, and this is a Ray job whose working dir is "
                          f"a temporary copy; give an absolute path{example}")
    return os.path.abspath(value)


def absolute_source_paths(cfg: DictConfig) -> None:
    """Source roots (`path`, and `root` of recipes and lists) become absolute on the driver, as `run.root`
    does, so the roots that resolve stored paths (`sonify.sources.SourcePaths`) mean the same on every node."""
    for role in ("images", "audio"):
        for i, src in enumerate(cfg.sources[role]):
            for key in ("path", "root"):
                src[key] = _absolute(str(src[key]), f"sources.{role}[{i}].{key}")


def resolve_run(arg: str) -> Path:
    """`run=` as the commands take it: a run directory as given, or else the `run.dir` of the pipeline of that name."""
    if Path(arg).is_dir():
        return Path(arg)
    try:
        return Path(load_config([f"pipeline={arg}"]).run.dir)
    except ConfigError as e:
        raise ConfigError(f"run={arg} is neither a run directory nor a pipeline: {e}") from None


def split_run_arg(argv: list[str], default: str = "demo") -> tuple[Path, list[str]]:
    """The run folder that `run=` names (see `resolve_run`; the demo's when absent) and the other arguments."""
    runs = [a for a in argv if a.startswith("run=")]
    return resolve_run(runs[-1].split("=", 1)[1] if runs else default), [a for a in argv if not a.startswith("run=")]


def save_config(cfg: DictConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
