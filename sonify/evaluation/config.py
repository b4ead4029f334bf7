"""The evaluation configuration: defaults here, `pipelines/eval_<name>.yaml` over them, `key=value` last."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional


from sonify.engine.config import load_object


@dataclass
class BenchmarkConf:
    seconds: float = 5.0               # the conditioning audio: the training chunk length, centred on the ground-truth frame
    num_clips: Optional[int] = None    # class-balanced sample of this many clips (null: every clip)
    split: Optional[str] = None        # null: every split (the paper: "all the available instances across different splits")
    min_gap: float = 0.0               # greatesthits: seconds between kept hits of one recording
    max_clips_per_video: int = 1       # landscapes / intothewild: fixed windows per video
    classes: Optional[str] = None      # vggsound: a file of class names (one a line, `#` comments), `all`, or null (all)
    per_class: Optional[int] = None    # vggsound: this many clips of each class, seeded (fewer where a class has fewer)


def _bench(**kw):
    return field(default_factory=lambda: BenchmarkConf(**kw))


SOUND2SCENE_CLASSES = "pipelines/eval/vggsound_sound2scene_50.txt"
PUBLISHED = "pipelines/eval/paper_table1.csv"


@dataclass
class BenchmarksConf:
    vggsound: BenchmarkConf = _bench(split="test", classes=SOUND2SCENE_CLASSES, per_class=20)
    greatesthits: BenchmarkConf = _bench(min_gap=2.0)
    landscapes: BenchmarkConf = _bench(max_clips_per_video=3)
    intothewild: BenchmarkConf = _bench(max_clips_per_video=3)
    landscapes_itw: BenchmarkConf = _bench(max_clips_per_video=3)   # the union of the two, scored as one set
    vegas: BenchmarkConf = _bench()


@dataclass
class EvalModelsConf:
    inception: str = "pt_inception-2015-12-05-6726825d.pth"   # pytorch-fid's FID weights, a local file
    clip: str = "openai/clip-vit-base-patch32"                 # AIS, CS, R@K: the 512-d space Wav2CLIP was trained into
    clip_iis: str = "openai/clip-vit-base-patch32"             # IIS
    wav2clip: str = "Wav2CLIP.pt"                              # Wav2CLIP's released checkpoint, a local file
    tiny_dir: str = "runs/_tiny_models"


@dataclass
class GenerateConf:
    checkpoint: Optional[str] = None   # a checkpoint-N folder or a training output_dir (latest)
    batch_size: int = 8
    steps: int = 20
    guidance: float = 4.5
    lufs: float = -23.0
    use_ema: bool = True
    device: str = "auto"


@dataclass
class ScoreConf:
    ks: List[int] = field(default_factory=lambda: [1, 5, 10])
    text_template: str = "{}"          # R@K's class text: the bare class name, as Sound2Scene feeds it (this project's reading)
    cs_clipped: bool = False           # true: CLIPScore's 100 x max(cos, 0) instead of Visual Echoes' 100 x cos (labelled so)
    kid_subsets: int = 100             # clean-fid's and torchmetrics' defaults
    kid_subset_size: int = 1000
    is_splits: int = 10                # Salimans et al.'s 10 splits ...
    is_min_per_split: int = 10         # ... fewer where a split would hold fewer images than this
    ndb_k: int = 50
    ndb_alpha: float = 0.05
    ndb_min_per_bin: int = 5
    device: str = "cpu"
    batch_size: int = 16


@dataclass
class EvalConf:
    seed: int = 0
    audio_rate: int = 16000
    jpeg_quality: int = 95
    progress: bool = True
    benchmarks: BenchmarksConf = field(default_factory=BenchmarksConf)
    models: EvalModelsConf = field(default_factory=EvalModelsConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    score: ScoreConf = field(default_factory=ScoreConf)
    published: Optional[str] = PUBLISHED   # the paper's Table 1 rows shown above the user's (null: none)


BENCHMARKS = ("vggsound", "greatesthits", "landscapes", "intothewild", "landscapes_itw", "vegas")
UNIONS = {"landscapes_itw": ("landscapes", "intothewild")}   # benchmarks scored over the union of others' clips


def data_file(path: str) -> Path:
    """A file named in the config: as given (absolute or from the working folder), else from the repository."""
    from sonify.engine.config import REPO_ROOT

    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def load_eval_config(overrides: list[str]) -> EvalConf:
    """`config=<name>` picks `pipelines/eval_<name>.yaml` (default `eval_default`); the rest are `key=value`."""
    return load_object(EvalConf, overrides, "eval_default", "evaluation config", "eval_*.yaml", "config=eval_demo score.ndb_k=10")
