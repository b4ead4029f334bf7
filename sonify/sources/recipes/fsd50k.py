"""FSD50K (Fonseca et al., 2022): 51k Freesound clips labelled with 200 AudioSet classes.

Source: https://zenodo.org/records/4060432 (`FSD50K.ground_truth/`, `FSD50K.dev_audio/`,
`FSD50K.eval_audio/`, `FSD50K.metadata/`). Licence: the dataset is CC BY 4.0; each clip keeps its
Freesound licence (CC0, CC BY, CC BY-NC or Sampling+), recorded per row from
`FSD50K.metadata/*_clips_info_FSD50K.json` when present: check it before commercial use.
Labels not in `vocabulary.csv` are `unknown_label` rows; listed clips without audio are `not_found`.
"""

from __future__ import annotations

from pathlib import Path

from sonify.engine.errors import error_text
from sonify.sources.corpora.fsd50k import read_clip_licences, read_ground_truth, read_vocabulary
from sonify.sources.recipes import missing, require, row

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
