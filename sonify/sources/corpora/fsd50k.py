"""FSD50K (Fonseca et al., 2022): 51k Freesound clips labelled with 200 AudioSet classes.

Source: https://zenodo.org/records/4060432 (`FSD50K.ground_truth/`, `FSD50K.dev_audio/`,
`FSD50K.eval_audio/`, `FSD50K.metadata/`). Licence: the dataset is CC BY 4.0; each clip keeps its
Freesound licence (CC0, CC BY, CC BY-NC or Sampling+), recorded per row from
`FSD50K.metadata/*_clips_info_FSD50K.json` when present: check it before commercial use.
Labels not in `vocabulary.csv` are `unknown_label` rows; listed clips without audio are `not_found`.

Layout: FSD50K's ground truth: `FSD50K.ground_truth/{dev,eval,vocabulary}.csv`.

`dev.csv` is `fname,labels,mids,split` (split: train | val), `eval.csv` is `fname,labels,mids`; the
labels of a clip are joined by commas inside one quoted field. `vocabulary.csv` has no header:
`index,label,mid`. Per-clip licences live in `FSD50K.metadata/{dev,eval}_clips_info_FSD50K.json`.

The layout parsing decodes no media; `prepare` is the recipe (`sonify.sources.recipes.run_recipe`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sonify.engine.errors import error_text
from sonify.sources.recipes import missing, require, row


def read_ground_truth(path: str | Path, split: str | None = None) -> list[dict]:
    """Rows: fname (str), labels (list), mids (list), split (the file's column, else `split`)."""
    with open(path, newline="") as f:
        return [{"fname": r["fname"], "labels": [x for x in r["labels"].split(",") if x],
                 "mids": [x for x in r.get("mids", "").split(",") if x], "split": r.get("split") or split}
                for r in csv.DictReader(f)]


def read_vocabulary(path: str | Path) -> dict[str, str]:
    """Label -> mid."""
    with open(path, newline="") as f:
        return {rec[1]: rec[2] for rec in csv.reader(f) if len(rec) >= 3}


def read_clip_licences(path: str | Path) -> dict[str, str]:
    """fname -> licence URL, from a `*_clips_info_FSD50K.json` (empty when the file is absent)."""
    p = Path(path)
    if not p.is_file():
        return {}
    return {str(k): v.get("license", "") for k, v in json.loads(p.read_text()).items()}


LICENSE = "CC BY 4.0 (dataset); per-clip Freesound licence"
PARTS = (("dev", "FSD50K.dev_audio", None), ("eval", "FSD50K.eval_audio", "eval"))


def prepare(root: Path) -> list[dict]:
    gt = root / "FSD50K.ground_truth"
    vocab = read_vocabulary(require(gt / "vocabulary.csv", "FSD50K's label vocabulary"))
    rows = []
    for part, folder, split in PARTS:
        licences = read_clip_licences(root / "FSD50K.metadata" / f"{part}_clips_info_FSD50K.json")
        for r in read_ground_truth(require(gt / f"{part}.csv", f"FSD50K's {part} ground truth"), split):
            rel = f"{folder}/{r['fname']}.wav"
            lic = licences.get(r["fname"]) or LICENSE
            unknown = [x for x in r["labels"] if x not in vocab]
            if unknown:
                rows.append(row(rel, r["fname"], r["labels"], r["split"], lic,
                                error=error_text("unknown_label", f"{', '.join(unknown)} not in vocabulary.csv")))
            elif not (root / rel).is_file():
                rows.append(missing(rel, r["fname"], "clip listed in the ground truth has no audio file",
                                    labels=r["labels"], split=r["split"], license=lic))
            else:
                rows.append(row(rel, r["fname"], r["labels"], r["split"], lic))
    return rows
