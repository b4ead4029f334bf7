"""`python -m sonify.bench mix`: mixtures per second per core against a bare decode-and-sum loop.

Three-component 5 s mixtures at 16 kHz from source files at mixed rates (16, 22.05, 44.1, 48 kHz),
one process, same components, same run:
  stage     MixStage on work rows: decode + resample each chunk, measure BS.1770-4 loudness,
            keyed target and gain, sum, peak guard, final loudness, 24-bit FLAC written, hashes
            (outputs are removed between repeats, outside the timer: a run writes new files)
  baseline  decode + resample each chunk (`load_chunk`) and sum them, nothing else
Target: stage/baseline <= 1.6.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from sonify.bench.common import bench_args, best_of, demo_config, peak_rss_mib


def main(argv=None) -> None:
    a = bench_args("mix", __doc__, argv, mixtures=200, files=16, repeats=3)

    from sonify.bench.audio import make_corpus
    from sonify.media.audio import load_chunk
    from sonify.mixing.render import sum_components
    from sonify.stages.mix import WORK_SCHEMA, MixStage

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        tmp = Path(tmp)
        paths = make_corpus(tmp / "audio", a.files, 30.0)
        import soundfile as sf
        infos = [sf.info(p) for p in paths]
        rng = np.random.default_rng(0)
        rows = []
        for i in range(a.mixtures):
            comps = []
            for k in range(3):
                f = int(rng.integers(a.files))
                sr = infos[f].samplerate
                start = int(rng.integers(0, 5)) * 5 * sr
                comps.append({"concept_index": k, "text": f"sound {k}", "chunk_id": f"c{f}-{start}", "source": "bench",
                              "uri": str(paths[f]), "source_rate": sr, "start_frame": start,
                              "num_frames": 5 * sr, "offset": start / sr, "duration": 5.0, "cosine": 0.5})
            rows.append({"id": f"bench-{i:06d}", "image_id": f"{i:06d}", "variant": "bench", "components": comps})
        work = pa.Table.from_pylist(rows, schema=WORK_SCHEMA)
        cfg = demo_config(tmp / 'runs')
        stage = MixStage(cfg)
        chunk_seconds = float(cfg.stages.audio.chunk_seconds)

        def stage_run():
            out = stage.process_batch(work)["mixes"]
            assert out.num_rows == a.mixtures

        def bare_run():
            for r in rows:
                sum_components([load_chunk(c["uri"], c["start_frame"], c["num_frames"], 16000, chunk_seconds)
                                for c in r["components"]], [0.0, 0.0, 0.0])

        import shutil

        def fresh():  # a first run writes new files; overwriting costs extra on some filesystems
            shutil.rmtree(Path(cfg.run.dir) / "mixes", ignore_errors=True)

        bare_run()
        stage_run()  # warm-up: caches, lazy imports
        t_stage, m_stage = best_of(stage_run, a.repeats, setup=fresh)
        t_bare, m_bare = best_of(bare_run, a.repeats)

    print(f"{a.mixtures} three-component 5 s mixtures at 16 kHz from {a.files} files at 16/22.05/44.1/48 kHz; "
          f"best of {a.repeats}, one process")
    print(f"{'measurement':<62} {'seconds':>8} {'mixtures/s':>11} {'ratio':>6}")
    print(f"{'mix stage (decode, loudness x4, gains, peak guard, FLAC, hashes)':<62} {t_stage:>8.3f} {a.mixtures / t_stage:>11.1f} {t_stage / t_bare:>6.2f}")
    print(f"{'  baseline: decode + resample + sum':<62} {t_bare:>8.3f} {a.mixtures / t_bare:>11.1f} {1.0:>6.2f}")
    print(f"stage/baseline ratio: {t_stage / t_bare:.2f} (target <= 1.6); medians {m_stage:.3f}s vs {m_bare:.3f}s; "
          f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
