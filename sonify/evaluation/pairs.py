"""`evaluate pairs`: how good are the (image, sound) pairs a run built, under every retrieval mode?

Per mode (`matches` holds the primary mode, `match_ablations` the others): the distributions of the
CLAP concept-chunk cosine and of the score the rule used (SSR for `ssr`), the eligible-set sizes,
chunk reuse (how many images share a chunk), and pool coverage by source (the share of each audio
source's embedded chunks that were ever picked). For the whole run: concept frequency and the
loudness spread of the mixtures (integrated LUFS, per-component targets and applied gains).
Writes `summary.md`, `audit.json` (every figure's data), `modes.parquet` and one PNG per figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from sonify.engine.files import atomic_write
from sonify.engine.store import open_run

TABLES = ("matches", "match_ablations", "audio_chunks", "audio_embeddings", "mixes")
BINS = 20

ALL_MATCHES = """CREATE VIEW all_matches AS
    SELECT mode, image_id, text, chunk_id, cosine, score, n_eligible FROM matches WHERE status = 'ok'
    {ablations}"""

MODES = """
WITH reuse AS (SELECT mode, chunk_id, count(DISTINCT image_id) AS images FROM all_matches GROUP BY ALL)
SELECT m.mode, count(*) AS matches, avg(cosine) AS cosine_mean, quantile_cont(cosine, 0.1) AS cosine_p10,
       median(cosine) AS cosine_median, quantile_cont(cosine, 0.9) AS cosine_p90, avg(score) AS score_mean,
       median(score) AS score_median, avg(n_eligible) AS eligible_mean, median(n_eligible) AS eligible_median,
       min(n_eligible) AS eligible_min, max(n_eligible) AS eligible_max,
       any_value(r.distinct_chunks) AS distinct_chunks, any_value(r.max_images) AS max_images_per_chunk,
       any_value(r.shared) AS chunks_shared_by_images
FROM all_matches m JOIN (SELECT mode, count(*) AS distinct_chunks, max(images) AS max_images,
                                count(*) FILTER (WHERE images > 1) AS shared FROM reuse GROUP BY mode) r USING (mode)
GROUP BY m.mode ORDER BY m.mode"""

COVERAGE = """
WITH pool AS (SELECT c.source, c.id FROM audio_embeddings e JOIN audio_chunks c ON c.id = e.id WHERE e.status = 'ok'),
     totals AS (SELECT source, count(*) AS pool_chunks FROM pool GROUP BY source),
     hits AS (SELECT u.mode, p.source, count(*) AS used_chunks
              FROM (SELECT DISTINCT mode, chunk_id FROM all_matches) u JOIN pool p ON p.id = u.chunk_id GROUP BY ALL)
SELECT m.mode, t.source, coalesce(h.used_chunks, 0) AS used_chunks, t.pool_chunks,
       coalesce(h.used_chunks, 0) / t.pool_chunks AS coverage
FROM (SELECT DISTINCT mode FROM all_matches) m CROSS JOIN totals t LEFT JOIN hits h ON h.mode = m.mode AND h.source = t.source
ORDER BY m.mode, t.source"""


def _connect(run_dir: Path):
    """The run's tables through the store's one reader connection (`open_run`), plus `all_matches`."""
    con = open_run(run_dir, "matches", optional=TABLES[1:])
    present = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
    ablations = ("UNION ALL SELECT mode, image_id, text, chunk_id, cosine, score, n_eligible FROM match_ablations WHERE status = 'ok'"
                 if "match_ablations" in present else "")
    con.execute(ALL_MATCHES.format(ablations=ablations))
    return con, [t for t in TABLES if t in present]


def _rows(con, sql: str) -> list[dict]:
    rel = con.sql(sql)
    return [dict(zip(rel.columns, r)) for r in rel.fetchall()]


def _hist(values: list[float], lo: float, hi: float) -> dict:
    import numpy as np

    counts, edges = np.histogram(np.asarray(values, float), bins=BINS, range=(lo, hi if hi > lo else lo + 1))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def figures(con, present: list[str]) -> dict:
    """The data behind every plot: histograms per mode over shared bins, bar heights."""
    modes = [r["mode"] for r in _rows(con, "SELECT DISTINCT mode FROM all_matches ORDER BY mode")]
    per_mode = {m: _rows(con, f"SELECT cosine, score, n_eligible FROM all_matches WHERE mode = '{m}'") for m in modes}
    out = {}
    for col in ("cosine", "score", "n_eligible"):
        vals = [r[col] for rs in per_mode.values() for r in rs if r[col] is not None]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        out[col] = {m: _hist([r[col] for r in rs if r[col] is not None], lo, hi) for m, rs in per_mode.items()}
    reuse = _rows(con, "SELECT mode, images, count(*) AS chunks FROM (SELECT mode, chunk_id, count(DISTINCT image_id) AS images "
                       "FROM all_matches GROUP BY ALL) GROUP BY ALL ORDER BY mode, images")
    out["images_per_chunk"] = {m: {str(r["images"]): r["chunks"] for r in reuse if r["mode"] == m} for m in modes}
    out["concept_frequency"] = {r["text"]: r["n"] for r in _rows(
        con, "SELECT text, count(*) AS n FROM matches WHERE status = 'ok' GROUP BY text ORDER BY n DESC, text LIMIT 20")}
    if {"audio_chunks", "audio_embeddings"} <= set(present):
        out["coverage"] = {f"{r['mode']}/{r['source']}": r["coverage"] for r in _rows(con, COVERAGE)}
    if "mixes" in present:
        lufs = [r["lufs"] for r in _rows(con, "SELECT lufs FROM mixes WHERE status = 'ok' AND isfinite(lufs)")]
        comp = _rows(con, "SELECT c.target_lufs AS target, c.gain_db AS gain FROM (SELECT unnest(components) AS c FROM mixes "
                          "WHERE status = 'ok') WHERE c.included")
        out["mix_lufs"] = _hist(lufs, min(lufs, default=0), max(lufs, default=1))
        gains = [r["gain"] for r in comp if r["gain"] is not None]
        out["component_gain_db"] = _hist(gains, min(gains, default=0), max(gains, default=1))
    return out


def plot(figs: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
        written.append(out / f"{name}.png")

    for col in ("cosine", "score", "n_eligible"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for mode, h in figs[col].items():
            ax.stairs(h["counts"], h["edges"], label=mode)
        ax.set(xlabel=col, ylabel="matches", title=f"{col} by retrieval mode")
        ax.legend()
        save(fig, col)
    bars = [("images_per_chunk", None), ("concept_frequency", "matches"), ("coverage", "share of pool used")]
    for name, ylabel in bars:
        if name not in figs:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if name == "images_per_chunk":
            for mode, counts in figs[name].items():
                ax.plot([int(k) for k in counts], list(counts.values()), marker="o", label=mode)
            ax.set(xlabel="images sharing a chunk", ylabel="chunks")
            ax.legend()
        else:
            ax.bar(range(len(figs[name])), list(figs[name].values()))
            ax.set_xticks(range(len(figs[name])), list(figs[name]), rotation=60, ha="right", fontsize=7)
            ax.set(ylabel=ylabel)
        ax.set_title(name.replace("_", " "))
        save(fig, name)
    for name in ("mix_lufs", "component_gain_db"):
        if name in figs:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.stairs(figs[name]["counts"], figs[name]["edges"], fill=True)
            ax.set(xlabel=name.replace("_", " "), ylabel="count", title=name.replace("_", " "))
            save(fig, name)
    return written


def _markdown(modes: list[dict], figs: dict) -> str:
    cols = list(modes[0]) if modes else []
    lines = ["# Pair-quality audit", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in modes:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    if "coverage" in figs:
        lines += ["", "Pool coverage by source (share of embedded chunks ever picked):", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in figs["coverage"].items()]
    lines += ["", "Most frequent concepts: " + ", ".join(f"{k} ({v})" for k, v in list(figs["concept_frequency"].items())[:10])]
    if "mix_lufs" in figs:
        lines += ["", f"Mixtures: {sum(figs['mix_lufs']['counts'])} with finite loudness, "
                      f"{figs['mix_lufs']['edges'][0]:.2f} to {figs['mix_lufs']['edges'][-1]:.2f} LUFS"]
    return "\n".join(lines) + "\n"


def audit(run_dir: str | Path, out: str | Path | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    con, present = _connect(run_dir)
    modes = _rows(con, MODES)
    figs = figures(con, present)
    pngs = plot(figs, out)
    md = _markdown(modes, figs)
    atomic_write(out / "summary.md", md)
    atomic_write(out / "audit.json", json.dumps({"modes": modes, "figures": figs}, indent=1, default=float))
    atomic_write(out / "modes.parquet", lambda tmp: pq.write_table(pa.Table.from_pylist(modes), tmp))
    return {"out": out, "modes": modes, "figures": figs, "plots": pngs, "markdown": md}
