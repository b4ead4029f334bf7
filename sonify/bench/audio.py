"""`python -m sonify.bench audio`: chunking throughput of the `audio` stage against bare decode loops.

Measured on one core, in one process, over the same generated files, in the same run. Each headline
ratio is against a bare loop doing the same work with the same primitives, minus the pipeline:
  stage     the audio stage on whole partitions (probe, streamed decode, chunk stats, rows, Parquet write)
  baseline  `sf.info` + `iter_mono_blocks` in chunk-sized blocks + each chunk's peak and RMS (no
            resampling: the stage does not resample either)
  chunks    decoding every chunk on demand at 48 kHz (`load_chunk`, what CLAP embedding does)
  baseline  a bare seek + read + mono + `soxr` resample + zero-pad per chunk
References (not headlines): `sf.read` alone, and whole-file read + resample to 16 / 48 kHz.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from sonify.bench.common import bench_args, best_of_interleaved, demo_config, peak_rss_mib

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
    """Reference: whole-file read + resample (more work than the stage, which never resamples)."""
    for p in paths:
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        soxr.resample(x.mean(axis=1), sr, target_sr, quality="HQ")


def _bare_stage_work(paths: list[Path], chunk_seconds: float) -> None:
    """The stage's work without the pipeline: probe, streamed mono decode in chunk blocks, peak and RMS."""
    from sonify.media.audio import chunk_frames_at, iter_mono_blocks

    for p in paths:
        info = sf.info(p)
        for block in iter_mono_blocks(str(p), chunk_frames_at(info.samplerate, chunk_seconds)):
            float(np.max(np.abs(block)))
            float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))


def _bare_chunks(chunks: list[dict], target_sr: int, chunk_seconds: float) -> None:
    """`load_chunk`'s work without its checks: seek, read, mono, resample, pad, per chunk."""
    n_out = int(round(target_sr * chunk_seconds))
    for c in chunks:
        with sf.SoundFile(c["uri"]) as f:
            sr = f.samplerate
            f.seek(c["start_frame"])
            x = f.read(c["num_frames"], dtype="float32", always_2d=True).mean(axis=1)
        y = soxr.resample(x, sr, target_sr, quality="HQ")
        np.pad(y[:n_out], (0, max(0, n_out - y.size)))


def main(argv=None) -> None:
    a = bench_args("audio", __doc__, argv, files=24, seconds=30.0, repeats=3)

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

        chunk_s = float(cfg.stages.audio.chunk_seconds)
        _bare_stage_work(paths[:2], chunk_s)  # warm caches and lazy imports
        stage_run()
        t = best_of_interleaved({"stage": stage_run, "bare": lambda: _bare_stage_work(paths, chunk_s),
                                 "read": lambda: [sf.read(p, dtype="float32") for p in paths],
                                 "res16": lambda: _bare(paths, 16000)}, a.repeats)

        from sonify.media.audio import load_chunk
        chunks = [{**c, "uri": worker.stage.paths.locate(c)} for c in worker.store.read("audio_chunks").to_pylist()]

        def chunk_run():
            for c in chunks:
                load_chunk(c["uri"], c["start_frame"], c["num_frames"], 48000, chunk_s)

        t.update(best_of_interleaved({"chunks": chunk_run, "bare_chunks": lambda: _bare_chunks(chunks, 48000, chunk_s),
                                      "res48": lambda: _bare(paths, 48000)}, a.repeats))
        t_stage, t_bare, t_read, t_res16 = t["stage"], t["bare"], t["read"], t["res16"]
        t_chunks, t_bare_chunks, t_res48 = t["chunks"], t["bare_chunks"], t["res48"]

    print(f"corpus: {a.files} files x {a.seconds:.0f} s (16/22.05/44.1/48 kHz, mono/stereo, WAV/FLAC), "
          f"{total_audio:.0f} s of audio; best of {a.repeats}, interleaved, one process")
    print(f"{'measurement':<58} {'seconds':>8} {'audio s/s':>10} {'ratio':>7}")
    rows = [
        ("audio stage (probe, decode, chunk stats, rows, Parquet)", t_stage, t_stage / t_bare),
        ("  baseline: sf.info + iter_mono_blocks + peak/RMS", t_bare, 1.0),
        ("  reference: sf.read alone", t_read, t_read / t_bare),
        ("  reference: sf.read + soxr to 16 kHz (resamples)", t_res16, t_res16 / t_bare),
        ("chunk decode on demand at 48 kHz (load_chunk)", t_chunks, t_chunks / t_bare_chunks),
        ("  baseline: seek + read + mono + soxr + pad per chunk", t_bare_chunks, 1.0),
        ("  reference: whole files, sf.read + soxr to 48 kHz", t_res48, t_res48 / t_bare_chunks),
    ]
    for name, t, r in rows:
        print(f"{name:<58} {t:>8.3f} {total_audio / t:>10.0f} {r:>7.2f}")
    print(f"stage/baseline ratio: {t_stage / t_bare:.2f} (target <= 1.3); "
          f"chunks/baseline ratio: {t_chunks / t_bare_chunks:.2f}; "
          f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
