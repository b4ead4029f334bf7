"""The audio front ends of CLAP and AST in torch: batched, on the model's device.

transformers' `ClapFeatureExtractor` and `ASTFeatureExtractor` (without torchaudio, which has no
CPU build for the pinned torch) compute one `numpy.fft.rfft` per frame in a Python loop: about
30 ms of one core per 5 s chunk for CLAP, ~1000x the model's own time on a GPU. These classes
compute the same features as those extractors' numpy path, from the same checkpoint's
`preprocessor_config.json`, as one batched STFT and one mel matmul in float64 (as the numpy path),
then cast to float32 (as it does):

- CLAP (`truncation="rand_trunc"`, the unfused checkpoints): `repeatpad` (or `repeat`, `pad`) to
  `max_length_s`, centred STFT with reflect padding, periodic Hann window of `fft_window_size`,
  power spectrum, Slaney-scale Slaney-normalised mel bank, floor 1e-10, `10 log10` (dB, ref 1).
- AST (the numpy emulation of `torchaudio.compliance.kaldi.fbank`): 25 ms frames every 10 ms
  without centring ("snip edges"), no dither, DC offset removed per frame, pre-emphasis 0.97,
  symmetric Hann window (400), FFT 512, power, 128 Kaldi-scale triangles in mel space
  (20 Hz .. Nyquist), floor float32 eps, natural log; zero-padded or cut to `max_length` frames,
  then `(x - mean) / (2 std)`.

Where this departs from transformers: a CLAP clip longer than the window is cropped at an offset
derived from a key (the chunk's id), not at transformers' unseeded `rand_trunc` offset, so the same
chunk gives the same embedding on every run (`keyed_crop`, applied before either front end). The
`fusion` truncation of the fused checkpoints is not implemented: such a checkpoint needs
`frontend=transformers`. `frontend=transformers` keeps the extractors themselves, as the reference.
"""

from __future__ import annotations

import hashlib
import warnings
from contextlib import contextmanager

import numpy as np

FRONTENDS = ("torch", "transformers")


@contextmanager
def ast_mel_filters_as_designed():
    """AST's own 128 kaldi mel bins over 257 FFT bins leave the lowest filter empty, by design; transformers
    warns about it on every feature extractor it builds. Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values", category=UserWarning)
        yield


def keyed_crop(clip: np.ndarray, max_samples: int, key: str) -> np.ndarray:
    """A window of `max_samples` at an offset fixed by `key` (blake2b of it), the clip itself when it fits."""
    overflow = clip.shape[0] - int(max_samples)
    if overflow <= 0:
        return clip
    h = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")
    start = h % (overflow + 1)
    return clip[start:start + int(max_samples)]


def _bank(device, **kw):
    import torch
    from transformers.audio_utils import mel_filter_bank

    with ast_mel_filters_as_designed():
        return torch.from_numpy(mel_filter_bank(**kw)).to(device, torch.float64)


class ClapFrontend:
    """`ClapFeatureExtractor`'s non-fusion features: clips (mono, at its rate, at most its window) ->
    (B, 1, frames, mel bins) float32 log-mel in dB, on `device`."""

    def __init__(self, fe, device: str = "cpu"):
        import torch

        if fe.truncation != "rand_trunc":
            raise ValueError(f"the torch CLAP front end implements truncation=rand_trunc, not {fe.truncation!r} "
                             "(a fused checkpoint): set stages.embed.frontend=transformers")
        if fe.padding not in ("repeatpad", "repeat", "pad"):
            raise ValueError(f"CLAP padding {fe.padding!r}: expected repeatpad, repeat or pad")
        self.device = device
        self.rate, self.max_samples = int(fe.sampling_rate), int(fe.nb_max_samples)
        self.n_fft, self.hop, self.padding, self.top_db = int(fe.fft_window_size), int(fe.hop_length), fe.padding, fe.top_db
        self.mel = _bank(device, num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=int(fe.feature_size),
                         min_frequency=fe.frequency_min, max_frequency=fe.frequency_max, sampling_rate=self.rate,
                         norm="slaney", mel_scale="slaney")
        self.window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64, device=device)

    def fill(self, clip: np.ndarray) -> np.ndarray:
        """One clip padded to the window as the extractor pads it (`repeatpad`: whole repeats, then zeros)."""
        n, m = clip.shape[0], self.max_samples
        if n == 0:
            raise ValueError("an empty clip has no CLAP features")
        if n > m:
            raise ValueError(f"a clip of {n} samples is longer than CLAP's window of {m}: crop it first (keyed_crop)")
        if n < m and self.padding == "repeat":
            clip = np.tile(clip, m // n + 1)[:m]
        elif n < m and self.padding == "repeatpad":
            clip = np.tile(clip, m // n)
        return np.pad(clip, (0, m - clip.shape[0]))

    def frame_sources(self, n: int) -> list[int]:
        """For a clip of `n` samples, per output frame the frame it equals: a repeat-padded 5 s clip
        holds the same samples twice, so with a period that is a whole number of hops every frame of
        the second copy (away from the edges) is a frame of the first. Those are computed once."""
        m, hop, half = self.max_samples, self.hop, self.n_fft // 2
        periodic_end = {"repeatpad": (m // n) * n, "repeat": m, "pad": 0}[self.padding]
        src = list(range(1 + m // hop))
        if n % hop == 0 and n < m:
            for t in range(len(src)):
                if t * hop - half >= n and t * hop + half <= periodic_end:
                    src[t] = src[t - n // hop]
        return src

    def __call__(self, clips: list[np.ndarray]):
        import torch

        clips = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
        out = [None] * len(clips)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            groups.setdefault(c.shape[0], []).append(i)
        for n, idx in groups.items():   # clips of one length share which frames repeat
            feats = self._same_length([clips[i] for i in idx], self.frame_sources(n))
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return torch.stack(out).unsqueeze(1)

    def _same_length(self, clips: list[np.ndarray], src: list[int]):
        import torch

        x = torch.from_numpy(np.stack([self.fill(c) for c in clips])).to(self.device).double()
        half = self.n_fft // 2
        x = torch.nn.functional.pad(x[:, None], (half, half), mode="reflect")[:, 0]   # centred frames, as librosa
        unique = sorted(set(src))
        frames = x.unfold(-1, self.n_fft, self.hop)[:, unique]                       # (B, U, n_fft), a view
        rows = frames.reshape(-1, self.n_fft)
        # on a CPU, blocks of frames that stay in cache: the float64 power spectrum is memory-bound
        step = rows.shape[0] if x.device.type != "cpu" else 128
        mel = torch.cat([self._mel(rows[s:s + step]) for s in range(0, rows.shape[0], step)])
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10)).reshape(len(clips), len(unique), -1)
        if self.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - float(self.top_db))
        where = {u: k for k, u in enumerate(unique)}
        return db[:, [where[s] for s in src]].float()                                # (B, frames, mels)

    def _mel(self, rows):
        import torch

        spec = torch.fft.rfft(rows * self.window)
        return (spec.real.square() + spec.imag.square()) @ self.mel


class ASTFrontend:
    """`ASTFeatureExtractor`'s numpy (Kaldi-emulating) features: clips (mono, 16 kHz) ->
    (B, max_length, mel bins) float32, normalised, on `device`."""

    frame, shift, n_fft, preemphasis, floor = 400, 160, 512, 0.97, 1.192092955078125e-07

    def __init__(self, fe, device: str = "cpu"):
        import torch

        self.device = device
        self.rate, self.max_length = int(fe.sampling_rate), int(fe.max_length)
        self.do_normalize, self.mean, self.std = bool(fe.do_normalize), float(fe.mean), float(fe.std)
        self.mel = _bank(device, num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=int(fe.num_mel_bins),
                         min_frequency=20, max_frequency=self.rate // 2, sampling_rate=self.rate, norm=None,
                         mel_scale="kaldi", triangularize_in_mel_space=True)
        self.window = torch.hann_window(self.frame, periodic=False, dtype=torch.float64, device=device)

    def frames_of(self, n_samples: int) -> int:
        return max(0, 1 + (n_samples - self.frame) // self.shift) if n_samples >= self.frame else 0

    def __call__(self, clips: list[np.ndarray]):
        import torch

        clips = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
        counts = [min(self.frames_of(c.shape[0]), self.max_length) for c in clips]
        need = self.frame + self.shift * (max(max(counts), 1) - 1)                # samples the kept frames read
        x = np.zeros((len(clips), need), np.float32)
        for i, c in enumerate(clips):
            x[i, :min(need, c.shape[0])] = c[:need]
        x = torch.from_numpy(x).to(self.device).double()
        frames = x.unfold(-1, self.frame, self.shift)                                  # (B, T, 400), a view
        mean = frames.mean(dim=-1, keepdim=True)
        # per frame: DC offset removed, then pre-emphasis y[i] = d[i] - 0.97 d[i-1], y[0] = 0.03 d[0];
        # as both are linear, y[i] = e[i] - 0.03 mean with e the pre-emphasised waveform (one pass, not one per frame)
        e = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=-1).unfold(-1, self.frame, self.shift)
        y = e - (1 - self.preemphasis) * mean
        y[..., 0] = (1 - self.preemphasis) * (frames[..., 0] - mean[..., 0])
        rows = (y * self.window).reshape(-1, self.frame)
        step = rows.shape[0] if frames.device.type != "cpu" else 256   # cache-sized blocks on a CPU
        mel = torch.cat([self._mel(rows[s:s + step]) for s in range(0, rows.shape[0], step)])
        fbank = torch.log(torch.clamp(mel, min=self.floor)).float().reshape(len(clips), frames.shape[1], -1)
        out = torch.zeros(len(clips), self.max_length, fbank.shape[-1], dtype=torch.float32, device=self.device)
        for i, n in enumerate(counts):
            out[i, :n] = fbank[i, :n]
        return (out - self.mean) / (self.std * 2) if self.do_normalize else out

    def _mel(self, rows):
        import torch

        spec = torch.fft.rfft(rows, n=self.n_fft)
        return (spec.real.square() + spec.imag.square()) @ self.mel
