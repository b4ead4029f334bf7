"""AudioSet balanced train (Gemmeke et al., 2017): 10 s YouTube segments with labels from the AudioSet ontology.

Source: https://research.google.com/audioset/download.html (`balanced_train_segments.csv`) and
https://github.com/audioset/ontology (`ontology.json`; `class_labels_indices.csv` also works).
Google does not distribute the audio: the user downloads each segment (e.g. with yt-dlp) into any
folder under the root, named `<YTID>_<start>.wav` (start in seconds, milliseconds or `%.3f`), or `<YTID>.wav`.
Licence: the labels are CC BY 4.0; the audio belongs to its YouTube uploaders (YouTube's terms apply):
fine for research, do not redistribute the clips. Segments not downloaded are `not_found` rows.
"""

from __future__ import annotations

from pathlib import Path

from sonify.sources.corpora.audioset import clip_stems, read_label_names, read_segments
from sonify.sources.recipes import RecipeError, audio_by_stem, missing, require, row

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
