"""`sequence`: the same sources superposed vs one after the other (Section 4.5, Fig. 6).

Per trial, N sources are drawn (as in `mixing`) and normalised by the mix stage's rule; a checkpoint
generates from their sum and from their sequence. The sequence is N slots of the chunk length, each
encoded by the AST at the length it was trained on and the token sequences concatenated in time (the
rule of `generate --sequential`), so any N works, whatever the AST's maximum input length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "sequence"


def add_arguments(p) -> None:
    p.add_argument("--sources", type=int, default=2, help="sources per trial (default 2)")
    p.add_argument("--query", action="append", default=[], help="a text query per source (CLAP + Algorithm 1); none: random")
    p.add_argument("--trials", type=int, default=3)


def run(a, run_dir: Path | None) -> Path:
    from sonify.mixing.render import render, write_flac
    from sonify.studies.common import StudyError, figure_grid, write_summary, write_table
    from sonify.studies.mixing import render_sources
    from sonify.studies.sources import pool_study

    if a.sources < 2 or a.trials < 1:
        raise StudyError("--sources must be at least 2 (one source has no order) and --trials at least 1")
    pool, ckpt, out, images = pool_study(a, run_dir, NAME, {"sources": a.sources, "query": a.query, "trials": a.trials})
    rate, data, cells = 16000, [], []
    n = int(round(rate * pool.chunk_seconds))
    for t in range(a.trials):
        r = render_sources(pool, pool.draw(a.sources, a.query, a.seed, t), a.seed, t, rate)
        # one after another: each source in its own slot, one peak guard over the whole (as `generate --sequential`)
        slotted = [np.pad(c, (i * n, (a.sources - 1 - i) * n)) for i, c in enumerate(r["clips"])]
        sequence, seq_gain = render(slotted, r["gains"], ceiling_dbfs=float(pool.mix.peak_ceiling_dbfs))
        row = []
        for mode, clip, gain in (("superposed", r["mixture"], r["mix_gain_db"]), ("sequential", sequence, seq_gain)):
            write_flac(out / "audio" / f"trial{t}_{mode}.flac", clip, rate)
            paths = images.make(clip, out / "images", f"trial{t}_{mode}")
            slots = len(images.sampler.slots(clip.astype(np.float32)))
            data.append({"trial": t, "mode": mode, "chunk_ids": [m["chunk_id"] for m in r["rows"]],
                         "queries": [m["query"] for m in r["rows"]], "target_lufs": [m["target_lufs"] for m in r["rows"]],
                         "mix_gain_db": gain, "seconds": clip.size / rate, "ast_slots": slots,
                         "audio": f"audio/trial{t}_{mode}.flac", "images": [str(Path(p).relative_to(out)) for p in paths]})
            row += paths
        cells.append(row)
    write_table(data, out / "data.parquet")
    cols = [f"{m} {j}" for m in ("superposed", "sequential") for j in range(a.num_images)]
    figure_grid(out / "figure.png", cells, [f"trial {t}" for t in range(a.trials)], cols, "Superposed vs sequential (cf. Fig. 6)")
    write_summary(out / "summary.md", "Superposed vs sequential sources (Section 4.5, Fig. 6)", [
        f"- run: `{run_dir}`; checkpoint: `{ckpt}`; seed {a.seed}",
        f"- {a.trials} trials of {a.sources} sources " + (f"by query ({', '.join(a.query)})" if a.query else "drawn at random"),
        f"- superposed: the mix stage's sum; sequential: {a.sources} slots of {pool.chunk_seconds:g} s, each encoded by the AST at "
        "its trained length, tokens concatenated in time",
        "- the paper separates real mixtures into sources first; pool isolates stand in for that here",
        "", "![grid](figure.png)", "", "Data: `data.parquet` (one row per trial and mode)."])
    return out
