"""The evaluation configuration: defaults here, `pipelines/eval_<name>.yaml` over them, `key=value` last."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


from sonify.engine.config import load_object


@dataclass
class BenchmarkConf:
    seconds: float = 5.0               # the conditioning audio: a window this long, centred on the ground-truth frame
    num_clips: Optional[int] = None    # class-balanced sample of this many clips (null: every clip)
    split: Optional[str] = "test"      # null: every split
    min_gap: float = 0.0               # greatesthits: seconds between kept hits of one recording
    max_clips_per_video: int = 1       # landscapes / intothewild: fixed windows per video


def _bench(**kw):
    return field(default_factory=lambda: BenchmarkConf(**kw))


@dataclass
class BenchmarksConf:
    vggsound: BenchmarkConf = _bench(num_clips=1000)
    greatesthits: BenchmarkConf = _bench(seconds=2.0, min_gap=2.0)
    landscapes: BenchmarkConf = _bench(max_clips_per_video=3)
    intothewild: BenchmarkConf = _bench(split=None, max_clips_per_video=3)
    vegas: BenchmarkConf = _bench(split=None)


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


BENCHMARKS = ("vggsound", "greatesthits", "landscapes", "intothewild", "vegas")


def load_eval_config(overrides: list[str]) -> EvalConf:
    """`config=<name>` picks `pipelines/eval_<name>.yaml` (default `eval_default`); the rest are `key=value`."""
    return load_object(EvalConf, overrides, "eval_default", "evaluation config", "eval_*.yaml", "config=eval_demo score.ndb_k=10")
