"""`python -m sonify.bench shards`: shard-writing throughput against a bare loop with the same tar writer.

Samples shaped like the paper's (latent [mean, std] 2 x 4 x 64 x 64 float16 = 64 KiB, AST 49 x 768
float16 = 73.5 KiB, a ~1 KiB json) are written as .npy files as the features and latents stages
leave them. Then, in the same run:
  stage     ShardsStage.process_batch per shard: read the plan rows, read each file, write the tar
            (temp + rename), the per-shard JSON summary and the index rows
  baseline  a bare loop: read the same files, write the same members with the same writer
            (`sonify.media.tar.TarStream`), nothing else: no plan, no temp + rename, no summary, no index
  reference `tarfile` writing the same members (the standard library's writer; not the headline)
Target: stage/baseline <= 1.3.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from sonify.bench.common import bench_args, best_of_interleaved, demo_config, peak_rss_mib
from sonify.media.tar import TarStream


def main(argv=None) -> None:
    a = bench_args("shards", __doc__, argv, samples=2000, samples_per_shard=500, repeats=3,
                   profile=(False, "print a cProfile of one stage run"))

    from sonify.stages.shards import ShardsStage

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        cfg = demo_config(tmp, f"stages.shards.samples_per_shard={a.samples_per_shard}",
                           "stages.shards.include_jpg=false", "stages.shards.include_flac=false")
        run = Path(cfg.run.dir)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(a.samples):
            key = f"{i:016x}_bench"
            lat, ast = f"features/latents/{i}.npy", f"features/ast/{i}.npy"
            for rel, shape in ((lat, (2, 4, 64, 64)), (ast, (49, 768))):
                (run / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(run / rel, rng.standard_normal(shape).astype(np.float16))
            meta = json.dumps({"image_id": f"{i:016x}", "variant": "bench", "components": [{"text": "x" * 40}] * 3, "pad": "y" * 600})
            rows.append({"shard": f"train-{i // a.samples_per_shard:06d}.tar", "position": i % a.samples_per_shard, "split": "train",
                         "id": key, "image_id": f"{i:016x}", "variant": "bench", "mix_id": f"m{i}", "ast_path": ast,
                         "latent_path": lat, "mix_path": "", "source": "", "uri": "", "tar_offset": None, "nbytes": None, "meta": meta})
        plan = pa.Table.from_pylist(rows)
        shards = sorted({r["shard"] for r in rows})
        work = {s: plan.filter(pa.compute.equal(plan.column("shard"), s)) for s in shards}   # a partition's rows, as planned
        stage = ShardsStage(cfg)
        stage.partition = "part-bench"   # the stage writes into its partition's folder
        out_dir = run / "shards" / stage.partition
        bare_dir, tarfile_dir = Path(tmp) / "bare", Path(tmp) / "tarfile"

        def stage_run():
            for s in shards:
                index = stage.process_batch(work[s])["shard_index"]
                assert index.num_rows == work[s].num_rows and set(index.column("status").to_pylist()) == {"ok"}

        def members(r):
            return ((f"{r['id']}.latent.npy", (run / r["latent_path"]).read_bytes()),
                    (f"{r['id']}.ast.npy", (run / r["ast_path"]).read_bytes()),
                    (f"{r['id']}.json", r["meta"].encode()))

        def bare_run():
            bare_dir.mkdir(exist_ok=True)
            for s in shards:
                with open(bare_dir / s, "wb") as f:
                    tw = TarStream(f)
                    for r in rows:
                        if r["shard"] == s:
                            for name, data in members(r):
                                tw.add(name, data)
                    tw.close()

        def tarfile_run():
            tarfile_dir.mkdir(exist_ok=True)
            for s in shards:
                with tarfile.open(tarfile_dir / s, "w", format=tarfile.USTAR_FORMAT) as tf:
                    for r in rows:
                        if r["shard"] == s:
                            for name, data in members(r):
                                info = tarfile.TarInfo(name)
                                info.size = len(data)
                                tf.addfile(info, io.BytesIO(data))

        def fresh():  # new files each repeat, as a first run writes them
            shutil.rmtree(bare_dir, ignore_errors=True)
            shutil.rmtree(tarfile_dir, ignore_errors=True)
            for s in shards:
                (out_dir / s).unlink(missing_ok=True)

        stage_run(), bare_run(), tarfile_run()
        same = all((bare_dir / s).read_bytes() == (tarfile_dir / s).read_bytes() for s in shards)
        if a.profile:
            import cProfile
            import pstats
            fresh()
            cProfile.runctx("stage_run()", globals(), locals(), "/tmp/sonify-shards.prof")
            pstats.Stats("/tmp/sonify-shards.prof").sort_stats("tottime").print_stats(14)
        t = best_of_interleaved({"stage": stage_run, "bare": bare_run, "tarfile": tarfile_run}, a.repeats, setup=fresh)
        t_stage, t_bare, t_tarfile = t["stage"], t["bare"], t["tarfile"]
        mb = sum((tarfile_dir / s).stat().st_size for s in shards) / 2**20   # the last one written; all three are the same bytes

    print(f"{a.samples} samples (latent 64 KiB + AST 73.5 KiB + json), {len(shards)} shards of {a.samples_per_shard}, "
          f"{mb:.0f} MiB; best of {a.repeats}, interleaved, one process")
    print(f"{'measurement':<46} {'seconds':>8} {'MB/s':>8} {'samples/s':>10} {'ratio':>6}")
    print(f"{'shards stage (plan, read, tar, summary, index)':<46} {t_stage:>8.3f} {mb / t_stage:>8.0f} {a.samples / t_stage:>10.0f} {t_stage / t_bare:>6.2f}")
    print(f"{'  baseline: bare loop, same TarStream writer':<46} {t_bare:>8.3f} {mb / t_bare:>8.0f} {a.samples / t_bare:>10.0f} {1.0:>6.2f}")
    print(f"{'  reference: tarfile, same bytes':<46} {t_tarfile:>8.3f} {mb / t_tarfile:>8.0f} {a.samples / t_tarfile:>10.0f} {t_tarfile / t_bare:>6.2f}")
    print(f"stage/baseline ratio: {t_stage / t_bare:.2f} (target <= 1.3); stage/tarfile {t_stage / t_tarfile:.2f}; "
          f"bare TarStream and tarfile tars byte-identical: {same}; peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
