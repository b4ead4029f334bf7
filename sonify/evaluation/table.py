"""Scores as the paper prints them: Table 1 (benchmarks as column groups of FID / IIS / AIS) with the published
rows above the user's, then the peers' metrics (KID, IS, CS, R@K) in a second table, n in every cell.

Inputs are `scores.json` results (as `score` writes them) and the published CSV (`pipelines/eval/paper_table1.csv`,
its `#` lines naming its source). `python -m sonify.evaluate table <scored folder>...` composes several models.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sonify.engine.errors import ConfigError

TABLE1 = ("FID", "IIS", "AIS")
HIGHER = {"FID": False, "KID": False, "NDB": False, "NDB/k": False}
PAPER_ORDER = ("greatesthits", "landscapes_itw", "vegas", "vggsound")
MARK = "†"
# what every scores.json `overall` holds (older ones lack the peers' metrics)
RESULT_KEYS = ("n", "FID", "IIS", "AIS", "KID", "IS", "CS", "NDB", "NDB/k")


def arrow(metric: str) -> str:
    return " ↓" if not HIGHER.get(metric, True) else " ↑"


def read_published(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows (model, benchmark, FID, IIS, AIS as floats) and the file's `#` source lines."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"published: no file {p} (the paper's Table 1 as CSV: model,benchmark,FID,IIS,AIS)")
    lines = p.read_text().splitlines()
    source = [ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")]
    rows = []
    for i, r in enumerate(csv.DictReader(ln for ln in lines if ln.strip() and not ln.startswith("#"))):
        try:
            rows.append({"model": r["model"], "benchmark": r["benchmark"], **{m: float(r[m]) for m in TABLE1},
                         "printed": {m: r[m].strip() for m in TABLE1}})   # as the paper prints them (trailing zeros kept)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"published: {p} row {i + 1} is not model,benchmark,FID,IIS,AIS with numbers") from None
    return rows, source


def read_result(path: str | Path) -> dict:
    """A scored folder's (or file's) `scores.json`; one clear error when it is not there or not a result."""
    p = Path(path)
    p = p / "scores.json" if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"no scores.json at {p}; run `python -m sonify.evaluate score` first")
    try:
        result = json.loads(p.read_text())
        o, gt = result["overall"], result.get("ground_truth", {"n": 0})
        ok = isinstance(result["name"], str) and isinstance(result["benchmark"], str) and isinstance(gt, dict) and "n" in gt
        missing = [k for k in RESULT_KEYS if k not in o]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{p} is not a scores.json written by `python -m sonify.evaluate score`") from None
    if not ok or missing:
        raise ConfigError(f"{p} is not a scores.json written by this `python -m sonify.evaluate score`"
                          + (f" (no {', '.join(missing)}); score it again" if missing else ""))
    return result


def value(v, digits: int = 4) -> str:
    """A number, or the stored `n/a (reason)`."""
    if isinstance(v, dict):
        return v.get("undefined") or "n/a"
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cell(result: dict, metric: str) -> str:
    o = result["overall"]
    text = value(o[metric], {"FID": 2, "IIS": 3, "AIS": 4}.get(metric, 4))
    if metric == "FID" and not isinstance(o[metric], dict) and o.get("details", {}).get("fid_rank_deficient"):
        text += MARK
    return f"{text} (n={o['n']})"


def _peer_cells(scope: dict, ks: list[str], gt: bool = False) -> list[str]:
    d, n = scope.get("details") or {}, scope["n"]
    absent = "n/a (not defined for the ground truth)"
    kid = d.get("kid")
    kid_cell = absent if gt else value(scope["KID"]) + (f" ± {kid['std']:.4f} ({kid['subsets']} × {kid['subset_size']})" if kid else "")
    isd = d.get("is")
    is_cell = value(scope.get("IS")) + (f" ± {isd['std']:.3f} ({isd['splits']} split{'s' if isd['splits'] > 1 else ''})" if isd else "")
    cells = [str(n), kid_cell, is_cell, absent if gt else value(scope["CS"])]
    other_k = "n/a (not computed at this K)"
    cells += [value(scope.get(f"R@{k}", other_k)) for k in ks]
    cells += [absent if gt else value(scope.get(f"R@{k} (image)", other_k)) for k in ks]
    cells += [absent if gt else value(scope[c]) for c in ("NDB", "NDB/k")]
    return cells


def compose(results: list[dict], published: str | Path | None) -> str:
    """The two tables as Markdown; `results` are scores.json dicts, grouped by method name into rows."""
    pub, source = read_published(published) if published else ([], [])
    benches = [b for b in PAPER_ORDER if any(r["benchmark"] == b for r in pub)]
    benches += sorted({r["benchmark"] for r in results} - set(benches))
    names = list(dict.fromkeys(r["name"] for r in results))
    pairs = [(r["name"], r["benchmark"]) for r in results]
    twice = sorted({p for p in pairs if pairs.count(p) > 1})
    if twice:   # one cell per (method, benchmark): a second result would silently replace the first
        raise ConfigError(f"two scored results for {twice[0][0]!r} on {twice[0][1]}; score each model under its own --name")
    dims = sorted({r["overall"].get("details", {}).get("fid_dim") for r in results} - {None})
    head = ["method", *[f"{b} {m}{arrow(m)}" for b in benches for m in TABLE1]]
    lines = ["# Table 1: " + ", ".join(names) + " beside the published rows", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in dict.fromkeys(r["model"] for r in pub):
        got = {(r["benchmark"]): r for r in pub if r["model"] == model}
        cells = [got[b]["printed"][m] if b in got else "n/a (not in the paper)" for b in benches for m in TABLE1]
        lines.append("| " + " | ".join([f"{model} (published)", *cells]) + " |")
    for name in names:
        mine = {r["benchmark"]: r for r in results if r["name"] == name}
        cells = [_cell(mine[b], m) if b in mine else "n/a (not scored)" for b in benches for m in TABLE1]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines += [""]
    if source:
        lines += [f"Published rows: {' '.join(source)} The paper gives n only for VGGSound (~1K); its other n are not stated.", ""]
    lines += [f"{MARK} FID with n <= d (d = {', '.join(map(str, dims)) or 2048}, the Inception feature size): the covariance "
              "is rank-deficient, so the value is exact for the sample but comparable only at equal n.", ""]
    if not results:
        return "\n".join(lines) + "\n"
    ks = sorted({k[2:] for r in results for k in r["overall"] if k.startswith("R@") and "(" not in k}, key=int)
    clipped = any(r.get("cs_clipped") for r in results)
    cols = ["method", "benchmark", "n", "KID ↓", "IS ↑", ("CS (clipped, max(cos, 0))" if clipped else "CS") + " ↑",
            *[f"R@{k} ↑" for k in ks], *[f"R@{k} (image) ↑" for k in ks], "NDB ↓", "NDB/k ↓"]
    lines += ["## The peers' metrics", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join([r["name"], r["benchmark"], *_peer_cells(r["overall"], ks)]) + " |")
    seen = set()
    for r in results:
        if "ground_truth" in r and r["benchmark"] not in seen:
            seen.add(r["benchmark"])
            lines.append("| " + " | ".join(["ground truth (upper bound)", r["benchmark"], *_peer_cells(r["ground_truth"], ks, gt=True)]) + " |")
    lines += ["", "R@K: Sound2Scene's image-to-text retrieval, each image ranking the set's class names (CLIP text of "
              f"`{results[0].get('text_template', '{}')}`); n/a where the set has K classes or fewer. R@K (image): this "
              "project's addition, each generated image ranking the set's ground-truth images. "
              + "; ".join(f"{r['name']} on {r['benchmark']}: {r['scored']} of {r['clips']} clips scored, {r.get('classes', '?')} classes"
                          for r in results) + "."]
    return "\n".join(lines) + "\n"


def per_class_markdown(result: dict) -> str:
    first = next(iter(result["per_class"].values()), {})
    cols = [c for c in first if c not in ("n", "details")]
    lines = [f"## {result['name']} on {result['benchmark']}, per class", "",
             "| " + " | ".join(["class", "n", *[c + arrow(c.split(" ")[0]) for c in cols]]) + " |", "|" + "---|" * (len(cols) + 2)]
    for lab, m in result["per_class"].items():
        marked = (m.get("details") or {}).get("fid_rank_deficient")
        cells = [value(m[c]) + (MARK if c == "FID" and marked and not isinstance(m[c], dict) else "") for c in cols]
        lines.append("| " + " | ".join([lab.replace("|", "/"), str(m["n"]), *cells]) + " |")
    return "\n".join(lines) + "\n"
