"""Tab "Draw from sound": images from up to four audio inputs with the run's trained checkpoint.

Each input is an uploaded or recorded file or a chunk of the pool (by id, e.g. from the other tabs),
with a loudness offset. The clip the model hears is `sonify.training.sampling.condition_audio`'s, as
`python -m sonify.generate` makes it: every input normalised to `draw_lufs` plus its offset, then
summed by the one renderer (superposed) or placed one after another (sequential). The checkpoint's
`Sampler` then draws the images: classifier-free guidance against the null token, DPM-Solver steps,
starting noise from the seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from sonify.webapp.runtime import AppError, AppRun, check_upload

RATE = 16000   # AST's rate: the clip the model hears


@dataclass
class DrawInput:
    audio: str | None = None       # an uploaded or recorded file
    chunk_id: str | None = None    # or a chunk of the pool
    offset_db: float = 0.0


@dataclass
class Drawing:
    images: list[str]              # PNG paths
    mixture: str                   # WAV of the clip the model heard
    size: tuple[int, int]


def input_path(app: AppRun, i: int, item: DrawInput) -> tuple[str, str] | None:
    """(readable file, name to show) of one input; None when the slot is empty. The file is checked: decodable,
    not empty, audible."""
    from sonify.media.loudness import LoudnessMeter
    from sonify.training.sampling import load_audio

    if item.chunk_id and item.chunk_id.strip():
        info = app.chunk_info([item.chunk_id.strip()])[0]
        path, name = app.chunk_wav(info, RATE), f"chunk {info['chunk_id']}"
    elif item.audio:
        p = check_upload(item.audio, f"audio of input {i + 1}", app.conf)
        path, name = str(p), p.name
    else:
        return None
    try:
        x = load_audio(path, RATE, app.conf.draw_seconds)
    except (OSError, ValueError) as e:
        raise AppError(f"input {i + 1} ({name}) cannot be used: {str(e).replace(path, name)}") from None
    if not math.isfinite(LoudnessMeter(RATE).integrated(x)):
        raise AppError(f"input {i + 1} ({name}) is silent (below the -70 LUFS gate in its first {app.conf.draw_seconds:g} s)")
    return path, name


def draw(app: AppRun, inputs: list[DrawInput], sequential: bool = False, guidance: float = 4.5, steps: int = 20,
         seed: int = 0, num_images: int | None = None) -> Drawing:
    import torch

    from sonify.training.sampling import condition_audio

    if app.checkpoint is None:
        raise AppError("no checkpoint: start the app with checkpoint=<the DiT training output or a checkpoint-N>")
    if len(inputs) > app.conf.max_draw_inputs:
        raise AppError(f"{len(inputs)} inputs; at most {app.conf.max_draw_inputs}")
    if not 1 <= int(steps) <= 1000:
        raise AppError(f"steps must be 1..1000, not {steps}")
    used = [(p, item.offset_db) for i, item in enumerate(inputs) if (p := input_path(app, i, item)) is not None]
    if not used:
        raise AppError("no audio: upload or record a sound, or give a pool chunk id, in at least one input")
    paths, offsets = [p for (p, _), _ in used], [float(o) for _, o in used]
    try:
        clip = condition_audio(paths, offsets, app.conf.draw_lufs, sequential, RATE, app.conf.draw_seconds)
    except (OSError, ValueError) as e:   # each input was checked above; this is the mixture itself
        raise AppError(f"the inputs cannot be mixed: {e}") from None
    n = int(num_images or app.conf.num_images)
    try:
        sampler = app.sampler(clip.size / RATE)
        sampler.guidance, sampler.steps = float(guidance), int(steps)
        images = sampler.images([clip] * n, sampler.initial_latents(n, torch.Generator().manual_seed(int(seed))))
    except (RuntimeError, ValueError, IndexError) as e:   # e.g. a clip longer than the model's AST positions
        raise AppError(f"the model could not draw from this clip ({len(paths)} inputs, {clip.size / RATE:g} s, "
                       f"{'sequential' if sequential else 'superposed'}): {type(e).__name__}: {str(e).splitlines()[0]}") from None
    out = app.temp.dir / "drawn"
    out.mkdir(exist_ok=True)
    stamp = hashlib.sha1(repr((paths, offsets, sequential, guidance, steps, seed, n)).encode()).hexdigest()[:12]
    pngs = []
    for k, im in enumerate(images):
        pngs.append(str(out / f"image-{stamp}-{k}.png"))
        im.save(pngs[-1])
    return Drawing(pngs, app.temp.wav(clip, RATE, "heard"), images[0].size)

