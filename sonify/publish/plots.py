"""The report's plots, drawn with matplotlib (Agg, PNG): one function per question about the run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    return plt, fig, ax


def _save(plt, fig, ax, out: Path, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def histogram(out: Path, series: dict[str, list[float]], title: str, xlabel: str, bins: int = 20) -> bool:
    """Overlaid histograms of the finite values of each series; False when there is nothing to draw."""
    series = {k: [v for v in vs if v is not None and np.isfinite(v)] for k, vs in series.items()}
    series = {k: vs for k, vs in series.items() if vs}
    if not series:
        return False
    plt, fig, ax = _figure()
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for label, values in series.items():
        ax.hist(values, bins=edges, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.legend(fontsize=8)
    _save(plt, fig, ax, out, title, xlabel, "count")
    return True


def bars(out: Path, counts: dict[str, float], title: str, xlabel: str, top: int = 20, by_value: bool = True) -> bool:
    """Horizontal bars, largest first (or in the given order), at most `top`."""
    items = (sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if by_value else list(counts.items()))[:top]
    if not items:
        return False
    plt, fig, ax = _figure()
    fig.set_size_inches(5.2, max(2.2, 0.28 * len(items) + 1.0))
    labels = [k if len(k) <= 40 else k[:37] + "..." for k, _ in items][::-1]
    ax.barh(labels, [v for _, v in items][::-1], color="#4a7fb5")
    ax.tick_params(axis="y", labelsize=8)
    _save(plt, fig, ax, out, title, xlabel, "")
    return True


def make_plots(run, out_dir: Path) -> list[tuple[str, str]]:
    """Every plot the run's tables allow: (file name, caption) pairs, written under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mixes = run.ok_columns("mixes", ["lufs", "components"])
    comps = [c for cs in mixes.get("components", []) for c in cs]
    matches = run.ok_columns("matches", ["cosine", "score", "threshold", "n_eligible", "chunk_id", "text"])
    chunks = run.ok_columns("audio_chunks", ["id", "source"])
    made = []

    def add(name: str, caption: str, ok: bool) -> None:
        if ok:
            made.append((name, caption))

    add("loudness.png", "Loudness: each component's measured level before its gain, its target, and each mixture",
        histogram(out_dir / "loudness.png", {"component measured": [c["measured_lufs"] for c in comps],
                                             "component target": [c["target_lufs"] for c in comps],
                                             "mixture": mixes.get("lufs", [])}, "Loudness", "LUFS"))
    add("scores.png", "CLAP scores of the chosen chunks and the dynamic thresholds (mean of the top k)",
        histogram(out_dir / "scores.png", {"cosine": matches.get("cosine", []), "score (SSR)": matches.get("score", []),
                                           "threshold": matches.get("threshold", [])}, "CLAP scores and thresholds", "score"))
    add("eligible.png", "Size of the eligible set each chunk was drawn from",
        histogram(out_dir / "eligible.png", {"eligible chunks": matches.get("n_eligible", [])}, "Eligible-set sizes", "chunks above the threshold"))
    chosen = matches.get("chunk_id", [])
    reuse = Counter(Counter(chosen).values())
    add("reuse.png", "Chunk reuse: how many chunks were chosen once, twice, ...",
        bars(out_dir / "reuse.png", {f"chosen {k}x": v for k, v in sorted(reuse.items())}, "Chunk reuse", "chunks", by_value=False))
    add("concepts.png", "The most frequent concepts (CLAP query text)",
        bars(out_dir / "concepts.png", Counter(matches.get("text", [])), "Concept frequency", "concepts"))
    chunk_source = dict(zip(chunks.get("id", []), chunks.get("source", [])))
    pool = Counter(chunk_source.values())
    used = Counter(chunk_source.get(c, "?") for c in chosen)
    add("pool.png", "Pool usage by source: chunks in the pool and chunks chosen",
        bars(out_dir / "pool.png", {**{f"{k}: pool": v for k, v in pool.items()}, **{f"{k}: chosen": v for k, v in used.items()}},
             "Pool usage by source", "chunks"))
    kept = run.rows("kept_images", ["kept", "reason"])
    add("filter.png", "The filter's decisions: kept, and dropped by reason",
        bars(out_dir / "filter.png", Counter("kept" if r["kept"] else (r["reason"] or "?") for r in kept), "Filter reasons", "images"))
    errors: Counter = Counter()
    for name, c in run.counts().items():
        for reason, n in c["errors"].items():
            errors[f"{name}: {reason}"] += n
    add("errors.png", "Error rows by table and reason",
        bars(out_dir / "errors.png", errors, "Errors by reason", "rows"))
    return made

