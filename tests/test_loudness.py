"""The BS.1770-4 meter against published references: pyloudnorm's test cases and EBU Tech 3341.

Expected values come from the standards, not from the meter under test: BS.1770-4 states that a
0 dBFS 1 kHz sine on one of L, R or C reads -3.01 LKFS, so a sine of peak A dBFS on channels with
weights G_i reads 10 log10(sum_i G_i 10^((A_i - 3.01) / 10)). EBU Tech 3341 (V4) cases 1-5 are
stereo 1 kHz sines with a stated level (-23.0 LUFS, -33.0 LUFS) and tolerance +-0.1 LU; pyloudnorm
uses the same +-0.1 LU for its gating references. The signals are generated here (the reference
files are not in this repository).
"""

import math

import numpy as np
import pyloudnorm
import pytest

from sonify.media.loudness import LoudnessMeter

SR = 48000
TOL = 0.1   # EBU Tech 3341 and pyloudnorm's reference tests


def tone(level_dbfs: float, seconds: float, sr: int = SR, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (10 ** (level_dbfs / 20) * np.sin(2 * np.pi * freq * t)).astype(np.float64)


def sequence(parts) -> np.ndarray:
    return np.concatenate([tone(level, secs) for level, secs in parts])


def expected(levels_dbfs, weights) -> float:
    """BS.1770-4 for in-phase 1 kHz sines: each channel adds G * 10^((A - 3.01)/10)."""
    return 10 * math.log10(sum(g * 10 ** ((a - 3.01) / 10) for a, g in zip(levels_dbfs, weights) if g))


# EBU Tech 3341 V4, Table 1, cases 1-5 (stereo, both channels the same 1 kHz sine)
TECH_3341 = [
    ("case1", [(-23.0, 20)], -23.0),
    ("case2", [(-33.0, 20)], -33.0),
    ("case3_relative_gate", [(-36.0, 10), (-23.0, 60), (-36.0, 10)], -23.0),
    ("case4_absolute_gate", [(-72.0, 10), (-36.0, 10), (-23.0, 60), (-36.0, 10), (-72.0, 10)], -23.0),
    ("case5", [(-26.0, 20), (-20.0, 20.1), (-26.0, 20)], -23.0),
]


@pytest.mark.parametrize("name, parts, target", TECH_3341, ids=[c[0] for c in TECH_3341])
def test_ebu_tech_3341_stereo(name, parts, target):
    x = sequence(parts)
    assert LoudnessMeter(SR).integrated(np.stack([x, x], axis=1)) == pytest.approx(target, abs=TOL)


@pytest.mark.parametrize("name, parts, target", TECH_3341, ids=[c[0] for c in TECH_3341])
def test_ebu_tech_3341_mono(name, parts, target):
    # one channel carries half the stereo power: 3.01 dB lower, with the same gating decisions
    assert LoudnessMeter(SR).integrated(sequence(parts)) == pytest.approx(target - 3.01, abs=TOL)


def test_one_khz_sine_full_scale_reads_minus_3_01():
    # pyloudnorm's sine_1000 reference (-3.05 LUFS) and BS.1770-4's calibration statement
    assert LoudnessMeter(SR).integrated(tone(0.0, 5)) == pytest.approx(-3.01, abs=TOL)


def test_relative_gate_reference_shape():
    # the shape of ITU 1770-2 Comp_RelGateTest (target -10.0): a loud tone with long quiet parts that
    # the relative gate must drop; only the -10 LUFS part counts
    x = sequence([(-10.0, 20), (-30.0, 20)])    # stereo -10 dBFS each: -10.0 LUFS
    st = np.stack([x, x], axis=1)
    assert LoudnessMeter(SR).integrated(st) == pytest.approx(-10.0, abs=TOL)
    assert LoudnessMeter(SR).integrated(st) == pytest.approx(pyloudnorm.Meter(SR).integrated_loudness(st), abs=1e-6)


def test_absolute_gate_reference_shape():
    # Comp_AbsGateTest shape (target -69.5): a tone just above the -70 gate with silence around it
    x = np.concatenate([np.zeros(SR * 5), tone(-69.5, 20), np.zeros(SR * 5)])
    st = np.stack([x, x], axis=1)
    assert LoudnessMeter(SR).integrated(st) == pytest.approx(-69.5, abs=TOL)
    assert LoudnessMeter(SR).integrated(np.stack([x * 0.5, x * 0.5], axis=1)) == float("-inf")  # -75.5: all gated


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_stereo_equals_pyloudnorm(rate):
    rng = np.random.default_rng(rate)
    x = rng.normal(0, 0.05, (rate * 3, 2)) * np.array([1.0, 0.3])
    assert LoudnessMeter(rate).integrated(x) == pytest.approx(pyloudnorm.Meter(rate).integrated_loudness(x), abs=1e-6)


def test_five_channel_weights_surrounds():
    # L R C at -28 dBFS, Ls Rs at -30 dBFS (Tech 3341 style 5.0 signal), expected from Table 3's weights
    levels = [-28.0, -28.0, -28.0, -30.0, -30.0]
    x = np.stack([tone(a, 10) for a in levels], axis=1)
    want = expected(levels, [1, 1, 1, 1.41, 1.41])
    assert LoudnessMeter(SR).integrated(x) == pytest.approx(want, abs=TOL)
    assert LoudnessMeter(SR).integrated(x) == pytest.approx(pyloudnorm.Meter(SR).integrated_loudness(x), abs=1e-6)


def test_six_channel_excludes_the_lfe():
    levels = [-28.0, -28.0, -28.0, -3.0, -30.0, -30.0]     # a loud LFE must not count
    x = np.stack([tone(a, 10) for a in levels], axis=1)
    assert LoudnessMeter(SR).integrated(x) == pytest.approx(expected(levels, [1, 1, 1, 0, 1.41, 1.41]), abs=TOL)


def test_multichannel_is_not_filtered_along_channels():
    # the bug this replaces: a (frames, 2) array read as one signal gave -11.32 for a -10.07 file
    x = tone(-10.0, 10)
    assert LoudnessMeter(SR).integrated(np.stack([x, x], axis=1)) == pytest.approx(-10.0, abs=TOL)


@pytest.mark.parametrize("channels", [4, 7, 8])
def test_ambiguous_layouts_are_refused_in_one_line(channels):
    with pytest.raises(ValueError, match=r"cannot weigh \d+ channels") as e:
        LoudnessMeter(SR).integrated(np.zeros((SR, channels)))
    assert "\n" not in str(e.value)


def test_mono_column_is_the_mono_path_bit_for_bit():
    x = np.random.default_rng(0).normal(0, 0.1, SR * 2)
    m = LoudnessMeter(SR)
    assert m.integrated(x[:, None]) == m.integrated(x)
    y = m.k_weight(m.pad(x))
    assert m.integrated_weighted(y) == m.integrated(x)
