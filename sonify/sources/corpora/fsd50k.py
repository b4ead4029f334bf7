"""FSD50K's ground truth: `FSD50K.ground_truth/{dev,eval,vocabulary}.csv`.

`dev.csv` is `fname,labels,mids,split` (split: train | val), `eval.csv` is `fname,labels,mids`; the
labels of a clip are joined by commas inside one quoted field. `vocabulary.csv` has no header:
`index,label,mid`. Per-clip licences live in `FSD50K.metadata/{dev,eval}_clips_info_FSD50K.json`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


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
