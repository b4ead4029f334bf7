"""`loudness`: loudness interpolation between two sources (Section 4.5, Fig. 5).

"We fix the loudness of one source and vary the other's": source A stays at the reference loudness
(the middle of the mix stage's LUFS range), source B is set to reference + g for each g of the sweep
(default -18..+18 dB in 7 steps), and the two are summed by the project's renderer. The peak guard
applies one gain to the whole sweep (the one the loudest step needs), so A is at the same level in every
step. With `--constant-loudness` the summed mixture is then brought back to the reference loudness, so only
the balance moves, not the level. Each step writes its two components as heard in the mixture (float
WAV, after the mix gain) and the mixture (24-bit FLAC), and a checkpoint generates from every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "loudness"


def add_arguments(p) -> None:
    p.add_argument("--query", action="append", default=[], help="two text queries (A fixed, B swept); none: two random chunks")
    p.add_argument("--range-db", type=float, default=18.0, help="B's gain runs from -X to +X dB relative to A (default 18)")
    p.add_argument("--points", type=int, default=7, help="steps of the sweep (default 7)")
    p.add_argument("--constant-loudness", action="store_true", help="renormalise each mixture to the reference loudness")


def sweep(range_db: float, points: int) -> list[float]:
    return [float(g) for g in np.linspace(-range_db, range_db, points)] if points > 1 else [0.0]


def run(a, run_dir: Path | None) -> Path:
    import soundfile as sf

    from sonify.media.loudness import LoudnessMeter
    from sonify.mixing.render import peak_guard_db, render, sum_components, write_flac
    from sonify.studies.common import StudyError, figure_grid, line_plot, write_summary, write_table
    from sonify.studies.sources import measure, pool_study

    if a.points < 1 or a.range_db < 0:
        raise StudyError("--points must be at least 1 and --range-db at least 0")
    pool, ckpt, out, images = pool_study(a, run_dir, NAME, {"query": a.query, "range_db": a.range_db, "points": a.points,
                                                           "constant_loudness": a.constant_loudness})
    rate, ceiling = 16000, float(pool.mix.peak_ceiling_dbfs)
    meter = LoudnessMeter(rate)
    reference = (float(pool.mix.lufs_min) + float(pool.mix.lufs_max)) / 2
    src = pool.draw(2, a.query, a.seed, 0)
    x = [pool.audio(s.chunk_id, rate) for s in src]
    measured = [measure(meter, c, f"chunk {s.chunk_id}") for c, s in zip(x, src)]
    data, cells, steps = [], [], []
    for g in sweep(a.range_db, a.points):
        gains = [reference - measured[0], reference + g - measured[1]]
        if a.constant_loudness:   # the sum at the reference: both components moved by the same amount
            level = measure(meter, render(x, gains, mix_gain_db=0.0)[0], "the mixture")
            gains = [gi + reference - level for gi in gains]
        steps.append((g, gains))
    # one peak-guard gain for the whole sweep (the loudest step's): a per-step guard would move A between steps
    mix_gain = min(peak_guard_db(sum_components(x, gains), ceiling) for _, gains in steps)
    for step, (g, gains) in enumerate(steps):
        mixture, _ = render(x, gains, mix_gain_db=mix_gain)
        folder = out / "audio" / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, c, gi in (("a", x[0], gains[0]), ("b", x[1], gains[1])):
            sf.write(folder / f"{name}.wav", render([c], [gi], mix_gain_db=mix_gain)[0], rate, subtype="DOUBLE")
        write_flac(folder / "mix.flac", mixture, rate)
        paths = images.make(mixture, out / "images", f"step{step}")
        data.append({"step": step, "relative_gain_db": g, "chunk_a": src[0].chunk_id, "chunk_b": src[1].chunk_id,
                     "query_a": src[0].query, "query_b": src[1].query, "gain_a_db": gains[0], "gain_b_db": gains[1],
                     "mix_gain_db": mix_gain, "mix_lufs": float(meter.integrated(mixture)),
                     "audio": f"audio/step{step}/mix.flac", "images": [str(Path(p).relative_to(out)) for p in paths]})
        cells.append(paths)
    write_table(data, out / "data.parquet")
    grid = [list(col) for col in zip(*cells)]        # columns: the sweep; rows: images
    figure_grid(out / "figure.png", grid, [f"image {j}" for j in range(a.num_images)],
                [f"B {d['relative_gain_db']:+.0f} dB" for d in data], "Loudness interpolation (cf. Fig. 5)")
    line_plot(out / "levels.png", [d["relative_gain_db"] for d in data], {"mixture LUFS": [d["mix_lufs"] for d in data]},
              "Mixture loudness over the sweep", "B relative to A (dB)", "LUFS")
    names = [s.query or s.chunk_id for s in src]
    write_summary(out / "summary.md", "Loudness interpolation (Section 4.5, Fig. 5)", [
        f"- run: `{run_dir}`; checkpoint: `{ckpt}`; seed {a.seed}",
        f"- A = {names[0]} fixed at {reference:.1f} LUFS (middle of the mix stage's range); B = {names[1]} at A "
        f"{', '.join(format(d['relative_gain_db'], '+.0f') for d in data)} dB",
        f"- mixture: {'renormalised to the reference loudness' if a.constant_loudness else 'the plain sum'}, "
        f"peak ceiling {ceiling} dBFS",
        f"- peak guard: one gain for the whole sweep, {mix_gain:+.2f} dB (what the loudest step needs), so "
        + (f"every mixture measures {reference + mix_gain:.1f} LUFS" if a.constant_loudness
           else f"A sounds at {reference + mix_gain:.1f} LUFS in every step"),
        f"- {a.num_images} images per step from the same latents, {a.steps} steps, guidance {a.guidance}",
        "", "![grid](figure.png)", "", "![levels](levels.png)", "",
        "Data: `data.parquet`; each step's components as heard (`audio/stepN/a.wav`, `b.wav`) and mixture (`mix.flac`)."])
    return out
