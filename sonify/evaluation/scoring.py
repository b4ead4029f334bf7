"""`evaluate score`: the paper's Table 1 metrics and the peers', each by its own paper's definition, overall and per class.

FID (Inception pool features, generated vs ground truth, any n >= 2; flagged rank-deficient when n <= dim),
KID (unbiased polynomial MMD), IS (Inception logits, generated and ground truth), IIS (CLIP image cosine,
generated vs its ground truth, `models.clip_iis`), AIS (Wav2CLIP audio vs CLIP image of the generated
image), CS (Visual Echoes: 100 x mean of that cosine), R@K (Sound2Scene: each image ranks the set's
class-name texts by CLIP; the ground-truth frames give the upper bound), R@K (image) (this project's:
each generated image ranks the set's ground-truth images), NDB (k bins of ground-truth Inception features).
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
from sonify.evaluation.config import EvalConf, data_file
from sonify.evaluation.features import ClipImageFeatures, ClipTextFeatures, InceptionFeatures, Wav2ClipFeatures, read_rgb
from sonify.evaluation.generation import read_index
from sonify.evaluation.table import compose, per_class_markdown


def jsonable(value):
    if isinstance(value, M.Undefined):
        return {"value": None, "undefined": str(value), "needs": value.needs}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


class Features:
    """Every feature the metrics need for one set of (ground truth, generated, audio) triples and its class names."""

    def __init__(self, cfg: EvalConf):
        m, s = cfg.models, cfg.score
        self.inception = InceptionFeatures(m.inception, m.tiny_dir, s.device, s.batch_size)
        self.clip = ClipImageFeatures(m.clip, m.tiny_dir, s.device, s.batch_size)
        self.clip_text = ClipTextFeatures(m.clip, m.tiny_dir, s.device, s.text_template)
        self.clip_iis = self.clip if m.clip_iis == m.clip else ClipImageFeatures(m.clip_iis, m.tiny_dir, s.device, s.batch_size)
        self.wav2clip = Wav2ClipFeatures(m.wav2clip, m.tiny_dir, s.device, s.batch_size)

    def __call__(self, gt_paths: list[str], gen_paths: list[str], audio_paths: list[str], seconds: float,
                 class_names: list[str]) -> dict:
        gt = [read_rgb(p) for p in gt_paths]
        gen = [read_rgb(p) for p in gen_paths]
        self.wav2clip.seconds = seconds
        out = {"inc_gt": self.inception(gt), "inc_gen": self.inception(gen), "clip_gen": self.clip(gen),
               "clip_gt": self.clip(gt), "audio": self.wav2clip(audio_paths), "text": self.clip_text(class_names)}
        out["logits_gt"], out["logits_gen"] = self.inception.logits(out["inc_gt"]), self.inception.logits(out["inc_gen"])
        if out["audio"].shape[1] != out["clip_gen"].shape[1]:
            raise ConfigError(f"models.wav2clip gives {out['audio'].shape[1]}-d embeddings but models.clip {out['clip_gen'].shape[1]}-d; "
                              "AIS and CS need Wav2CLIP's CLIP (ViT-B/32, 512-d)")
        out["iis_gen"], out["iis_gt"] = ((out["clip_gen"], out["clip_gt"]) if self.clip_iis is self.clip
                                        else (self.clip_iis(gen), self.clip_iis(gt)))
        return out


def _mean(x: np.ndarray):
    return float(x.mean()) if len(x) else M.Undefined(1)


def _value(out, key: str):
    return out[key] if isinstance(out, dict) else out


def metrics_of(f: dict, idx: np.ndarray, cfg: EvalConf, ranks: dict, num_classes: int) -> dict:
    """All metrics over the rows `idx` (ranks are against the whole evaluated set); details of FID, KID and IS beside them."""
    s = cfg.score
    ais = M.paired_cosines(f["audio"][idx], f["clip_gen"][idx])
    ndb = M.ndb(f["inc_gt"][idx], f["inc_gen"][idx], s.ndb_k, s.ndb_alpha, s.ndb_min_per_bin, cfg.seed)
    kid = M.kid(f["inc_gt"][idx], f["inc_gen"][idx], s.kid_subsets, s.kid_subset_size, cfg.seed)
    dim = f["inc_gt"].shape[1]
    out = {"n": int(len(idx)),
           "FID": M.fid(f["inc_gt"][idx], f["inc_gen"][idx]),
           "KID": _value(kid, "kid"),
           "IIS": _mean(M.paired_cosines(f["iis_gen"][idx], f["iis_gt"][idx])),
           "AIS": _mean(ais),
           "CS": _mean(M.clip_score(f["clip_gen"][idx], f["audio"][idx], clipped=s.cs_clipped)),
           "NDB": _value(ndb, "ndb"), "NDB/k": _value(ndb, "ndb_over_k")}
    for k, v in M.text_recall_at_k(ranks["text_gen"][idx], s.ks, num_classes).items():
        out[f"R@{k}"] = v
    for k, v in M.recall_at_k(ranks["image"][idx], s.ks, pool=len(ranks["image"])).items():
        out[f"R@{k} (image)"] = v
    out["details"] = {"fid_dim": dim, "fid_rank_deficient": M.rank_deficient(len(idx), dim),
                      "kid": kid if isinstance(kid, dict) else None}
    return out


def ground_truth_of(f: dict, cfg: EvalConf, ranks: dict, num_classes: int) -> dict:
    """The upper-bound row: IS and Sound2Scene's R@K of the ground-truth frames themselves."""
    s = cfg.score
    is_gt = M.inception_score(f["logits_gt"], s.is_splits, s.is_min_per_split)
    out = {"n": len(ranks["text_gt"]), "IS": _value(is_gt, "is"), "details": {"is": is_gt if isinstance(is_gt, dict) else None}}
    for k, v in M.text_recall_at_k(ranks["text_gt"], s.ks, num_classes).items():
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
    labels = np.array([r["label"] for r in rows])
    classes = sorted(set(labels))
    class_idx = np.array([classes.index(lab) for lab in labels])
    features = features or Features(cfg)
    f = features([str(clips_base / r["image"]) for r in rows], [str(index_base / gen[r["id"]]["image"]) for r in rows],
                 [str(clips_base / r["audio"]) for r in rows], rows[0]["seconds"], classes)
    ranks = {"image": M.retrieval_ranks(f["clip_gen"], f["clip_gt"]),
             "text_gen": M.text_ranks(f["clip_gen"], f["text"], class_idx),
             "text_gt": M.text_ranks(f["clip_gt"], f["text"], class_idx)}
    overall = metrics_of(f, np.arange(len(rows)), cfg, ranks, len(classes))
    is_gen = M.inception_score(f["logits_gen"], cfg.score.is_splits, cfg.score.is_min_per_split)
    overall["IS"] = _value(is_gen, "is")
    overall["details"]["is"] = is_gen if isinstance(is_gen, dict) else None
    result = {"name": name, "benchmark": rows[0]["benchmark"], "clips": len(clips), "scored": len(rows),
              "retrieval_pool": len(rows), "classes": len(classes), "seconds": rows[0]["seconds"],
              "text_template": cfg.score.text_template, "cs_clipped": cfg.score.cs_clipped,
              "overall": overall, "ground_truth": ground_truth_of(f, cfg, ranks, len(classes)),
              "per_class": {lab: metrics_of(f, np.flatnonzero(labels == lab), cfg, ranks, len(classes)) for lab in classes}}
    out = Path(out)
    atomic_write(out / "scores.json", json.dumps(jsonable(result), indent=1))
    published = data_file(cfg.published) if cfg.published else None
    atomic_write(out / "scores.md", compose([jsonable(result)], published) + "\n" + per_class_markdown(jsonable(result)))
    return result
