"""The report's experiments section: each `<run>/experiments/<name>/` that `python -m sonify.experiments`
wrote, shown by its summary.md (bullets, tables, figures) with its figures copied beside the report."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def summary_to_html(text: str, asset_prefix: str) -> str:
    """The small markdown subset the experiments write: a title, bullets, pipe tables, images, paragraphs."""
    out, items, table = [], [], []

    def flush():
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells) + "</table>")
            table.clear()

    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("- "):
            items.append(line[2:])
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        m = IMAGE.match(line)
        if line.startswith("# "):
            out.append(f"<h3>{_inline(line[2:])}</h3>")
        elif m:
            out.append(f"<figure><img src='{asset_prefix}/{html.escape(m.group(2))}' alt='{html.escape(m.group(1))}'></figure>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "".join(out)


def experiments_html(run_dir: Path, out: Path) -> str:
    """Every experiment of the run with a summary.md, its PNG figures copied to `assets/experiments/<name>/`."""
    root = Path(run_dir) / "experiments"
    parts = []
    for folder in sorted(p for p in root.iterdir() if (p / "summary.md").is_file()) if root.is_dir() else []:
        dest = out / "assets" / "experiments" / folder.name
        dest.mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copyfile(png, dest / png.name)
        parts.append(f"<section class='experiment' id='experiment-{html.escape(folder.name)}'>"
                     + summary_to_html((folder / "summary.md").read_text(), f"assets/experiments/{folder.name}") + "</section>")
    if not parts:
        return ""
    return "<h2>Experiments</h2>" + "".join(parts)
