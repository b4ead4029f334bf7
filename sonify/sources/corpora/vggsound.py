"""VGGSound's `vggsound.csv`: no header, one line per clip `ytid,start,label,split`.

The official clips are named `<ytid>_<start:06d>` (start in whole seconds), which `clip_name` builds.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv


def read_csv(path: str | Path) -> pa.Table:
    """The list as a table: ytid (str), start (int seconds), label (str), split (str)."""
    names = ["ytid", "start", "label", "split"]
    types = {"ytid": pa.string(), "start": pa.int64(), "label": pa.string(), "split": pa.string()}
    return pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                          convert_options=pacsv.ConvertOptions(column_types=types))


def clip_name(ytid: str, start: int) -> str:
    """The file stem VGGSound's released clips use."""
    return f"{ytid}_{int(start):06d}"
