"""The training loop shared by the local and the Ray Train paths, its checkpoints and resume.

Checkpoints are `<output_dir>/checkpoint-<step>/` with `transformer/` and `transformer_ema/`
(diffusers `save_pretrained`), `conditioner/` (the null-audio token), and `training_state.pt`
(optimizer, LR scheduler, EMA, step and data position).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from sonify.engine.errors import ConfigError, SonifyError
from sonify.engine.files import atomic_path
from sonify.training.config import TrainConf, grad_accum_steps

log = logging.getLogger("sonify.train")


def checkpoints(output_dir: str | Path) -> list[Path]:
    d = Path(output_dir)
    found = [p for p in d.glob("checkpoint-*") if p.is_dir() and (p / "training_state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def check_against_shards(cfg: TrainConf, urls: list[str], model_cfg) -> dict:
    """Fail in one line, before training, when the shards do not fit the model."""
    from sonify.training.data import peek_sample

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

    from sonify.training.data import SkippedShards, expand_shards, loader
    from sonify.training.dit import AudioConditioner, load_dit

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
    from sonify.training.loss import DiffusionLoss

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
        with atomic_path(ckpt) as tmp:
            model.save_pretrained(tmp / "transformer")
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            model.save_pretrained(tmp / "transformer_ema")
            ema.restore(model.parameters())
            conditioner.save_pretrained(tmp / "conditioner")
            torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "ema": ema.state_dict(),
                        "step": step_now, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                        "config": dataclasses.asdict(cfg)}, tmp / "training_state.pt")
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
                metrics = {"step": step, "loss": loss.detach().item(), "mse": terms["mse"].detach().item(),
                           "vb": float(terms["vb"].detach()) if "vb" in terms else 0.0,   # detached: no autograd scalar warning
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


