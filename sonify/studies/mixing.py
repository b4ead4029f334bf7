"""`mixing`: semantic mixing (Section 4.5, Fig. 4). N sources from a run's pool, each alone and mixed.

"We randomly select a number of audio excerpts and mix them [...] the generated images show the
semantic concepts of each source combined in one scene." Per trial, N chunks are drawn (at random, or
one per `--query` by Algorithm 1), each normalised to a target drawn from the mix stage's LUFS range and
summed by the project's renderer with its peak guard (exactly as the `mix` stage builds a mixture), and a
checkpoint generates from each source alone and from the mixture, every condition from the same latents.
"""

from __future__ import annotations

from pathlib import Path

NAME = "mixing"


def add_arguments(p) -> None:
    p.add_argument("--sources", type=int, default=2, help="sources per mixture (default 2)")
    p.add_argument("--query", action="append", default=[], help="a text query per source (CLAP + Algorithm 1); none: random")
    p.add_argument("--trials", type=int, default=3, help="mixtures drawn (rows of the grid)")


def render_sources(pool, sources, seed: int, trial: int, rate: int) -> dict:
    """Each source at its keyed target loudness, alone (peak-guarded on its own) and summed (the mix stage's rule)."""
    from sonify.media.loudness import LoudnessMeter
    from sonify.mixing.render import render
    from sonify.studies.sources import measure

    meter, ceiling = LoudnessMeter(rate), float(pool.mix.peak_ceiling_dbfs)
    clips, gains, rows = [], [], []
    for i, s in enumerate(sources):
        x = pool.audio(s.chunk_id, rate)
        target = pool.target_lufs(seed, trial, i)
        measured = measure(meter, x, f"chunk {s.chunk_id}")
        clips.append(x)
        gains.append(target - measured)
        rows.append({"source": i, "chunk_id": s.chunk_id, "query": s.query, "cosine": s.cosine, "threshold": s.threshold,
                     "n_eligible": s.n_eligible, "fallback": s.fallback, "target_lufs": target, "measured_lufs": measured, "gain_db": target - measured})
    alone = [render([x], [g], ceiling_dbfs=ceiling)[0] for x, g in zip(clips, gains)]
    mixture, mix_gain = render(clips, gains, ceiling_dbfs=ceiling)
    return {"clips": clips, "gains": gains, "rows": rows, "alone": alone, "mixture": mixture, "mix_gain_db": mix_gain}


def run(a, run_dir: Path | None) -> Path:
    from sonify.mixing.render import write_flac
    from sonify.studies.common import StudyError, figure_grid, write_summary, write_table
    from sonify.studies.sources import pool_study

    if a.sources < 1 or a.trials < 1:
        raise StudyError("--sources and --trials must be at least 1")
    pool, ckpt, out, images = pool_study(a, run_dir, NAME, {"sources": a.sources, "query": a.query, "trials": a.trials})
    rate, data, cells = 16000, [], []
    for t in range(a.trials):
        r = render_sources(pool, pool.draw(a.sources, a.query, a.seed, t), a.seed, t, rate)
        row_cells = []
        for i, (meta, clip) in enumerate(zip(r["rows"], r["alone"])):
            write_flac(out / "audio" / f"trial{t}_source{i}.flac", clip, rate)
            paths = images.make(clip, out / "images", f"trial{t}_source{i}")
            data.append({"trial": t, "role": f"source{i}", **meta, "mix_gain_db": None,
                         "audio": f"audio/trial{t}_source{i}.flac", "images": [str(Path(p).relative_to(out)) for p in paths]})
            row_cells.append(paths[0])
        write_flac(out / "audio" / f"trial{t}_mix.flac", r["mixture"], rate)
        paths = images.make(r["mixture"], out / "images", f"trial{t}_mix")
        data.append({"trial": t, "role": "mix", "source": None, "chunk_id": ",".join(m["chunk_id"] for m in r["rows"]),
                     "query": None, "cosine": None, "threshold": None, "n_eligible": None, "fallback": None, "target_lufs": None,
                     "measured_lufs": None, "gain_db": None, "mix_gain_db": r["mix_gain_db"],
                     "audio": f"audio/trial{t}_mix.flac", "images": [str(Path(p).relative_to(out)) for p in paths]})
        cells.append(row_cells + [paths[0]])
    write_table(data, out / "data.parquet")
    labels = [f"source {i + 1}" + (f": {a.query[i]}" if a.query else "") for i in range(a.sources)] + ["mixture"]
    figure_grid(out / "figure.png", cells, [f"trial {t}" for t in range(a.trials)], labels, "Semantic mixing (cf. Fig. 4)")
    write_summary(out / "summary.md", "Semantic mixing (Section 4.5, Fig. 4)", [
        f"- run: `{run_dir}`; checkpoint: `{ckpt}`; seed {a.seed}",
        f"- {a.trials} trials of {a.sources} sources " + (f"by query ({', '.join(a.query)}; CLAP + Algorithm 1, "
                                                             f"k = {pool.cfg.stages.retrieve.k})" if a.query else "drawn at random from the pool"),
        f"- each source normalised to a target in [{pool.mix.lufs_min}, {pool.mix.lufs_max}] LUFS (the mix stage's rule), summed, "
        f"peak ceiling {pool.mix.peak_ceiling_dbfs} dBFS",
        f"- {a.num_images} images per condition, {a.steps} DPM-Solver steps, guidance {a.guidance}; every condition from the same latents",
        *([f"- Algorithm 1 found no chunk strictly above its threshold for: "
           f"{', '.join(sorted({r['query'] for r in data if r.get('fallback')}))} (a chunk tied at the maximum was used)"]
          if any(r.get("fallback") for r in data) else []),
        "- the paper separates real mixtures into sources first; pool isolates stand in for that here",
        "", "![grid](figure.png)", "", "Data: `data.parquet` (one row per source and per mixture)."])
    return out

