"""VGGSound (Chen et al., 2020): 200k 10 s YouTube clips, 309 classes, one label each.

Source: https://www.robots.ox.ac.uk/~vgg/data/vggsound/ (`vggsound.csv`; the clips are downloaded
by the user and named `<ytid>_<start:06d>`). sonify reads audio files: extract the audio of the
`.mp4` clips first (e.g. `ffmpeg -i x.mp4 -vn x.flac`); a clip present only as video is a
`not_found` row that says so. Licence: the annotations are CC BY 4.0; the clips belong to their
YouTube uploaders (research use, no redistribution).

Layout: VGGSound (Chen et al., ICASSP 2020): ~200K 10 s YouTube clips in 309 classes.

Public layout: a headerless `vggsound.csv` with one row per clip,
`YouTube ID,start seconds,label,train|test` (labels may hold commas and are then quoted), and the
released clips named `<ytid>_<start:06d>.mp4` (the Hugging Face copy puts them in `video/`, in
tarballs `vggsound_NN.tar.gz`). A clip is the 10 s from `start`; nothing else needs choosing.

The layout parsing decodes no media; `prepare` is the recipe (`sonify.sources.recipes.run_recipe`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sonify.sources import walk_files
from sonify.sources.recipes import audio_by_stem, missing, require, row


SCHEMA = pa.schema([("ytid", pa.string()), ("start", pa.int64()), ("label", pa.string()), ("split", pa.string())])
SPLITS = ("train", "test")


def read_csv(path: str | Path) -> pa.Table:
    """The headerless `vggsound.csv` as (ytid, start, label, split); a malformed row fails naming its line."""
    import pyarrow.csv as pacsv

    opts = pacsv.ReadOptions(column_names=["ytid", "start", "label", "split"], autogenerate_column_names=False)
    conv = pacsv.ConvertOptions(column_types={"ytid": pa.string(), "start": pa.string(), "label": pa.string(), "split": pa.string()})
    table = pacsv.read_csv(path, read_options=opts, convert_options=conv)
    starts = []
    for i, (s, split) in enumerate(zip(table["start"].to_pylist(), table["split"].to_pylist())):
        try:
            starts.append(int(float(s)))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {i + 1}: start {s!r} is not a number of seconds") from None
        if split not in SPLITS:
            raise ValueError(f"{path}: line {i + 1}: split {split!r} is not one of {', '.join(SPLITS)}")
    return pa.table([table["ytid"], pa.array(starts, pa.int64()), table["label"], table["split"]], schema=SCHEMA)


def clip_name(ytid: str, start: int) -> str:
    """The released clip's file stem: `<ytid>_<start:06d>`."""
    return f"{ytid}_{int(start):06d}"


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
