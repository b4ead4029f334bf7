"""The one renderer: loudness-normalised components summed in float64, a peak guard, 24-bit FLAC.

The `mix` stage, `python -m sonify.mix` (rebuilding from a release manifest) and `sonify.generate`
all call `render` with float64 gains, so a rebuilt mixture is bit-for-bit the pipeline's own.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf

from sonify.engine.files import atomic_write


def target_lufs(lufs_min: float, lufs_max: float, seed: int, image_id: str, variant: str, concept_index: int) -> float:
    """The mix stage's target rule: a component's loudness drawn uniformly from [lufs_min, lufs_max] by a
    generator keyed by (seed, image, variant, concept index), so a mixture never depends on order or workers."""
    return uniform_target(lufs_min, lufs_max, seed, image_id, variant, concept_index, "mix")


def uniform_target(lufs_min: float, lufs_max: float, *key: object) -> float:
    """A loudness drawn uniformly from [lufs_min, lufs_max] by the generator keyed by `key`."""
    from sonify.engine.keys import keyed_rng

    return lufs_min + (lufs_max - lufs_min) * float(keyed_rng(*key).random())


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def sum_components(signals: list[np.ndarray], gains_db: list[float]) -> np.ndarray:
    """Sum of gain-scaled components in float64 (all the same length)."""
    out = np.zeros(signals[0].shape[0], dtype=np.float64)
    for x, g in zip(signals, gains_db):
        out += x.astype(np.float64) * db_to_gain(g)
    return out


def peak_guard_db(mix: np.ndarray, ceiling_dbfs: float) -> float:
    """Gain in dB (<= 0) that brings the sample peak down to the ceiling; 0 when it is already below."""
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    ceiling = db_to_gain(ceiling_dbfs)
    return float(20.0 * np.log10(ceiling / peak)) if peak > ceiling else 0.0


def apply_mix_gain(mix: np.ndarray, mix_gain_db: float) -> np.ndarray:
    return mix * db_to_gain(mix_gain_db) if mix_gain_db != 0.0 else mix


def render(signals: list[np.ndarray], gains_db: list[float], mix_gain_db: float | None = None,
           ceiling_dbfs: float = -1.0) -> tuple[np.ndarray, float]:
    """Sum the gained components; apply `mix_gain_db` as recorded, or (None) the peak guard's gain.

    Returns the mixture (float64) and the mix gain applied.
    """
    summed = sum_components(signals, gains_db)
    if mix_gain_db is None:
        mix_gain_db = peak_guard_db(summed, ceiling_dbfs)
    return apply_mix_gain(summed, mix_gain_db), mix_gain_db


def quantise24(mix: np.ndarray) -> np.ndarray:
    """The mixture as 24-bit integers (round to nearest, clipped): exactly the samples the FLAC holds."""
    return np.clip(np.round(mix * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype("<i4")


def pcm24_sha256(mix: np.ndarray) -> str:
    """sha256 of the mixture quantised to 24-bit integers: identifies the audio independently of the FLAC encoder."""
    return hashlib.sha256(quantise24(mix).tobytes()).hexdigest()


def write_flac(path: str | Path, mix: np.ndarray, rate: int) -> tuple[str, str]:
    """Write a 24-bit FLAC atomically; returns (sha256 of the file's bytes, pcm24_sha256 of the audio).

    The quantisation is ours (`quantise24`), not libsndfile's, and the file is encoded in memory and
    written in one call (libsndfile's own file writes are many small ones).
    """
    q = quantise24(mix)
    buf = io.BytesIO()
    sf.write(buf, q << 8, rate, format="FLAC", subtype="PCM_24")  # int32 left-justified: 24 bits kept exactly
    data = buf.getbuffer()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(q.tobytes()).hexdigest()


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
