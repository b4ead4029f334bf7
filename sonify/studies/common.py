"""What every experiment shares: its folder, its parameters, its table, figure and summary.

An experiment writes into `<run>/experiments/<name>/` (or `--out`): `params.json` (every argument that
shapes its outputs), its data (`data.parquet`), its figure (`figure.png`) and `summary.md`. A rerun with
the same parameters reuses the images already generated (each cell of a grid is its own PNG, written
atomically), so a killed experiment resumes; a rerun with other parameters starts the folder afresh.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from sonify.engine.files import atomic_write


class StudyError(ValueError):
    """A bad argument or a missing input: the command prints its one line and exits non-zero."""


def study_dir(run_dir: Path | None, name: str, out: str | None, params: dict) -> Path:
    """The experiment's folder, emptied when it holds the outputs of other parameters (they would be stale)."""
    if out:
        d = Path(out)
    elif run_dir is not None:
        d = Path(run_dir) / "experiments" / name
    else:
        raise StudyError(f"{name}: give run=<run dir> or --out DIR")
    saved = d / "params.json"
    text = json.dumps(params, sort_keys=True, indent=1, default=str)
    if saved.is_file() and saved.read_text() != text:
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(saved, text.encode())
    return d


def listing(*paths) -> str:
    """A fingerprint of the files under `paths` (name, size, mtime): an experiment that recomputes from its inputs
    keys its folder by it, so a rerun on unchanged inputs is done at once and one on changed inputs starts afresh."""
    import hashlib

    h = hashlib.sha256()
    for root in paths:
        if root is None or not Path(root).exists():
            continue
        files = [Path(root)] if Path(root).is_file() else sorted(p for p in Path(root).rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def finished(folder: Path) -> bool:
    """summary.md is written last: with the same parameters (study_dir empties the folder otherwise) it is done."""
    return (folder / "summary.md").is_file()


def add_generation_arguments(p, checkpoint: bool = True) -> None:
    """The arguments of every experiment that generates images (with a checkpoint it is given, or trains)."""
    if checkpoint:
        p.add_argument("--checkpoint", help="a training output_dir or checkpoint-N folder (default <run>/dit)")
    p.add_argument("--num-images", type=int, default=2, help="images per condition")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver steps")
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--device", default="auto")


def generation_params(a) -> dict:
    return {"num_images": a.num_images, "steps": a.steps, "guidance": a.guidance, "seed": a.seed}


def write_table(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    atomic_write(path, buf.getvalue().to_pybytes())
    return path


def write_summary(path: Path, title: str, lines: list[str]) -> Path:
    atomic_write(path, ("# " + title + "\n\n" + "\n".join(lines) + "\n").encode())
    return path


def figure_grid(path: Path, cells: list[list[str | None]], row_labels: list[str], col_labels: list[str], title: str) -> Path:
    """A matplotlib grid of image files (rows x columns), labelled: the figures of Sections 4.5 and A.6."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows, cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 0.6, 1.9 * rows + 0.6), dpi=100, squeeze=False)
    for i, row in enumerate(cells):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row) and row[j]:
                ax.imshow(np.asarray(Image.open(row[j]).convert("RGB")))
            if i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def line_plot(path: Path, x: list[float], series: dict[str, list[float]], title: str, xlabel: str, ylabel: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=100)
    for label, ys in series.items():
        ax.plot(x, ys, marker="o", label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    """The figure as a PNG, written atomically."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
