"""The training configuration: defaults here, `pipelines/train_<name>.yaml` over them, `key=value` last.

The defaults are the paper's (AdamW, lr 3.16e-5, weight decay 3e-2, global batch 640). The file and
overrides go through the same loader as the pipeline's (`engine.config.compose`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


from sonify.engine import model_ids
from sonify.engine.config import check_choices, load_object
from sonify.engine.errors import ConfigError


@dataclass
class ProjectorConf:
    """Audio projector pre-training before DiT training (A.11: the paper trains it from scratch, `none`;
    `contrastive` is the SonicDiffusion / AudioToken alternative it compares with). See `training.pretrain`."""
    pretrain: str = "none"             # none | contrastive
    pretrain_steps: int = 1000
    lr: float = 1.0e-4
    temperature: float = 0.07          # InfoNCE temperature (CLIP's initial value)
    text_encoder: str = "PixArt-alpha/PixArt-XL-2-512x512"   # T5 (text_encoder/ and tokenizer/ subfolders), or tiny:t5
    text_max_tokens: int = 120         # PixArt-alpha's caption length
    text_batch: int = 64


@dataclass
class TrainConf:
    shards: str = "runs/demo/shards/train.txt"     # a shard list file (one name a line), glob, brace pattern or comma list
    val_shards: Optional[str] = ""     # the same forms; empty or null (`val_shards=`): no validation
    shuffle_window: int = 4            # shards whose samples are permuted together (a window), per epoch
    output_dir: str = "runs/demo/dit"
    dit: str = model_ids.PIXART        # the pretrained transformer (id, path, or tiny:dit)
    dit_subfolder: str = "transformer"
    tiny_dir: str = "runs/_tiny_models"
    ast: str = model_ids.AST           # recorded for generation
    vae: str = model_ids.PIXART
    ast_dim: int = 768                 # must match the shards' ast.npy width
    latent_size: Optional[int] = None  # must match the shards' latents; null: the transformer's sample_size
    max_audio_frames: int = 256
    steps: int = 500_000
    per_device_batch: int = 16
    grad_accum: Optional[int] = None   # null: derived from global_batch / (per_device_batch x workers)
    global_batch: int = 640
    drop_last: bool = True
    lr: float = 3.16e-5
    weight_decay: float = 3e-2
    warmup_steps: int = 1000
    max_grad_norm: float = 1.0
    cond_dropout: float = 0.1          # share of samples trained with the null token (classifier-free guidance)
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = False  # recompute blocks in the backward (+1 forward on those blocks): only when memory needs it
    checkpoint_blocks_every: int = 1   # with gradient_checkpointing: every k-th transformer block (1: all); see `bench train --plan`
    compile: bool = False              # torch.compile each transformer block (regional); for GPU runs, off on CPU by default
    mixed_precision: str = "auto"      # auto (bf16 on GPU) | bf16 | no
    ddp_bucket_mb: int = 25            # DDP gradient bucket size (MB)
    ddp_gradient_as_bucket_view: bool = True   # gradients are views into DDP's buckets (no second copy of them)
    ddp_static_graph: bool = False     # DDP static_graph: only without gradient accumulation (DDP's no_sync does not support it)
    async_checkpoints: bool = True     # write checkpoints on a background thread (the CPU snapshot stays on the training thread)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    resume: Optional[str] = None       # latest | a checkpoint folder
    log_every: int = 10
    val_every: int = 0                 # steps between validations (0: none): loss on val_shards and a grid of images
    val_batches: int = 8               # batches of val_shards the validation loss averages (the same ones each time)
    val_images: int = 4                # val samples whose audio features draw the validation grid
    val_sample_steps: int = 20         # DPM-Solver steps for the grid
    val_guidance: float = 4.5
    seed: int = 0
    prefetch: int = 2                  # batches decoded ahead on a background thread (0: none; loader_workers=0 only)
    loader_workers: int = 0            # DataLoader worker processes, each reading its share of the rank's shards
    trainer: str = "local"             # local | ray
    num_workers: int = 1               # Ray Train workers (one per GPU)
    use_gpu: bool = False
    progress: bool = True
    num_train_timesteps: int = 1000
    projector: ProjectorConf = field(default_factory=ProjectorConf)

    def __post_init__(self):   # from `dataclasses.asdict` (the Ray workers' copy): a dict again
        if isinstance(self.projector, dict):
            self.projector = ProjectorConf(**self.projector)


CHOICES = {"trainer": ["local", "ray"], "mixed_precision": ["auto", "bf16", "no"]}



# YAML 1.1 reads a bare `no` (and `false`) as a boolean, which a str field then holds as 'False'
_AS_WRITTEN = {"mixed_precision": {"False": "no", "false": "no"}}


def load_train_config(argv: list[str]) -> TrainConf:
    cfg = load_object(TrainConf, argv, "train_demo", "training config", "train_*.yaml", "config=train_demo steps=100")
    for key, spelled in _AS_WRITTEN.items():
        setattr(cfg, key, spelled.get(getattr(cfg, key), getattr(cfg, key)))
    check_choices(cfg, CHOICES)
    if cfg.checkpoint_blocks_every < 1:
        raise ConfigError(f"bad value {cfg.checkpoint_blocks_every!r} for key 'checkpoint_blocks_every'; valid values: an integer >= 1")
    if cfg.projector.pretrain not in ("none", "contrastive"):
        raise ConfigError(f"bad value {cfg.projector.pretrain!r} for key 'projector.pretrain'; valid choices: none, contrastive")
    return cfg


def ddp_kwargs(cfg: TrainConf, world: int) -> dict:
    """DistributedDataParallel's options from the config (for `ray.train.torch.prepare_model` or DDP itself).
    A static graph is refused with gradient accumulation: accumulating under `no_sync` trips DDP's reducer."""
    if cfg.ddp_static_graph and grad_accum_steps(cfg, world) > 1:
        raise ConfigError(f"ddp_static_graph=true needs no gradient accumulation (here {grad_accum_steps(cfg, world)} micro-steps a "
                          f"step: DDP's no_sync does not support a static graph); set ddp_static_graph=false")
    return {"bucket_cap_mb": cfg.ddp_bucket_mb, "gradient_as_bucket_view": cfg.ddp_gradient_as_bucket_view,
            "static_graph": cfg.ddp_static_graph}


def grad_accum_steps(cfg: TrainConf, world: int) -> int:
    if cfg.grad_accum:
        return int(cfg.grad_accum)
    per_step = cfg.per_device_batch * world
    if cfg.global_batch % per_step:
        raise ConfigError(f"global_batch={cfg.global_batch} is not a multiple of per_device_batch x workers = {per_step}")
    return max(1, cfg.global_batch // per_step)
