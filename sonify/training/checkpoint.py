"""Checkpoints off the critical path, and resuming from them.

`<output_dir>/checkpoint-<step>/` holds `transformer/` and `transformer_ema/` (diffusers' layout:
`config.json` and `diffusion_pytorch_model.safetensors`, loaded by plain `from_pretrained`),
`conditioner/` and `conditioner_ema/` (the null-audio token, an `AudioConditioner`'s `save_pretrained`),
`scheduler/` (the training noise scheduler's `save_pretrained`, as diffusers' trainers save it),
`pipeline.json` (what sampling needs besides the weights: AST and VAE ids, AST width, latent size, ...),
and `training_state.pt` (optimizer, LR scheduler, the EMA's counters, step, every rank's data position).
The folder is self-contained: `generate --checkpoint` works on it copied anywhere. The EMA weights are
stored once, in the `_ema` folders (resume reads them from there), not a second time in `training_state.pt`.

Saving is split in two: `snapshot` copies what the checkpoint needs to CPU memory on the training
thread (the only part the next step waits for), and `Saver` writes the files on a background thread
while training continues; the next save, and the end of training, wait for the previous write.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

from sonify.engine.files import atomic_path

WEIGHTS = "diffusion_pytorch_model.safetensors"
PIPELINE = "pipeline.json"   # a checkpoint's pipeline description
# the TrainConf keys sampling reads (`pipeline.json`; older checkpoints: the run's `train_config.json`)
PIPELINE_KEYS = ("dit", "ast", "ast_dim", "vae", "tiny_dir", "latent_size", "num_train_timesteps")


def checkpoints(output_dir: str | Path) -> list[Path]:
    d = Path(output_dir)
    found = [p for p in d.glob("checkpoint-*") if p.is_dir() and (p / "training_state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def to_cpu(obj):
    """A copy of `obj` with every tensor copied to CPU memory (nested dicts, lists and tuples)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def snapshot(step: int, model, conditioner, ema, optimizer, lr_scheduler, data: dict, cfg) -> dict:
    """Everything a checkpoint holds, in CPU memory, each EMA tensor once."""
    names = [n for n, _ in model.named_parameters()]
    shadow = to_cpu(list(ema.shadow_params))
    weights = to_cpu(model.state_dict())
    ema_weights = {**weights, **dict(zip(names, shadow[:len(names)]))}
    cond_names = [n for n, _ in conditioner.named_parameters()]
    ema_counters = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    return {"step": step, "model_config": model.to_json_string(),   # what save_pretrained writes
            "transformer": weights, "transformer_ema": ema_weights,
            "conditioner": to_cpu(conditioner.state_dict()), "conditioner_ema": dict(zip(cond_names, shadow[len(names):])),
            "conditioner_dim": conditioner.dim, "pipeline": {k: getattr(cfg, k) for k in PIPELINE_KEYS},
            "state": {"optimizer": to_cpu(optimizer.state_dict()), "lr_scheduler": lr_scheduler.state_dict(), "ema": ema_counters,
                      "step": step, "data": data, "config": dataclasses.asdict(cfg)}}


def write(snap: dict, out: Path, keep: int) -> Path:
    """The checkpoint folder from a snapshot (atomically), then the oldest folders beyond `keep` removed."""
    import json

    import torch
    from safetensors.torch import save_file

    from sonify.training.dit import AudioConditioner
    from sonify.training.forward import noise_scheduler

    ckpt = out / f"checkpoint-{snap['step']}"
    with atomic_path(ckpt) as tmp:
        for sub in ("transformer", "transformer_ema"):
            (tmp / sub).mkdir(parents=True)
            (tmp / sub / "config.json").write_text(snap["model_config"])
            save_file({k: v.contiguous() for k, v in snap[sub].items()}, str(tmp / sub / WEIGHTS), metadata={"format": "pt"})
        for sub in ("conditioner", "conditioner_ema"):
            conditioner = AudioConditioner(snap["conditioner_dim"])
            conditioner.load_state_dict(snap[sub])
            conditioner.save_pretrained(tmp / sub)
        noise_scheduler(snap["pipeline"]["num_train_timesteps"]).save_pretrained(tmp / "scheduler")
        (tmp / PIPELINE).write_text(json.dumps(snap["pipeline"], indent=1))
        torch.save(snap["state"], tmp / "training_state.pt")
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt


class Saver:
    """Writes one checkpoint at a time, on a background thread (`background=False`: inline); a failed write
    is raised on the training thread at the next `submit` or `wait`."""

    def __init__(self, background: bool):
        self.background = background
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, snap: dict, out: Path, keep: int) -> None:
        self.wait()
        if not self.background:
            write(snap, out, keep)
            return

        def run():
            try:
                write(snap, out, keep)
            except BaseException as e:   # re-raised on the training thread
                self.error = e

        self.thread = threading.Thread(target=run, name=f"checkpoint-{snap['step']}", daemon=False)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def load_ema_weights(ckpt: Path, state_ema: dict, model, conditioner, ema) -> None:
    """The EMA from a checkpoint: its counters from `training_state.pt`, its weights from the `_ema` folders
    (older checkpoints kept the weights in `training_state.pt` too: those load as they are)."""
    from sonify.training.dit import AudioConditioner

    ema.load_state_dict(state_ema)
    if "shadow_params" in state_ema:
        return
    saved = type(model).from_pretrained(ckpt / "transformer_ema").state_dict()
    cond = AudioConditioner.from_pretrained(ckpt / "conditioner_ema").state_dict()
    shadow = [saved[n] for n, _ in model.named_parameters()] + [cond[n] for n, _ in conditioner.named_parameters()]
    ema.shadow_params = [s.detach().clone().to(p.device) for s, p in zip(shadow, ema.shadow_params)]
