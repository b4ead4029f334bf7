"""Images from sound with a trained checkpoint: the conditioning clip, classifier-free guidance, DPM-Solver.

The clip AST hears is made by the one renderer (`mixing.render`): inputs normalised to a loudness
plus a per-input offset, then summed (or placed one after another). A clip longer than one slot
(`seconds`, the length the checkpoint's AST features were made at) is cut into slots; each slot is
encoded by the AST at that trained length and the token sequences are concatenated in time, so any
number of sequential inputs fits (the AST's position embeddings cover one slot, never N). The transformer's EMA weights
and the null-audio token's EMA are used together when both are present (one consistent set), else both
as trained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("sonify.generate")


def load_audio(path: str, rate: int, seconds: float) -> np.ndarray:
    """One input, mono at `rate`, cut or zero-padded to `seconds`; a bad file is a ValueError of one line."""
    import soundfile as sf

    from sonify.media.audio import resample, to_mono

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.SoundFileError as e:  # libsndfile's own message, without its traceback
        raise ValueError(f"{path} cannot be decoded as audio ({getattr(e, 'error_string', e)})") from None
    if x.shape[0] == 0:
        raise ValueError(f"{path} is empty (0 audio frames)")
    y = resample(to_mono(x), sr, rate)
    n = int(round(rate * seconds))
    return np.pad(y, (0, n - y.size)) if y.size < n else y[:n]


def condition_audio(paths: list[str], offsets: list[float], lufs: float, sequential: bool, rate: int, seconds: float) -> np.ndarray:
    """The clip AST hears: inputs normalised to lufs + offset, then summed or concatenated."""
    from sonify.media.loudness import LoudnessMeter
    from sonify.mixing.render import render

    meter = LoudnessMeter(rate)
    clips, gains, n = [], [], int(round(rate * seconds))
    for i, (p, off) in enumerate(zip(paths, offsets)):
        x = load_audio(p, rate, seconds).astype(np.float64)
        measured = meter.integrated(x)
        if not np.isfinite(measured):
            raise ValueError(f"{p} is silent (below the loudness gate)")
        if sequential:  # one after another: each clip in its own slot of the longer clip
            x = np.pad(x, (i * n, (len(paths) - 1 - i) * n))
        clips.append(x)
        gains.append(lufs + off - measured)
    return render(clips, gains, ceiling_dbfs=-1.0)[0].astype(np.float32)


def resolve_checkpoint(path: Path) -> Path:
    if (path / "transformer").is_dir():
        return path
    from sonify.training.checkpoint import checkpoints

    found = checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no checkpoint-N folder")
    return found[-1]


def pipeline_description(ckpt: Path) -> dict:
    """What sampling needs besides the weights (AST, VAE, latent size, ...): the checkpoint's own
    `pipeline.json`, or for checkpoints written before it, the run's `../train_config.json`."""
    from sonify.training.checkpoint import PIPELINE

    own, run = ckpt / PIPELINE, ckpt.parent / "train_config.json"
    if own.is_file():
        return json.loads(own.read_text())
    if run.is_file():
        return json.loads(run.read_text())
    raise FileNotFoundError(f"{ckpt} holds no {PIPELINE} (and {run} is missing): not a training checkpoint")


def load_scheduler(ckpt: Path, description: dict):
    """The training noise scheduler saved in the checkpoint (`scheduler/`), or for checkpoints written before
    it, the schedule's one definition at the run's `num_train_timesteps`."""
    from diffusers import DDPMScheduler

    from sonify.training.forward import noise_scheduler

    if (ckpt / "scheduler").is_dir():
        return DDPMScheduler.from_pretrained(ckpt / "scheduler")
    return noise_scheduler(description["num_train_timesteps"])


def make_grid(images: list, cols: int):
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def load_weights(ckpt: Path, use_ema: bool = True, device: str = "cpu"):
    """The transformer and the null-audio token from one consistent set: both EMA (`transformer_ema/`,
    `conditioner_ema/`) or both as trained; a checkpoint missing either EMA half falls back to the trained pair."""
    from diffusers import PixArtTransformer2DModel

    from sonify.training.dit import AudioConditioner

    ema = use_ema and (ckpt / "transformer_ema").is_dir() and (ckpt / "conditioner_ema").is_dir()
    if use_ema and not ema:
        log.warning("%s has no EMA transformer and null token together: using the trained weights", ckpt)
    suffix = "_ema" if ema else ""
    model = PixArtTransformer2DModel.from_pretrained(ckpt / f"transformer{suffix}").to(device).eval()
    return model, AudioConditioner.from_pretrained(ckpt / f"conditioner{suffix}").to(device).eval()


def sample_images(model, conditioner, vae, cond, cond_mask, steps: int, guidance: float, seed: int, latent_size: int,
                  trained_scheduler, latents=None) -> list:
    """One image per row of `cond` (B, T, D) with `cond_mask` (B, T): DPM-Solver on the training schedule
    (`trained_scheduler`, the checkpoint's `scheduler/`) with classifier-free guidance against the null token
    (the one forward, `forward.predict`, on the clips and on their dropped copies), decoded by the VAE. The
    starting noise is `latents` (one row per image, so an image does not depend on its batch) or drawn from
    `seed`. Used by `Sampler`, `generate` and the validation grid."""
    import torch
    from PIL import Image

    from sonify.training.forward import predict, solver

    device, n, c = cond.device, cond.shape[0], model.config.in_channels
    scheduler = solver(trained_scheduler)
    scheduler.set_timesteps(steps)
    if latents is None:
        latents = torch.randn((n, c, latent_size, latent_size), generator=torch.Generator().manual_seed(seed))
    latents = latents.to(device) * scheduler.init_noise_sigma
    tokens, mask = torch.cat([cond, cond]), torch.cat([cond_mask, cond_mask])
    drop = torch.arange(2 * n) >= n   # the second half unconditional: the null token
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            pred = predict(model, conditioner, x, tokens, mask, drop, t.expand(x.shape[0]).to(device))
            eps_c, eps_u = pred[:, :c].chunk(2)
            latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    arr = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class Sampler:
    """A trained checkpoint loaded once (transformer and null token from one consistent set, AST, VAE):
    images for batches of clips, each from its own starting latent."""

    def __init__(self, checkpoint: str, seconds: float = 5.0, guidance: float = 4.5, steps: int = 20,
                 use_ema: bool = True, device: str = "auto"):
        from diffusers import AutoencoderKL

        from sonify.models.device import pick_device
        from sonify.models.encoders import ASTEncoder, kaldi_frames
        from sonify.models.loading import load_pretrained

        ckpt = resolve_checkpoint(Path(checkpoint))
        train_cfg = pipeline_description(ckpt)
        self.device, self.guidance, self.steps, self.rate, self.seconds = pick_device(device), guidance, steps, 16000, seconds
        self.model, self.conditioner = load_weights(ckpt, use_ema, self.device)
        ema = use_ema and (ckpt / "transformer_ema").is_dir() and (ckpt / "conditioner_ema").is_dir()
        self.checkpoint = str(ckpt / ("transformer_ema" if ema else "transformer"))
        self.ast = ASTEncoder(train_cfg["ast"], train_cfg["tiny_dir"], kaldi_frames(int(round(self.rate * seconds))), "mean",
                              self.device, "float32")
        self.vae = load_pretrained(AutoencoderKL, train_cfg["vae"], train_cfg["tiny_dir"], role="vae", subfolder="vae").to(self.device).eval()
        self.noise_scheduler = load_scheduler(ckpt, train_cfg)
        self.channels = self.model.config.in_channels
        self.size = train_cfg.get("latent_size") or self.model.config.sample_size

    def initial_latents(self, n: int, generator):
        import torch

        return torch.randn((n, self.channels, self.size, self.size), generator=generator)

    def slots(self, clip: np.ndarray) -> list[np.ndarray]:
        """A clip cut into slots of `seconds` (the last zero-padded): what the AST hears, one slot at a time."""
        n = int(round(self.rate * self.seconds))
        count = max(1, -(-clip.size // n))
        return [np.pad(s, (0, n - s.size)) for s in (clip[i * n:(i + 1) * n] for i in range(count))]

    def condition(self, clips: list[np.ndarray]):
        """Conditioning tokens (B, T, D): each clip's slots encoded by the AST, concatenated in time.
        Clips of a batch must hold the same number of slots."""
        import torch

        per_clip = [self.slots(c) for c in clips]
        if len({len(s) for s in per_clip}) > 1:
            raise ValueError("clips of one batch must hold the same number of slots")
        tokens = self.ast.encode([s for slots in per_clip for s in slots])
        k = len(per_clip[0])
        return torch.from_numpy(np.stack([np.concatenate(tokens[i * k:(i + 1) * k]) for i in range(len(clips))])).to(self.device)

    def images(self, clips: list[np.ndarray], latents) -> list:
        """One image per clip (16 kHz mono), each denoised from its row of `latents`."""
        import torch

        cond = self.condition(clips)
        mask = torch.ones(cond.shape[:2], device=self.device)
        return sample_images(self.model, self.conditioner, self.vae, cond, mask, self.steps, self.guidance, 0, self.size,
                             self.noise_scheduler, latents)


def generate(checkpoint: str, audio: list[str], out: str, offsets=None, sequential=False, guidance=4.5, steps=20,
             seed=0, num_images=4, lufs=-23.0, seconds=5.0, use_ema=True, device="auto") -> list[Path]:
    import torch

    offsets = list(offsets or [0.0] * len(audio))
    if len(offsets) != len(audio):
        raise ValueError(f"{len(offsets)} offsets for {len(audio)} audio inputs")
    clip = condition_audio(audio, offsets, lufs, sequential, 16000, seconds)   # bad inputs fail before any model loads
    sampler = Sampler(checkpoint, seconds, guidance, steps, use_ema, device)   # one AST slot = one input's length
    images = sampler.images([clip] * num_images, sampler.initial_latents(num_images, torch.Generator().manual_seed(seed)))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(out_dir / f"image_{i:02d}.png")
        im.save(paths[-1])
    make_grid(images, min(4, len(images))).save(out_dir / "grid.png")
    return paths + [out_dir / "grid.png"]
