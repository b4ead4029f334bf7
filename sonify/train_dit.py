"""Train the audio-conditioned PixArt DiT: `python -m sonify.train_dit [config=train_demo] key=value ...`.

Configs are `pipelines/train_<name>.yaml` over the defaults below (the paper's: AdamW, lr 3.16e-5,
weight decay 3e-2, global batch 640). `trainer=local` runs in this process (one CPU or GPU);
`trainer=ray` runs Ray Train's TorchTrainer with `num_workers` DDP workers (`use_gpu`), on a local
Ray or the cluster in RAY_ADDRESS. Checkpoints are `<output_dir>/checkpoint-<step>/` with
`transformer/` and `transformer_ema/` (diffusers `save_pretrained`), `conditioner/` (the null-audio
token), and `training_state.pt` (optimizer, LR scheduler, EMA, step and data position); `resume=latest`
continues exactly where a run stopped, mid-epoch included.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .config import REPO_ROOT, _check_keys
from .errors import ConfigError, SonifyError

log = logging.getLogger("sonify.train")


@dataclass
class TrainConf:
    shards: str = "runs/demo/shards/train-*.tar"   # glob, brace pattern or comma list
    output_dir: str = "runs/demo/dit"
    dit: str = "PixArt-alpha/PixArt-XL-2-512x512"  # the pretrained transformer (id, path, or tiny:dit)
    dit_subfolder: str = "transformer"
    tiny_dir: str = "runs/_tiny_models"
    ast: str = "MIT/ast-finetuned-audioset-10-10-0.4593"   # recorded for generation
    vae: str = "PixArt-alpha/PixArt-XL-2-512x512"
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
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"      # auto (bf16 on GPU) | bf16 | no
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    resume: Optional[str] = None       # latest | a checkpoint folder
    log_every: int = 10
    seed: int = 0
    prefetch: int = 2                  # batches decoded ahead on a background thread (0: none; loader_workers=0 only)
    loader_workers: int = 0            # DataLoader worker processes, each reading its share of the rank's shards
    trainer: str = "local"             # local | ray
    num_workers: int = 1               # Ray Train workers (one per GPU)
    use_gpu: bool = False
    progress: bool = True
    num_train_timesteps: int = 1000


CHOICES = {"trainer": ["local", "ray"], "mixed_precision": ["auto", "bf16", "no"]}


def load_train_config(argv: list[str]) -> TrainConf:
    for a in argv:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not key=value (e.g. config=train_demo steps=100)")
    over = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    name = str(over.pop("config", "train_demo"))
    path = Path(name) if name.endswith((".yaml", ".yml")) else REPO_ROOT / "pipelines" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (REPO_ROOT / "pipelines").glob("train_*.yaml"))
        raise ConfigError(f"unknown training config {name!r}; valid choices: {', '.join(names)} (or a .yaml path)")
    data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    _check_keys(TrainConf, data, "")
    _check_keys(TrainConf, over, "")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConf), data, over))
    except Exception as e:
        raise ConfigError(f"bad training config: {str(e).splitlines()[0]}") from None
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"bad value {getattr(cfg, key)!r} for key '{key}'; valid choices: {', '.join(choices)}")
    return cfg


def grad_accum_steps(cfg: TrainConf, world: int) -> int:
    if cfg.grad_accum:
        return int(cfg.grad_accum)
    per_step = cfg.per_device_batch * world
    if cfg.global_batch % per_step:
        raise ConfigError(f"global_batch={cfg.global_batch} is not a multiple of per_device_batch x workers = {per_step}")
    return max(1, cfg.global_batch // per_step)


def checkpoints(output_dir: str | Path) -> list[Path]:
    d = Path(output_dir)
    found = [p for p in d.glob("checkpoint-*") if p.is_dir() and (p / "training_state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def check_against_shards(cfg: TrainConf, urls: list[str], model_cfg) -> dict:
    """Fail in one line, before training, when the shards do not fit the model."""
    from .train_data import peek_sample

    if not urls:
        raise ConfigError(f"no shards match shards={cfg.shards!r}")
    s = peek_sample(urls)
    if s["ast_dim"] != cfg.ast_dim:
        raise ConfigError(f"ast_dim={cfg.ast_dim} but the shards' ast.npy are {s['ast_dim']} wide ({s['url']}); set ast_dim={s['ast_dim']}")
    c, h, w = s["latent_shape"]
    size = cfg.latent_size or model_cfg.sample_size
    if c != model_cfg.in_channels or h != size or w != size:
        raise ConfigError(f"the shards' latents are {c}x{h}x{w} but the transformer takes {model_cfg.in_channels}x{size}x{size} "
                          f"(latent_size={cfg.latent_size}); re-run the latents stage at the matching resolution or set latent_size")
    return s


def sync_grads(params, world: int) -> None:
    """Average gradients of parameters outside the DDP module across ranks (zeros where a rank has none)."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def train_loop(cfg: TrainConf, rank: int = 0, world: int = 1, wrap=None, device: str | None = None) -> dict:
    """The training loop shared by the local and the Ray Train paths; returns final metrics."""
    import torch
    from diffusers import DDPMScheduler, PixArtTransformer2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from .dit import AudioConditioner, load_dit
    from .train_data import SkippedShards, expand_shards, loader

    device = device or ("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    urls = expand_shards(cfg.shards)
    resume_from = None
    if cfg.resume:
        found = checkpoints(out)
        resume_from = found[-1] if cfg.resume == "latest" and found else (Path(cfg.resume) if cfg.resume != "latest" else None)
        if cfg.resume != "latest" and not (resume_from / "training_state.pt").exists():
            raise ConfigError(f"resume={cfg.resume!r} is not a checkpoint folder (no training_state.pt)")
    if resume_from:
        model = PixArtTransformer2DModel.from_pretrained(resume_from / "transformer")
        conditioner = AudioConditioner.from_pretrained(resume_from / "conditioner")
    else:
        model = load_dit(cfg.dit, cfg.tiny_dir, cfg.ast_dim, cfg.dit_subfolder)
        conditioner = AudioConditioner(cfg.ast_dim)
    shard_facts = check_against_shards(cfg, urls, model.config)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(device).train()
    conditioner.to(device).train()
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=PixArtTransformer2DModel, model_config=model.config)
    params = list(model.parameters()) + list(conditioner.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps)
    noise_scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="linear",
                                    beta_start=0.0001, beta_end=0.02)
    from .diffusion_loss import DiffusionLoss

    loss_fn = DiffusionLoss(noise_scheduler.betas)
    step, epoch, batches_in_epoch = 0, 0, 0
    if resume_from:
        state = torch.load(resume_from / "training_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        ema.load_state_dict(state["ema"])
        step, epoch, batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, step, epoch, batches_in_epoch)
    ema.to(device)
    train_model = wrap(model) if wrap else model
    accum = grad_accum_steps(cfg, world)
    use_bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.startswith("cuda"))
    scaling = shard_facts["scaling_factor"]   # the VAE's, recorded by the latents stage
    skipped = SkippedShards()
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            log.warning("tensorboard is not installed: logging to the console only")
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.steps, initial=step, desc="train_dit", unit="step", disable=not cfg.progress or rank != 0)
    metrics = {"step": step}
    t_last, samples_since = time.perf_counter(), 0

    def save(step_now: int) -> None:
        if rank != 0:
            return
        ckpt = out / f"checkpoint-{step_now}"
        tmp = out / f".tmp-checkpoint-{step_now}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp / "transformer")
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        model.save_pretrained(tmp / "transformer_ema")
        ema.restore(model.parameters())
        conditioner.save_pretrained(tmp / "conditioner")
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "ema": ema.state_dict(),
                    "step": step_now, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                    "config": dataclasses.asdict(cfg)}, tmp / "training_state.pt")
        shutil.rmtree(ckpt, ignore_errors=True)
        os.replace(tmp, ckpt)
        for old in checkpoints(out)[:-cfg.keep_checkpoints] if cfg.keep_checkpoints > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    micro = 0   # micro-batches accumulated towards the next optimizer step (carried across epochs)
    while step < cfg.steps:
        done_epoch = True
        batches = loader(urls, epoch, cfg, rank, world, skipped, scaling)
        for i, batch in enumerate(batches):
            if i < batches_in_epoch:   # resume mid-epoch: skip what was consumed
                continue
            done_epoch = False
            gen = torch.Generator().manual_seed(hash((cfg.seed, step, micro, rank)) & (2**63 - 1))
            latents = batch.latents.to(device)
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, cfg.num_train_timesteps, (latents.shape[0],), generator=gen).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            tokens, mask = conditioner(batch.tokens.to(device), batch.mask.to(device), batch.drop)
            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=use_bf16):
                pred = train_model(noisy, encoder_hidden_states=tokens, encoder_attention_mask=mask, timestep=t,
                                   added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            terms = loss_fn(pred, noise, latents, noisy, t)   # MSE(eps), + the variational bound for learned sigma
            loss = terms["loss"]
            (loss / accum).backward()
            micro += 1
            batches_in_epoch = i + 1
            samples_since += latents.shape[0] * world
            if micro < accum:
                continue
            micro = 0
            if world > 1:
                sync_grads(conditioner.parameters(), world)   # DDP wraps the transformer only
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                metrics = {"step": step, "loss": loss.item(), "mse": terms["mse"].item(), "vb": float(terms.get("vb", 0.0)),
                           "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                           "samples_per_s": samples_since / max(now - t_last, 1e-9), "step_time_s": (now - t_last) / cfg.log_every,
                           "skipped_shard_errors": skipped.count}
                t_last, samples_since = now, 0
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", sps=f"{metrics['samples_per_s']:.1f}")
                if writer:
                    for k, v in metrics.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                if rank == 0 and not cfg.progress:
                    log.info("step %d loss %.5f lr %.3g %.1f samples/s", step, metrics["loss"], metrics["lr"], metrics["samples_per_s"])
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
            if step >= cfg.steps:
                break
        else:
            if done_epoch and batches_in_epoch == 0:
                raise SonifyError(f"epoch {epoch} yielded no batch: {len(urls)} shards, {skipped.count} read errors, "
                                  f"per_device_batch={cfg.per_device_batch} (drop_last={cfg.drop_last})")
            epoch, batches_in_epoch = epoch + 1, 0
    bar.close()
    if writer:
        writer.close()
    if skipped.count:
        log.warning("%d shard read errors were skipped (see the warnings above)", skipped.count)
    metrics["skipped_shard_errors"] = skipped.count
    if rank == 0:
        (out / "final_metrics.json").write_text(json.dumps(metrics))
    return metrics


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConf(**config["cfg"])
    ctx = ray.train.get_context()
    device = str(ray.train.torch.get_device())
    metrics = train_loop(cfg, ctx.get_world_rank(), ctx.get_world_size(), wrap=ray.train.torch.prepare_model, device=device)
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})  # a barrier for all ranks


def run_ray(cfg: TrainConf) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level=logging.WARNING)
    trainer = TorchTrainer(_ray_worker, train_loop_config={"cfg": dataclasses.asdict(cfg)},
                           scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
                           run_config=RunConfig(storage_path=str(Path(cfg.output_dir).resolve() / "ray_results"), name="train_dit"))
    trainer.fit()
    # Ray Train keeps only metrics attached to its own checkpoints; ours live in output_dir, so does this
    return json.loads((Path(cfg.output_dir) / "final_metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("keys:", ", ".join(f.name for f in dataclasses.fields(TrainConf)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_train_config(argv)
        if cfg.dit.startswith("tiny:"):
            print("model: a tiny random PixArt built from a config (demo only; outputs are not meaningful)")
        metrics = run_ray(cfg) if cfg.trainer == "ray" else train_loop(cfg)
    except SonifyError as e:
        print(f"sonify.train_dit: {e}", file=sys.stderr)
        return 2
    print(f"done: {json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()})}; "
          f"checkpoints in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
