"""Integrated loudness (ITU-R BS.1770-4) with pyloudnorm's meter, its block gating vectorised.

pyloudnorm applies the K-weighting with its own IIR filters, then loops over 400 ms blocks in
Python (about 1.7 ms per 5 s clip). `LoudnessMeter` uses pyloudnorm's filters and constants
unchanged and computes the same block energies at the same sample bounds with one cumulative
sum, then gates exactly as pyloudnorm does. Results equal `pyloudnorm.Meter.integrated_loudness`
to within 1e-6 LU (tested); silence gives -inf, like pyloudnorm.

Clips shorter than the 400 ms gating block (which pyloudnorm refuses) are measured zero-padded to
one block: the padding lowers the block's mean square, so the measure is the loudness of that
block, as a listener would hear the clip within it.
"""

from __future__ import annotations

import numpy as np
import pyloudnorm

ABS_GATE = -70.0
REL_GATE = -10.0


class LoudnessMeter:
    def __init__(self, rate: int):
        self.meter = pyloudnorm.Meter(rate)
        self.rate = rate
        self.block = self.meter.block_size            # 0.4 s
        self.step = 1.0 - self.meter.overlap           # 0.25 of a block
        # pyloudnorm's two K-weighting biquads (high shelf, then high pass), run as one cascade
        filters = list(self.meter._filters.values())
        self.sos = np.array([np.concatenate([np.asarray(f.b, float), np.asarray(f.a, float)]) for f in filters])
        self.gain = float(np.prod([f.passband_gain for f in filters]))
        self._bounds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def k_weight(self, x: np.ndarray) -> np.ndarray:
        from scipy.signal import sosfilt

        return self.gain * sosfilt(self.sos, np.asarray(x, dtype=np.float64))

    def bounds(self, n: int):
        """Block bounds in samples, as pyloudnorm computes them, cached per signal length, plus the
        segment layout that turns one pass of `np.add.reduceat` into every overlapping block's sum."""
        if n not in self._bounds:
            T = n / self.rate
            n_blocks = int(np.round((T - self.block) / (self.block * self.step))) + 1
            lo = np.array([int(self.block * (i * self.step) * self.rate) for i in range(n_blocks)])
            hi = np.minimum([int(self.block * (i * self.step + 1) * self.rate) for i in range(n_blocks)], n)
            edges = np.unique(np.concatenate([lo, hi, [n]]))           # sorted; the last edge is n
            starts = edges[:-1]                                         # segments [edges[i], edges[i+1])
            self._bounds[n] = (lo, hi, starts, np.searchsorted(edges, lo), np.searchsorted(edges, hi))
        return self._bounds[n]

    def pad(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        need = int(np.ceil(self.block * self.rate))
        return np.pad(x, (0, need - x.shape[0])) if x.shape[0] < need else x

    def integrated(self, x: np.ndarray) -> float:
        """Integrated loudness in LUFS of a mono signal."""
        return self.integrated_weighted(self.k_weight(self.pad(x)))

    def integrated_weighted(self, y: np.ndarray) -> float:
        """Loudness of an already K-weighted signal. K-weighting is linear, so a mixture's weighted
        signal is the same gain-weighted sum of its components' weighted signals."""
        lo, hi, starts, lo_pos, hi_pos = self.bounds(y.shape[0])
        segments = np.add.reduceat(y * y, starts) if starts.size else np.zeros(0)
        csum = np.concatenate(([0.0], np.cumsum(segments)))           # csum[i] = energy before edges[i]
        z = (csum[hi_pos] - csum[lo_pos]) / (self.block * self.rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            lj = -0.691 + 10.0 * np.log10(z)
            gated = lj >= ABS_GATE
            if not gated.any():
                return float("-inf")
            gamma_r = -0.691 + 10.0 * np.log10(z[gated].mean()) + REL_GATE
            gated = (lj > gamma_r) & (lj > ABS_GATE)
            if not gated.any():
                return float("-inf")
            return float(-0.691 + 10.0 * np.log10(z[gated].mean()))
