"""`evaluate score`: the paper's Table 1 metrics and the peers', overall and per class, as Markdown and JSON.

FID (Inception pool features, generated vs ground truth), IIS (CLIP image cosine, generated vs its
ground truth, CLIP `models.clip_iis`), AIS (Wav2CLIP audio vs CLIP image of the generated image),
CS (100 x max(AIS cosine, 0)), R@K (each generated image ranks all ground-truth images of the set by
CLIP cosine; the pool size is printed), NDB (k bins of Inception features of the ground truth).
Only clips with an ok ground truth and an ok generated image are scored; the counts are reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sonify.engine.errors import ConfigError
from sonify.engine.files import atomic_write
from sonify.evaluation import metrics as M
from sonify.evaluation.benchmarks import read_clips
from sonify.evaluation.config import EvalConf
from sonify.evaluation.features import ClipImageFeatures, InceptionFeatures, Wav2ClipFeatures, read_rgb
from sonify.evaluation.generation import read_index

HIGHER = {"IIS": True, "AIS": True, "CS": True, "FID": False, "NDB": False}


def fmt(value) -> str:
    if isinstance(value, M.Undefined):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def jsonable(value):
    if isinstance(value, M.Undefined):
        return {"value": None, "undefined": str(value), "needs": value.needs}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


class Features:
    """Every feature the metrics need for one set of (ground truth, generated, audio) triples."""

    def __init__(self, cfg: EvalConf):
        m, s = cfg.models, cfg.score
        self.inception = InceptionFeatures(m.inception, m.tiny_dir, s.device, s.batch_size)
        self.clip = ClipImageFeatures(m.clip, m.tiny_dir, s.device, s.batch_size)
        self.clip_iis = self.clip if m.clip_iis == m.clip else ClipImageFeatures(m.clip_iis, m.tiny_dir, s.device, s.batch_size)
        self.wav2clip = Wav2ClipFeatures(m.wav2clip, m.tiny_dir, s.device, s.batch_size)

    def __call__(self, gt_paths: list[str], gen_paths: list[str], audio_paths: list[str], seconds: float) -> dict:
        gt = [read_rgb(p) for p in gt_paths]
        gen = [read_rgb(p) for p in gen_paths]
        self.wav2clip.seconds = seconds
        out = {"inc_gt": self.inception(gt), "inc_gen": self.inception(gen), "clip_gen": self.clip(gen),
               "clip_gt": self.clip(gt), "audio": self.wav2clip(audio_paths)}
        if out["audio"].shape[1] != out["clip_gen"].shape[1]:
            raise ConfigError(f"models.wav2clip gives {out['audio'].shape[1]}-d embeddings but models.clip {out['clip_gen'].shape[1]}-d; "
                              "AIS and CS need Wav2CLIP's CLIP (ViT-B/32, 512-d)")
        out["iis_gen"], out["iis_gt"] = ((out["clip_gen"], out["clip_gt"]) if self.clip_iis is self.clip
                                        else (self.clip_iis(gen), self.clip_iis(gt)))
        return out


def metrics_of(f: dict, idx: np.ndarray, cfg: EvalConf, ranks: np.ndarray) -> dict:
    """All metrics over the rows `idx` (ranks are against the whole evaluated pool)."""
    s = cfg.score
    ais = M.paired_cosines(f["audio"][idx], f["clip_gen"][idx])
    ndb = M.ndb(f["inc_gt"][idx], f["inc_gen"][idx], s.ndb_k, s.ndb_alpha, s.ndb_min_per_bin, cfg.seed)
    out = {"n": int(len(idx)),
           "FID": M.fid(f["inc_gt"][idx], f["inc_gen"][idx]),
           "IIS": float(M.paired_cosines(f["iis_gen"][idx], f["iis_gt"][idx]).mean()) if len(idx) else M.Undefined(1),
           "AIS": float(ais.mean()) if len(idx) else M.Undefined(1),
           "CS": float(M.clip_score(f["clip_gen"][idx], f["audio"][idx]).mean()) if len(idx) else M.Undefined(1),
           "NDB": ndb["ndb"] if isinstance(ndb, dict) else ndb,
           "NDB/k": ndb["ndb_over_k"] if isinstance(ndb, dict) else ndb}
    for k, v in M.recall_at_k(ranks[idx], s.ks, pool=len(ranks)).items():
        out[f"R@{k}"] = v
    return out


def score(clips_path: str | Path, index_path: str | Path, out: str | Path, cfg: EvalConf, name: str = "model",
          features: Features | None = None) -> dict:
    clips, clips_base = read_clips(clips_path)
    index, index_base = read_index(index_path)
    gen = {r["id"]: r for r in index.to_pylist() if r["status"] == "ok"}
    rows = [r for r in clips.to_pylist() if r["status"] == "ok" and r["id"] in gen]
    if not rows:
        raise ValueError("no clip has both an ok ground truth and an ok generated image")
    features = features or Features(cfg)
    f = features([str(clips_base / r["image"]) for r in rows], [str(index_base / gen[r["id"]]["image"]) for r in rows],
                 [str(clips_base / r["audio"]) for r in rows], rows[0]["seconds"])
    ranks = M.retrieval_ranks(f["clip_gen"], f["clip_gt"])
    labels = np.array([r["label"] for r in rows])
    result = {"name": name, "benchmark": rows[0]["benchmark"], "clips": len(clips), "scored": len(rows),
              "retrieval_pool": len(rows), "overall": metrics_of(f, np.arange(len(rows)), cfg, ranks),
              "per_class": {lab: metrics_of(f, np.flatnonzero(labels == lab), cfg, ranks) for lab in sorted(set(labels))}}
    out = Path(out)
    atomic_write(out / "scores.json", json.dumps(jsonable(result), indent=1))
    atomic_write(out / "scores.md", markdown(result))
    return result


COLUMNS = ["FID", "IIS", "AIS", "CS", "R@1", "R@5", "R@10", "NDB", "NDB/k"]


def markdown(result: dict) -> str:
    cols = [c for c in COLUMNS if c in result["overall"]] + [c for c in result["overall"] if c not in COLUMNS and c != "n"]
    arrows = {c: (" ↑" if HIGHER.get(c.split("/")[0], True) else " ↓") for c in cols}
    head = "| " + " | ".join(["method", "benchmark", "n", *[c + arrows[c] for c in cols]]) + " |"
    sep = "|" + "---|" * (len(cols) + 3)
    o = result["overall"]
    lines = [f"# {result['name']} on {result['benchmark']}", "",
             f"{result['scored']} of {result['clips']} clips scored; R@K ranks each generated image against "
             f"{result['retrieval_pool']} ground-truth images (the pool).", "", head, sep,
             "| " + " | ".join([result["name"], result["benchmark"], str(o["n"]), *[fmt(o[c]) for c in cols]]) + " |",
             "", "## Per class", "", "| " + " | ".join(["class", "n", *cols]) + " |", "|" + "---|" * (len(cols) + 2)]
    for lab, m in result["per_class"].items():
        lines.append("| " + " | ".join([lab.replace("|", "/"), str(m["n"]), *[fmt(m[c]) for c in cols]]) + " |")
    return "\n".join(lines) + "\n"
