"""`loudness-retention`: how much loudness an audio encoder's embeddings retain (A.8, Fig. 15).

The paper: a small set of clips, each its own class, embedded at progressively shifted loudness and
classified by KNN against the embeddings of the unshifted clips; accuracy vs the shift. Here each clip
is first normalised to `--lufs` (BS.1770-4), then scaled by every shift g in -X..+X dB (samples may
exceed full scale: the encoders take floats, nothing is clipped); embeddings are the encoder's time
series mean-pooled over time; the classifier is 1-NN by Euclidean distance (the common KNN default;
the paper names neither k nor the metric: `--metric cosine` is the other choice). Encoders: the run's
AST (`models.ast`, as the features stage runs it) and, with `--hubert`, a `transformers.HubertModel`
(the paper's early comparison; HuBERT-base's group-normalised front end makes it nearly gain-invariant).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from sonify.media import AUDIO_EXTENSIONS

NAME = "loudness-retention"
GENERATES = False


def add_arguments(p) -> None:
    p.add_argument("--audio-dir", help="a folder of clips (default: clips drawn from the run's pool)")
    p.add_argument("--clips", type=int, default=20, help="clips drawn from the pool (default 20)")
    p.add_argument("--max-shift", type=float, default=30.0, help="X: shifts run from -X to +X dB (default 30)")
    p.add_argument("--step-db", type=float, default=5.0, help="between shifts (default 5 dB)")
    p.add_argument("--lufs", type=float, default=-23.0, help="loudness every clip is normalised to before shifting")
    p.add_argument("--seconds", type=float, default=5.0, help="each clip cut or zero-padded to this length")
    p.add_argument("--ast", help="the AST (default the run's models.ast)")
    p.add_argument("--hubert", nargs="?", const="facebook/hubert-base-ls960",
                   help="also a HuBERT (id, path, tiny:hubert or shape:facebook/hubert-base-ls960; bare: the base model)")
    p.add_argument("--tiny-dir", help="where tiny: and shape: models are built (default the run's models.tiny_dir)")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    p.add_argument("--device", default="auto")


def shifts(max_shift: float, step: float) -> list[float]:
    if step <= 0 or max_shift < 0:
        from sonify.studies.common import StudyError
        raise StudyError("--step-db must be > 0 and --max-shift >= 0")
    n = int(np.floor(max_shift / step + 1e-9))
    return [float(g) for g in np.arange(-n, n + 1) * step]


def accuracy(embed: Callable[[list[np.ndarray]], np.ndarray], clips: list[np.ndarray], gains_db: list[float],
             metric: str = "euclidean") -> list[float]:
    """1-NN accuracy per shift: each clip scaled by g dB is classified against the unshifted clips' embeddings
    (`embed`: clips -> (N, D) pooled embeddings); correct when its nearest neighbour is itself."""
    def prep(e):
        e = np.asarray(e, np.float64)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12) if metric == "cosine" else e

    reference = prep(embed(clips))
    out = []
    for g in gains_db:
        q = prep(embed([c * 10.0 ** (g / 20.0) for c in clips]))
        d = ((q[:, None, :] - reference[None, :, :]) ** 2).sum(-1)   # cosine: on unit rows, same order as 1 - cos
        out.append(float(np.mean(d.argmin(axis=1) == np.arange(len(clips)))))
    return out


def pooled(encoder) -> Callable[[list[np.ndarray]], np.ndarray]:
    """An encoder's (T, D) time series per clip, mean-pooled over time."""
    return lambda clips: np.stack([np.asarray(e).mean(axis=0) for e in encoder.encode([c.astype(np.float32) for c in clips])])


def load_clips(a, run_dir: Path | None) -> tuple[list[str], list[np.ndarray], list[dict]]:
    """(names, clips normalised to --lufs, one row per input: ok or error with its reason)."""
    from sonify.media.loudness import LoudnessMeter
    from sonify.studies.common import StudyError
    from sonify.training.sampling import load_audio

    rate, meter, rows, names, clips = 16000, LoudnessMeter(16000), [], [], []
    if a.audio_dir:
        folder = Path(a.audio_dir)
        if not folder.is_dir():
            raise StudyError(f"--audio-dir {folder}: no such folder")
        items = [(p.name, lambda p=p: load_audio(str(p), rate, a.seconds))
                 for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS]
    else:
        from sonify.engine.keys import keyed_rng
        from sonify.studies.sources import RunPool

        if run_dir is None:
            raise StudyError("loudness-retention: give run=<run dir> (clips from its pool) or --audio-dir")
        pool = RunPool(run_dir)
        ids = sorted(pool.ids)
        order = keyed_rng(a.seed, "experiments", "loudness-retention").permutation(len(ids))   # drawn until --clips usable
        n = int(round(rate * a.seconds))
        items = [(ids[i], lambda c=ids[i]: (lambda x: np.pad(x, (0, max(0, n - x.size)))[:n])(pool.audio(c, rate)))
                 for i in order]
    seen: dict[bytes, str] = {}
    for name, load in items:
        if not a.audio_dir and len(clips) == a.clips:
            break
        try:
            x = np.asarray(load(), np.float64)
        except (OSError, ValueError) as e:
            rows.append({"clip": name, "status": "error", "error": f"decode_error: {e}", "measured_lufs": None})
            continue
        digest = hashlib.sha256(x.tobytes()).digest()
        if digest in seen:      # each clip is its own class: two identical clips could not be told apart at any shift
            rows.append({"clip": name, "status": "error", "error": f"duplicate: the same audio as {seen[digest]}", "measured_lufs": None})
            continue
        seen[digest] = name
        level = meter.integrated(x)
        if not np.isfinite(level):
            rows.append({"clip": name, "status": "error", "error": "below_gate: silent, or under -70 LUFS", "measured_lufs": None})
            continue
        rows.append({"clip": name, "status": "ok", "error": None, "measured_lufs": float(level)})
        names.append(name)
        clips.append(x * 10.0 ** ((a.lufs - level) / 20.0))
    if len(clips) < 2:
        raise StudyError(f"{len(clips)} usable clips (of {len(rows)}): the study needs at least 2")
    return names, clips, rows


def run(a, run_dir: Path | None) -> Path:
    from omegaconf import OmegaConf

    from sonify.models.encoders import ASTEncoder, kaldi_frames
    from sonify.studies.common import StudyError, finished, line_plot, listing, study_dir, write_summary, write_table

    saved = OmegaConf.load(run_dir / "config.yaml") if run_dir is not None and (run_dir / "config.yaml").is_file() else None
    ast = a.ast or (saved.models.ast if saved is not None else None)
    tiny_dir = a.tiny_dir or (saved.models.tiny_dir if saved is not None else "runs/_tiny_models")
    if not ast:
        raise StudyError("loudness-retention: no AST: pass --ast ID (or run=<run dir> to use its models.ast)")
    gains = shifts(a.max_shift, a.step_db)
    params = {"audio_dir": a.audio_dir, "clips": a.clips, "gains": gains, "lufs": a.lufs, "seconds": a.seconds, "ast": ast,
              "hubert": a.hubert, "metric": a.metric, "seed": a.seed,
              "inputs": listing(a.audio_dir or (Path(run_dir) / "manifests" / "audio_embeddings" if run_dir else None))}
    if a.out or run_dir is not None:
        done = Path(a.out) if a.out else Path(run_dir) / "experiments" / NAME
        if finished(done) and (done / "params.json").is_file() and \
                json.loads((done / "params.json").read_text()) == json.loads(json.dumps(params, default=str)):
            return done          # unchanged options and inputs: nothing to recompute
    names, clips, clip_rows = load_clips(a, run_dir)
    out = study_dir(run_dir, NAME, a.out, params)
    encoders = {f"AST ({ast})": lambda: ASTEncoder(ast, tiny_dir, kaldi_frames(int(round(16000 * a.seconds))), "mean", a.device, "float32")}
    if a.hubert:
        from sonify.models.hubert import HubertEncoder

        encoders[f"HuBERT ({a.hubert})"] = lambda: HubertEncoder(a.hubert, tiny_dir, a.device)
    curves, rows = {}, []
    for label, make in encoders.items():
        curves[label] = accuracy(pooled(make()), clips, gains, a.metric)
        rows += [{"encoder": label, "shift_db": g, "accuracy": acc, "clips": len(clips)} for g, acc in zip(gains, curves[label])]
    write_table(rows, out / "data.parquet")
    write_table(clip_rows, out / "clips.parquet")
    with open(out / "data.csv", "w") as f:
        f.write("encoder,shift_db,accuracy,clips\n" + "".join(f"\"{r['encoder']}\",{r['shift_db']},{r['accuracy']},{r['clips']}\n" for r in rows))
    line_plot(out / "figure.png", gains, {k: [100 * v for v in vs] for k, vs in curves.items()},
              "1-NN accuracy vs loudness shift (cf. Fig. 15)", "loudness shift (dB)", "accuracy (%)")
    errors = [r for r in clip_rows if r["status"] != "ok"]
    write_summary(out / "summary.md", "Loudness retention in audio embeddings (A.8, Fig. 15)", [
        f"- {len(clips)} clips ({'from ' + a.audio_dir if a.audio_dir else f'drawn from the pool of `{run_dir}`'}), "
        f"each its own class, normalised to {a.lufs} LUFS, {a.seconds:g} s" + (f"; {len(errors)} unusable (see clips.parquet)" if errors else ""),
        f"- shifts {gains[0]:+g} .. {gains[-1]:+g} dB in steps of {a.step_db:g}; embeddings mean-pooled over time; 1-NN, {a.metric}",
        "", "| encoder | " + " | ".join(f"{g:+g} dB" for g in gains) + " |", "|---|" + "---|" * len(gains),
        *[f"| {k} | " + " | ".join(f"{100 * v:.0f}%" for v in vs) + " |" for k, vs in curves.items()],
        "", "![accuracy](figure.png)", "", "Data: `data.csv` / `data.parquet`; inputs: `clips.parquet`."])
    return out
