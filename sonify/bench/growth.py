"""How much work +1% of images and then +1% of audio cost: the fraction of each stage's rows recomputed.

    python -m sonify.bench growth [--images 300] [--audio-files 100]

A full run of every stage (local executor, tiny models, concepts imported), then 1% more images
(with their concepts), then 1% more audio files. Partitions are kept when their rows are unchanged,
so new rows land in new partitions: work proportional to the growth. Retrieval and what follows
recompute in full when the pool grows, because Algorithm 1's thresholds depend on the whole pool.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from sonify.bench.common import bench_args, demo_config
from sonify.stages import STAGES as REGISTRY

STAGES = tuple(REGISTRY)
TARGET = 0.02


def run_all(cfg) -> dict:
    from sonify.engine.executor import run_stage
    from sonify.stages import get_stage

    out = {}
    for name in STAGES:
        run = run_stage(get_stage(name), cfg, progress_bar=False)
        assert not run.failed, (name, run.failed)
        out[name] = run
    return out


def main(argv=None) -> None:
    a = bench_args("growth", __doc__, argv, images=300, audio_files=100, partition_rows=16)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sonify.bench.audio import make_corpus
    from sonify.sources.demo import ensure_demo_data

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        tmp = Path(tmp)
        data = ensure_demo_data(tmp / "data", num_images=a.images, seed=0)
        make_corpus(data / "audio" / "pool", a.audio_files, 10.0)
        parts = [f"stages.{s}.partition_rows={a.partition_rows}" for s in
                 ("images", "audio", "concepts", "filter", "embed", "retrieve", "mix", "features", "latents")]
        cfg = demo_config(tmp / "runs", f"demo_data.dir={data}", "demo_data.enabled=false", "run.progress=false",
                          "models.vlms=[]", f"models.tiny_dir={tmp / 'tiny'}", "stages.shards.samples_per_shard=64",
                          "stages.shards.include_jpg=false", "stages.shards.include_flac=false", *parts)
        t0 = time.perf_counter()
        first = run_all(cfg)
        t_full = time.perf_counter() - t0

        # +1% images, spread over the id space like any new hashed ids, each with imported concepts
        extra = max(1, round(a.images / 100))
        imports = pq.read_table(data / "concepts_import.parquet").to_pylist()
        for n in range(extra):
            src = next(r for r in imports if r["relpath"] == f"scene_{n:03d}.{'png' if n % 3 == 0 else 'jpg'}")
            new = f"grown_{n:03d}{Path(src['relpath']).suffix}"
            shutil.copy(data / "images" / src["relpath"], data / "images" / new)
            imports.append({**src, "relpath": new})
        pq.write_table(pa.Table.from_pylist(imports), data / "concepts_import.parquet")
        t0 = time.perf_counter()
        grown_images = run_all(cfg)
        t_images = time.perf_counter() - t0

        # +1% audio files
        extra_audio = max(1, round(a.audio_files / 100))
        make_corpus(data / "audio" / "grown", extra_audio, 10.0, seed=1)
        t0 = time.perf_counter()
        grown_audio = run_all(cfg)
        t_audio = time.perf_counter() - t0

    print(f"{a.images} images ({first['images'].rows_in} rows with the odd files), {first['audio'].rows_in} audio files, "
          f"partition_rows={a.partition_rows}; full run {t_full:.0f}s, +{extra} images {t_images:.0f}s, "
          f"+{extra_audio} audio files {t_audio:.0f}s")
    print(f"{'stage':<12} {'rows':>7} {'+1% images: recomputed':>24} {'+1% audio: recomputed':>23}")
    verdicts = []
    for name in STAGES:
        total_i, total_a = grown_images[name].rows_in, grown_audio[name].rows_in
        fi = grown_images[name].rows_computed / max(1, total_i)
        fa = grown_audio[name].rows_computed / max(1, total_a)
        print(f"{name:<12} {total_a:>7} {grown_images[name].rows_computed:>8} = {fi:>6.1%}      "
              f"{grown_audio[name].rows_computed:>8} = {fa:>6.1%}")
        if name not in ("shards",) and fi > TARGET:
            verdicts.append(f"+1% images recomputed {fi:.1%} of {name} (target <= {TARGET:.0%})")
        if name in ("audio", "embed_audio") and fa > TARGET:
            verdicts.append(f"+1% audio recomputed {fa:.1%} of {name} (target <= {TARGET:.0%})")
    if grown_images["embed_audio"].rows_computed:
        verdicts.append("adding images re-embedded audio")
    print("targets: " + ("met" if not verdicts else "MISSED: " + "; ".join(verdicts)))
    print("retrieve and what follows recompute in full after +audio: Algorithm 1's thresholds depend on the whole pool "
          "(mix then re-renders only the variants whose matches changed)")
