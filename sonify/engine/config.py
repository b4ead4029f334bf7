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

from sonify.engine.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunConf:
    name: str = "${pipeline}"          # outputs go to <root>/<name>/
    root: str = "runs"
    dir: str = "${run.root}/${run.name}"
    seed: int = 0
    force: bool = False                # recompute finished partitions
    executor: str = "ray"              # ray | local (plain loop in this process, for debugging)
    progress: bool = True


@dataclass
class RayConf:
    address: Optional[str] = None      # join this cluster; else RAY_ADDRESS; else start a local Ray
    num_cpus: Optional[int] = None     # CPUs of the local Ray (None: all cores)
    object_store_memory: Optional[int] = None


@dataclass
class SourceConf:
    name: str = "default"
    kind: str = "folder"               # folder | tar | parquet | csv
    path: str = ""
    uri_column: str = "uri"            # list sources: column holding the path or URL
    labels_column: str = "labels"      # audio list sources: labels (list, or ';'-separated string)
    recursive: bool = True


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
    num_gpus: float = 0.0              # per actor


@dataclass
class ImagesStageConf(StageConf):
    max_pixels: int = 89_478_485       # larger images are error rows (decompression bombs); PIL's default
    decode_check: str = "full"         # full: decode every pixel (catches truncation) | header
    url_timeout_s: float = 20.0
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
    concepts_prompt: str = "prompts/concepts.txt"   # a file, or the prompt text itself
    caption_prompt: str = "prompts/caption.txt"
    max_concepts: int = 3
    text_template: str = "{sound}"     # the CLAP query from a parsed item; {object} and {sound}
    dtype: str = "auto"                # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    max_image_side: int = 1024         # images are decoded no larger than this before the processor
    max_pixels: int = 89_478_485
    generation: Dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 96, "do_sample": False, "num_beams": 1})
    caption_generation: Dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 40, "do_sample": False, "num_beams": 1})


@dataclass
class FilterStageConf(StageConf):
    keywords: str = "prompts/silent_keywords.txt"   # one word per line; plurals match too
    drop_on_keyword: bool = True
    drop_without_concepts: bool = True


@dataclass
class EmbedStageConf(StageConf):
    text_batch_size: int = 256         # concept texts per forward pass (audio uses batch_size)
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
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class LatentsStageConf(StageConf):
    resolution: int = 512              # shorter side resized to this, then centre-cropped square
    vae_subfolder: str = "vae"         # the VAE inside models.vae (PixArt-alpha repos keep it in vae/)
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
    clap: str = "laion/clap-htsat-unfused"
    vlms: List[str] = field(default_factory=lambda: ["llava-hf/llava-1.5-7b-hf"])
    ast: str = "MIT/ast-finetuned-audioset-10-10-0.4593"
    vae: str = "PixArt-alpha/PixArt-XL-2-512x512"
    dit: str = "PixArt-alpha/PixArt-XL-2-512x512"
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
    "stages.retrieve.mode": ["ssr", "raw", "argmax", "softmax"],
    "stages.features.pooling": ["mean", "max", "none"],
    "stages.features.dtype": ["auto", "float32", "bfloat16", "float16"],
    "stages.latents.dtype": ["auto", "float32", "bfloat16", "float16"],
}
SOURCE_KINDS = {"images": ["folder", "tar", "parquet", "csv"], "audio": ["folder", "parquet", "csv"]}


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
    for mode in cfg.stages.retrieve.ablation_modes:
        if mode not in CHOICES["stages.retrieve.mode"]:
            raise ConfigError(f"bad value {mode!r} in key 'stages.retrieve.ablation_modes'; valid choices: {', '.join(CHOICES['stages.retrieve.mode'])}")
    for role, kinds in SOURCE_KINDS.items():
        for i, src in enumerate(cfg.sources[role]):
            if src.kind not in kinds:
                raise ConfigError(f"bad value {src.kind!r} for key 'sources.{role}[{i}].kind'; valid choices: {', '.join(kinds)}")
            if not src.path:
                raise ConfigError(f"key 'sources.{role}[{i}].path' is empty; give the folder or list file of source {src.name!r}")
        names = [s.name for s in cfg.sources[role]]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"source names under 'sources.{role}' must be unique; repeated: {', '.join(sorted(dup))}")


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


def compose(schema: type, path: Path, override_data: dict, **set_after: Any) -> DictConfig:
    """The one config loader: defaults of `schema` <- the YAML file <- overrides, keys checked, resolved."""
    file_data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    check_keys(schema, file_data)
    check_keys(schema, override_data)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), file_data, override_data)
        for key, value in set_after.items():
            cfg[key] = value
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad value for key '{key}': {msg}") from None
    return cfg


def load_config(overrides: list[str], stage_names: list[str] | None = None) -> DictConfig:
    """Defaults <- pipelines/<pipeline>.yaml <- `key=value` overrides, validated and resolved."""
    override_data = parse_overrides(overrides, "pipeline=demo stage=audio run.force=true")
    pipeline = str(override_data.get("pipeline", SonifyConf.pipeline))
    path = config_file(pipeline)
    cfg = compose(SonifyConf, path, override_data, pipeline=Path(pipeline).stem if path.suffix else pipeline)
    _check_choices(cfg, stage_names or [])
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
