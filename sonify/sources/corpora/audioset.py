"""AudioSet balanced train (Gemmeke et al., 2017): 10 s YouTube segments with labels from the AudioSet ontology.

Source: https://research.google.com/audioset/download.html (`balanced_train_segments.csv`) and
https://github.com/audioset/ontology (`ontology.json`; `class_labels_indices.csv` also works).
Google does not distribute the audio: the user downloads each segment (e.g. with yt-dlp) into any
folder under the root, named `<YTID>_<start>.wav` (start in seconds, milliseconds or `%.3f`), or `<YTID>.wav`.
Licence: the labels are CC BY 4.0; the audio belongs to its YouTube uploaders (YouTube's terms apply):
fine for research, do not redistribute the clips. Segments not downloaded are `not_found` rows.

Layout: AudioSet's segment lists (`balanced_train_segments.csv` and siblings) and its ontology.

The segment CSVs start with `#` comment lines (the last names the columns), then lines like
`--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`: a space after each comma and the label ids
joined by commas inside one quoted field. Label names come from `ontology.json` (a list of
`{id, name, ...}`) or from `class_labels_indices.csv` (`index,mid,display_name`).

The layout parsing decodes no media; `prepare` is the recipe (`sonify.sources.recipes.run_recipe`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sonify.sources.recipes import RecipeError, audio_by_stem, missing, require, row


def read_segments(path: str | Path) -> list[dict]:
    """Rows of a segment CSV: ytid, start (s), end (s), mids (list of label ids)."""
    rows = []
    with open(path, newline="") as f:
        lines = (ln for ln in f if ln.strip() and not ln.lstrip().startswith("#"))
        for rec in csv.reader(lines, skipinitialspace=True):
            ytid, start, end, mids = rec[0], float(rec[1]), float(rec[2]), rec[3] if len(rec) > 3 else ""
            rows.append({"ytid": ytid, "start": start, "end": end, "mids": [m for m in mids.split(",") if m]})
    return rows


def read_label_names(root: str | Path) -> dict[str, str]:
    """Label id -> display name, from `ontology.json` or `class_labels_indices.csv` under `root`."""
    root = Path(root)
    onto = root / "ontology.json"
    if onto.is_file():
        return {e["id"]: e["name"] for e in json.loads(onto.read_text())}
    idx = root / "class_labels_indices.csv"
    if idx.is_file():
        with open(idx, newline="") as f:
            return {r["mid"]: r["display_name"] for r in csv.DictReader(f)}
    raise FileNotFoundError(f"{root}: neither ontology.json nor class_labels_indices.csv (the label names)")


def clip_stems(ytid: str, start: float) -> list[str]:
    """File stems downloaders use for one segment: `<ytid>_<start s>`, `_<start ms>`, `_<start .3f>`, `<ytid>`."""
    return [f"{ytid}_{int(start)}", f"{ytid}_{int(round(start * 1000))}", f"{ytid}_{start:.3f}", ytid]


LICENSE = "labels CC BY 4.0; audio: YouTube uploaders' terms"
SEGMENTS = "balanced_train_segments.csv"


def prepare(root: Path) -> list[dict]:
    segments = read_segments(require(root / SEGMENTS, "AudioSet's segment list"))
    try:
        names = read_label_names(root)
    except FileNotFoundError as e:
        raise RecipeError(str(e)) from None
    files = audio_by_stem(root)
    rows = []
    for s in segments:
        item = f"{s['ytid']}_{int(s['start'])}"
        labels = [names.get(m, m) for m in s["mids"]]
        rel = next((files[st] for st in clip_stems(s["ytid"], s["start"]) if st in files), None)
        if rel is None:
            rows.append(missing(f"{item}.wav", item, "segment not downloaded", labels=labels, split="balanced_train", license=LICENSE))
        else:
            rows.append(row(rel, item, labels, "balanced_train", LICENSE))
    return rows
