"""Images from sound with a trained checkpoint: the conditioning clip, classifier-free guidance, DPM-Solver.

The clip AST hears is made by the one renderer (`mixing.render`): inputs normalised to a loudness
plus a per-input offset, then summed (or placed one after another). The transformer's EMA weights
are used when present, with the null-audio token saved beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
    from sonify.training.loop import checkpoints

    found = checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no checkpoint-N folder")
    return found[-1]


def make_grid(images: list, cols: int):
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


class Sampler:
    """A trained checkpoint loaded once (transformer, null token, AST, VAE): images for batches of clips.

    Each image starts from its own latent, so a row's image does not depend on the rows batched with it.
    """

    def __init__(self, checkpoint: str, seconds: float = 5.0, guidance: float = 4.5, steps: int = 20,
                 use_ema: bool = True, device: str = "auto"):
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

        from sonify.models.device import pick_device
        from sonify.models.encoders import ASTEncoder, kaldi_frames
        from sonify.models.loading import load_pretrained
        from sonify.training.dit import AudioConditioner

        ckpt = resolve_checkpoint(Path(checkpoint))
        train_cfg = json.loads((ckpt.parent / "train_config.json").read_text())
        self.device, self.guidance, self.steps, self.rate, self.seconds = pick_device(device), guidance, steps, 16000, seconds
        sub = "transformer_ema" if use_ema and (ckpt / "transformer_ema").is_dir() else "transformer"
        self.checkpoint = str(ckpt / sub)
        self.model = PixArtTransformer2DModel.from_pretrained(ckpt / sub).to(self.device).eval()
        self.conditioner = AudioConditioner.from_pretrained(ckpt / "conditioner").to(self.device)
        self.ast = ASTEncoder(train_cfg["ast"], train_cfg["tiny_dir"], kaldi_frames(int(round(self.rate * seconds))), "mean",
                              self.device, "float32")
        self.vae = load_pretrained(AutoencoderKL, train_cfg["vae"], train_cfg["tiny_dir"], role="vae", subfolder="vae").to(self.device).eval()
        self.scheduler = DPMSolverMultistepScheduler(num_train_timesteps=train_cfg["num_train_timesteps"], beta_schedule="linear",
                                                     beta_start=0.0001, beta_end=0.02)
        self.channels = self.model.config.in_channels
        self.size = train_cfg.get("latent_size") or self.model.config.sample_size

    def initial_latents(self, n: int, generator):
        import torch

        return torch.randn((n, self.channels, self.size, self.size), generator=generator)

    def images(self, clips: list[np.ndarray], latents) -> list:
        """One image per clip (16 kHz mono), each denoised from its row of `latents`."""
        import torch
        from PIL import Image

        device, c, n = self.device, self.channels, len(clips)
        self.scheduler.set_timesteps(self.steps)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        cond = torch.from_numpy(np.stack(self.ast.encode(clips))).to(device)
        cond_mask = torch.ones(cond.shape[:2], device=device)
        null, null_mask = self.conditioner.unconditional(n, cond.shape[1])
        with torch.inference_mode():
            for t in self.scheduler.timesteps:
                x = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
                pred = self.model(x, encoder_hidden_states=torch.cat([cond, null]), encoder_attention_mask=torch.cat([cond_mask, null_mask]),
                                  timestep=t.expand(x.shape[0]).to(device), added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
                eps_c, eps_u = pred[:, :c].chunk(2)
                latents = self.scheduler.step(eps_u + self.guidance * (eps_c - eps_u), t, latents).prev_sample
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        arr = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]


def generate(checkpoint: str, audio: list[str], out: str, offsets=None, sequential=False, guidance=4.5, steps=20,
             seed=0, num_images=4, lufs=-23.0, seconds=5.0, use_ema=True, device="auto") -> list[Path]:
    import torch

    offsets = list(offsets or [0.0] * len(audio))
    if len(offsets) != len(audio):
        raise ValueError(f"{len(offsets)} offsets for {len(audio)} audio inputs")
    clip = condition_audio(audio, offsets, lufs, sequential, 16000, seconds)
    sampler = Sampler(checkpoint, clip.size / 16000, guidance, steps, use_ema, device)
    images = sampler.images([clip] * num_images, sampler.initial_latents(num_images, torch.Generator().manual_seed(seed)))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(out_dir / f"image_{i:02d}.png")
        im.save(paths[-1])
    make_grid(images, min(4, len(images))).save(out_dir / "grid.png")
    return paths + [out_dir / "grid.png"]
