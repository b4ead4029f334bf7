"""`python -m sonify.bench audio`: chunking throughput of the `audio` stage against bare decode loops.

Measured on one core, in one process, over the same generated files, in the same run:
  stage     the audio stage on whole partitions (probe, streamed decode, chunk stats, Parquet write)
  baseline  a bare `soundfile.read` + `soxr.resample` (to 16 kHz) loop over the same files
  chunks    decoding every chunk on demand at 48 kHz (`load_chunk`, what CLAP embedding does)
  baseline  the bare read + resample of the whole files at 48 kHz
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from sonify.bench.common import best_of, demo_config, peak_rss_mib

RATES = [(16000, 1, "WAV"), (22050, 2, "FLAC"), (44100, 2, "WAV"), (48000, 1, "FLAC")]


def make_corpus(out: Path, files: int, seconds: float, seed: int = 0) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(files):
        sr, ch, fmt = RATES[i % len(RATES)]
        n = int(sr * seconds)
        x = (0.1 * rng.standard_normal((n, ch))).astype(np.float32)
        p = out / f"f{i:03d}.{fmt.lower()}"
        sf.write(p, x, sr, format=fmt, subtype="PCM_16")
        paths.append(p)
    return paths


def _bare(paths: list[Path], target_sr: int) -> None:
    for p in paths:
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        soxr.resample(x.mean(axis=1), sr, target_sr, quality="HQ")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sonify.bench audio", description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    from omegaconf import OmegaConf

    from sonify.engine.executor import PartitionWorker
    from sonify.stages import get_stage
    from sonify.stages.audio import AudioStage

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        tmp = Path(tmp)
        paths = make_corpus(tmp / "audio", a.files, a.seconds)
        total_audio = a.files * a.seconds
        cfg = demo_config(tmp / 'runs', f"sources.audio=[{{name: bench, kind: folder, path: '{tmp / 'audio'}'}}]",
                           "stages.audio.partition_rows=8", "stages.audio.batch_size=8")
        work = AudioStage.work_list(cfg, None)
        worker = PartitionWorker(get_stage("audio"), OmegaConf.to_container(cfg))

        def stage_run():
            for start in range(0, work.num_rows, 8):
                stats = worker.run_partition(f"bench-{start}", work.slice(start, 8))
                assert not stats["failed"], stats["failed"]

        _bare(paths[:2], 16000)  # warm caches and lazy imports
        stage_run()
        t_stage, m_stage = best_of(stage_run, a.repeats)
        t_bare16, m_bare16 = best_of(lambda: _bare(paths, 16000), a.repeats)
        t_read, _ = best_of(lambda: [sf.read(p, dtype="float32") for p in paths], a.repeats)

        from sonify.media.audio import load_chunk
        chunks = worker.store.read("audio_chunks").to_pylist()

        def chunk_run():
            for c in chunks:
                load_chunk(c["uri"], c["start_frame"], c["num_frames"], 48000, 5.0)

        t_chunks, _ = best_of(chunk_run, a.repeats)
        t_bare48, _ = best_of(lambda: _bare(paths, 48000), a.repeats)

    print(f"corpus: {a.files} files x {a.seconds:.0f} s (16/22.05/44.1/48 kHz, mono/stereo, WAV/FLAC), "
          f"{total_audio:.0f} s of audio; best of {a.repeats}, one core")
    print(f"{'measurement':<44} {'seconds':>8} {'audio s/s':>10} {'ratio':>7}")
    rows = [
        ("audio stage (decode, chunk stats, Parquet)", t_stage, t_stage / t_bare16),
        ("  baseline: sf.read + soxr to 16 kHz", t_bare16, 1.0),
        ("  reference: sf.read alone", t_read, t_read / t_bare16),
        ("chunk decode on demand at 48 kHz (load_chunk)", t_chunks, t_chunks / t_bare48),
        ("  baseline: sf.read + soxr to 48 kHz", t_bare48, 1.0),
    ]
    for name, t, r in rows:
        print(f"{name:<44} {t:>8.3f} {total_audio / t:>10.0f} {r:>7.2f}")
    print(f"stage/baseline ratio: {t_stage / t_bare16:.2f} (target <= 1.3); "
          f"chunks/baseline ratio: {t_chunks / t_bare48:.2f}; median stage {m_stage:.3f}s vs {m_bare16:.3f}s; "
          f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
