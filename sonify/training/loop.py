"""The training loop shared by the local and the Ray Train paths, and resuming it.

Checkpoints (`checkpoint.py`) are `<output_dir>/checkpoint-<step>/` with `transformer/` and
`transformer_ema/` (loadable by diffusers' `from_pretrained`), `conditioner/` and `conditioner_ema/`
(the null-audio token, trained and EMA: the EMA covers every trained parameter), `scheduler/` and
`pipeline.json` (the noise schedule and what sampling needs: a checkpoint folder is self-contained), and
`training_state.pt` (optimizer, LR scheduler, the EMA's counters, step, and every rank's data
position: epoch, each loader stream's window and offset, the stream due next, its counts and torch
RNG state, with the shard list and the ranks x streams it was written by).

A micro-step never waits for the device: batches arrive pinned and are copied with `non_blocking`,
noise and timesteps are drawn on the device from a generator seeded by (seed, step, micro-step, rank)
(so a resumed run draws the same), the loss indexes tables already on the device, and scalars are read
back (`.item()`) only every `log_every` steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from sonify.engine.errors import ConfigError, SonifyError
from sonify.training.checkpoint import checkpoints  # noqa: F401  (re-exported: tests and callers use loop.checkpoints)
from sonify.training.config import TrainConf, ddp_kwargs, grad_accum_steps
from sonify.training.distributed import gather, reduce_sum, sync_grads
from sonify.training.forward import forward_loss

log = logging.getLogger("sonify.train")


def check_against_shards(cfg: TrainConf, urls: list[str], model_cfg) -> dict:
    """Fail in one line, before training, when the shards do not fit the model."""
    from sonify.training.data import peek_sample

    if not urls:
        raise ConfigError(f"no shards match shards={cfg.shards!r}")
    try:
        s = peek_sample(urls)
    except ValueError as e:   # no shard has a readable sample: one line, not a traceback
        raise ConfigError(f"shards={cfg.shards!r}: {e}") from None
    if s["ast_dim"] != cfg.ast_dim:
        raise ConfigError(f"ast_dim={cfg.ast_dim} but the shards' ast.npy are {s['ast_dim']} wide ({s['url']}); set ast_dim={s['ast_dim']}")
    c, h, w = s["latent_shape"]
    size = cfg.latent_size or model_cfg.sample_size
    if c != model_cfg.in_channels or h != size or w != size:
        raise ConfigError(f"the shards' latents are {c}x{h}x{w} but the transformer takes {model_cfg.in_channels}x{size}x{size} "
                          f"(latent_size={cfg.latent_size}); re-run the latents stage at the matching resolution or set latent_size")
    return s


def resume_position(state: dict, ckpt: Path, urls: list[str], cfg: TrainConf, rank: int, world: int, workers: int) -> dict:
    """This rank's data position from a checkpoint, refused in one line when the run's data plan differs."""
    data = state.get("data")
    if data is None:
        raise ConfigError(f"{ckpt} predates per-rank data positions; resume from a newer checkpoint or start a fresh output_dir")
    if (data["world"], data["workers"]) != (world, workers):
        raise ConfigError(f"{ckpt.name} was written by {data['world']} ranks x {data['workers']} loader streams, this run has "
                          f"{world} x {workers}: resume with num_workers={data['world']} loader_workers={data['workers'] if data['workers'] > 1 else 0}")
    if [Path(u).name for u in data["shards"]] != [Path(u).name for u in urls]:
        raise ConfigError(f"{ckpt.name} was trained on a different shard list ({len(data['shards'])} shards, now {len(urls)}): "
                          f"resume with the same shards= or start a fresh output_dir")
    if (data["seed"], data["shuffle_window"]) != (cfg.seed, cfg.shuffle_window):
        raise ConfigError(f"{ckpt.name} was trained with seed={data['seed']} shuffle_window={data['shuffle_window']}; resume with them")
    return data["ranks"][rank]


def find_resume(cfg: TrainConf, out: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = checkpoints(out)
        return found[-1] if found else None
    if not (Path(cfg.resume) / "training_state.pt").exists():
        raise ConfigError(f"resume={cfg.resume!r} is not a checkpoint folder (no training_state.pt)")
    return Path(cfg.resume)


def load_models(cfg: TrainConf, resume_from: Path | None):
    """(transformer, conditioner): the checkpoint's when resuming, else the pretrained DiT with a fresh projector."""
    from diffusers import PixArtTransformer2DModel

    from sonify.training.dit import AudioConditioner, load_dit

    if resume_from:
        return (PixArtTransformer2DModel.from_pretrained(resume_from / "transformer"),
                AudioConditioner.from_pretrained(resume_from / "conditioner"))
    return load_dit(cfg.dit, cfg.tiny_dir, cfg.ast_dim, cfg.dit_subfolder), AudioConditioner(cfg.ast_dim)


def resume(ckpt: Path, cfg: TrainConf, urls: list[str], rank: int, world: int, workers: int, model, conditioner, optimizer,
           lr_scheduler, ema) -> tuple:
    """Optimizer, scheduler, EMA and RNG from a checkpoint; returns (step, this rank's Position, its counts)."""
    import torch

    from sonify.training.checkpoint import load_ema_weights
    from sonify.training.data import Position

    state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
    mine = resume_position(state, ckpt, urls, cfg, rank, world, workers)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    load_ema_weights(ckpt, state["ema"], model, conditioner, ema)
    pos = Position(workers, mine)
    torch.set_rng_state(mine["torch_rng"])
    log.info("resumed from %s at step %d (rank %d: epoch %d, streams at %s)", ckpt, state["step"], rank, pos.epoch, pos.streams)
    return state["step"], pos, {"errors": mine["errors"], "decoded": mine["decoded"]}


def open_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: logging to the console only")
        return None
    return SummaryWriter(str(out / "tensorboard"))


class StepLog:
    """The metrics every `log_every` steps (where the loop reads scalars back from the device): returned, and
    sent to the progress bar, TensorBoard and (without a progress bar) the console."""

    def __init__(self, cfg: TrainConf, rank: int, device: str, writer, bar):
        self.cfg, self.rank, self.device, self.writer, self.bar = cfg, rank, device, writer, bar
        self.t_last, self.cpu_last, self.samples = time.perf_counter(), time.process_time(), 0

    def __call__(self, step: int, terms: dict, lr: float, grad_norm, counts: dict) -> dict:
        now, every = time.perf_counter(), self.cfg.log_every
        errors, decoded = reduce_sum([counts["errors"], counts["decoded"]], self.device)
        metrics = {"step": step, "loss": terms["loss"].detach().item(), "mse": terms["mse"].detach().item(),
                   "vb": float(terms["vb"].detach()) if "vb" in terms else 0.0,   # detached: no autograd scalar warning
                   "lr": lr, "grad_norm": float(grad_norm),
                   "samples_per_s": self.samples / max(now - self.t_last, 1e-9), "step_time_s": (now - self.t_last) / every,
                   "step_cpu_s": (time.process_time() - self.cpu_last) / every,   # this process's threads
                   "skipped_shard_errors": int(errors), "samples_decoded": int(decoded)}
        self.t_last, self.cpu_last, self.samples = now, time.process_time(), 0
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", sps=f"{metrics['samples_per_s']:.1f}")
        if self.writer:
            for k, v in metrics.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)
        if self.rank == 0 and not self.cfg.progress:
            log.info("step %d loss %.5f lr %.3g %.1f samples/s, %d read errors skipped", step, metrics["loss"],
                     metrics["lr"], metrics["samples_per_s"], metrics["skipped_shard_errors"])
        return metrics


def train_loop(cfg: TrainConf, rank: int = 0, world: int = 1, wrap=None, device: str | None = None) -> dict:
    """The training loop shared by the local and the Ray Train paths; returns final metrics."""
    import contextlib

    import torch
    from diffusers.optimization import get_scheduler

    from sonify.training.checkpoint import Saver, snapshot
    from sonify.training.data import Position, expand_shards, loader, plan_streams
    from sonify.training.forward import noise_scheduler as make_noise_scheduler
    from sonify.training.loss import DiffusionLoss
    from sonify.training.speed import make_ema, make_optimizer, setup_model

    device = device or ("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    urls = expand_shards(cfg.shards)
    resume_from = find_resume(cfg, out)
    model, conditioner = load_models(cfg, resume_from)
    shard_facts = check_against_shards(cfg, urls, model.config)
    if not resume_from and cfg.projector.pretrain == "contrastive":   # a DiT checkpoint already holds the projector
        from sonify.training.pretrain import pretrain_projector

        pretrain_projector(cfg, model, urls, device, rank)
    workers = max(1, cfg.loader_workers)
    streams_total = world * workers
    if plan_streams(urls, cfg.seed, 0, streams_total)[0].of > 1 and rank == 0:
        log.info("%d shards for %d ranks x %d loader streams: every stream reads every shard and takes every %d-th sample "
                 "of each window (a split by samples)", len(urls), world, workers, streams_total)
    if cfg.compile and rank == 0 and shard_facts["ast_frames"] < cfg.max_audio_frames:
        log.info("compile: every batch's AST tokens are padded to max_audio_frames=%d (one shape, no recompiles); the shards' "
                 "first sample has %d: max_audio_frames=%d saves the padding", cfg.max_audio_frames, shard_facts["ast_frames"],
                 shard_facts["ast_frames"])
    done = setup_model(model, cfg, device)
    if rank == 0 and (done["checkpointed_blocks"] or done["compiled_blocks"]):
        log.info("gradient checkpointing on blocks %s; %d blocks compiled", done["checkpointed_blocks"], done["compiled_blocks"])
    model.to(device).train()
    conditioner.to(device).train()
    params = list(model.parameters()) + list(conditioner.parameters())
    ema = make_ema(params, cfg.ema_decay)   # every trained parameter, the null token included
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay, device)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps)
    noise_scheduler = make_noise_scheduler(cfg.num_train_timesteps)   # saved in each checkpoint's scheduler/
    loss_fn = DiffusionLoss(noise_scheduler.betas, device)
    step, pos = 0, Position(workers)
    counts = {"errors": 0, "decoded": 0}   # this rank's, carried across resumes
    if resume_from:
        step, pos, counts = resume(resume_from, cfg, urls, rank, world, workers, model, conditioner, optimizer, lr_scheduler, ema)
    ema.to(device)
    train_model = wrap(model) if wrap else model
    accum = grad_accum_steps(cfg, world)
    use_bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.startswith("cuda"))
    scaling = shard_facts["scaling_factor"]   # the VAE's, recorded by the latents stage
    writer, validator = None, None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        writer = open_writer(out)
    if cfg.val_every > 0 and cfg.val_shards:   # every rank scores its share of the validation batches
        from sonify.training.validation import Validator

        validator = Validator(cfg, expand_shards(cfg.val_shards), scaling, device, rank, world, use_bf16)
    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.steps, initial=step, desc="train_dit", unit="step", disable=not cfg.progress or rank != 0)
    metrics = {"step": step}
    step_log = StepLog(cfg, rank, device, writer, bar)
    saver = Saver(background=cfg.async_checkpoints)
    pin = device.startswith("cuda")
    gen = torch.Generator(device=device)   # re-seeded every micro-step: noise and timesteps drawn on the device

    def save(step_now: int) -> None:
        ranks = gather({**pos.state(), **counts, "torch_rng": torch.get_rng_state()}, world)
        if rank != 0:
            return
        data = {"shards": urls, "world": world, "workers": workers, "seed": cfg.seed, "shuffle_window": cfg.shuffle_window,
                "ranks": ranks}
        saver.submit(snapshot(step_now, model, conditioner, ema, optimizer, lr_scheduler, data, cfg), out, cfg.keep_checkpoints)

    micro = 0   # micro-batches accumulated towards the next optimizer step (carried across epochs)
    try:
        while step < cfg.steps:
            fresh = all(p == (0, 0) for p in pos.streams)
            streams = plan_streams(urls, cfg.seed, pos.epoch, streams_total)[rank * workers:(rank + 1) * workers]
            got_batch = False
            for item in loader(streams, pos, cfg, scaling, pin):
                pos.consume(item)
                counts["errors"] += item.errors
                counts["decoded"] += item.decoded
                if item.batch is None:   # a stream's tail: its last counts
                    continue
                got_batch, batch = True, item.batch.to(device, non_blocking=pin)
                gen.manual_seed(hash((cfg.seed, step, micro, rank)) & (2**63 - 1))
                noise = torch.randn(batch.latents.shape, generator=gen, device=device)
                t = torch.randint(0, cfg.num_train_timesteps, (batch.latents.shape[0],), generator=gen, device=device)
                # DDP all-reduces on the backward of the micro-step that completes the accumulation only
                sync = micro + 1 >= accum or not hasattr(train_model, "no_sync")
                with contextlib.nullcontext() if sync else train_model.no_sync():
                    terms = forward_loss(train_model, conditioner, loss_fn, noise_scheduler, batch, noise, t, device, use_bf16)
                    (terms["loss"] / accum).backward()
                micro += 1
                step_log.samples += batch.latents.shape[0] * world
                if micro < accum:
                    continue
                micro = 0
                if world > 1:
                    sync_grads(conditioner.parameters(), world)   # DDP wraps the transformer only
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(params)
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:   # the only host syncs: every log_every steps
                    metrics = step_log(step, terms, lr_scheduler.get_last_lr()[0], grad_norm, counts)
                if validator and step % cfg.val_every == 0:
                    val = validator.run(step, model, conditioner, ema, params, noise_scheduler, loss_fn, writer, out)
                    metrics.update({k: v for k, v in val.items() if k == "val_loss"})
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    save(step)
                if step >= cfg.steps:
                    break
            else:
                if fresh and not got_batch:
                    raise SonifyError(f"epoch {pos.epoch} yielded no batch on rank {rank}: {len(urls)} shards, {counts['errors']} read "
                                      f"errors, per_device_batch={cfg.per_device_batch} (drop_last={cfg.drop_last})")
                pos.next_epoch()
    finally:
        saver.wait()   # the last checkpoint is on disk before the run returns (or its write error is raised)
    bar.close()
    if writer:
        writer.close()
    errors, decoded = reduce_sum([counts["errors"], counts["decoded"]], device)
    if errors and rank == 0:
        log.warning("%d unreadable shards or samples were skipped over all ranks and loader workers (see the warnings above)", errors)
    metrics.update({"skipped_shard_errors": int(errors), "samples_decoded": int(decoded), "epoch": pos.epoch})
    if rank == 0:
        (out / "final_metrics.json").write_text(json.dumps(metrics))
    return metrics


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConf(**config["cfg"])
    ctx = ray.train.get_context()
    device = str(ray.train.torch.get_device())
    kwargs = ddp_kwargs(cfg, ctx.get_world_size())

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)

    metrics = train_loop(cfg, ctx.get_world_rank(), ctx.get_world_size(), wrap=wrap, device=device)
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})  # a barrier for all ranks


def run_ray(cfg: TrainConf) -> dict:
    import ray

    from sonify.engine.cluster import init_ray, ray_address
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        init_ray(ray_address())   # RAY_ADDRESS, or a Ray of its own: never a cluster recorded on the machine
    trainer = TorchTrainer(_ray_worker, train_loop_config={"cfg": dataclasses.asdict(cfg)},
                           scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
                           run_config=RunConfig(storage_path=str(Path(cfg.output_dir).resolve() / "ray_results"), name="train_dit"))
    trainer.fit()
    # Ray Train keeps only metrics attached to its own checkpoints; ours live in output_dir, so does this
    return json.loads((Path(cfg.output_dir) / "final_metrics.json").read_text())


