"""VGGSound (Chen et al., 2020): 200k 10 s YouTube clips, 309 classes, one label each.

Source: https://www.robots.ox.ac.uk/~vgg/data/vggsound/ (`vggsound.csv`; the clips are downloaded
by the user and named `<ytid>_<start:06d>`). sonify reads audio files: extract the audio of the
`.mp4` clips first (e.g. `ffmpeg -i x.mp4 -vn x.flac`); a clip present only as video is a
`not_found` row that says so. Licence: the annotations are CC BY 4.0; the clips belong to their
YouTube uploaders (research use, no redistribution).
"""

from __future__ import annotations

from pathlib import Path

from sonify.sources import walk_files
from sonify.sources.corpora.vggsound import clip_name, read_csv
from sonify.sources.recipes import audio_by_stem, missing, require, row

LICENSE = "annotations CC BY 4.0; clips: YouTube uploaders' terms"


def prepare(root: Path) -> list[dict]:
    table = read_csv(require(root / "vggsound.csv", "VGGSound's clip list"))
    files = audio_by_stem(root)
    videos = {p.stem for p, problem in walk_files(root, [".mp4"]) if problem is None}
    rows = []
    for r in table.to_pylist():
        item = clip_name(r["ytid"], r["start"])
        if item in files:
            rows.append(row(files[item], item, [r["label"]], r["split"], LICENSE))
        else:
            why = "only the video is here; extract its audio" if item in videos else "clip not downloaded"
            rows.append(missing(f"{item}.flac", item, why, labels=[r["label"]], split=r["split"], license=LICENSE))
    return rows
