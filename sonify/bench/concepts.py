"""`python -m sonify.bench concepts`: images/s of the concepts stage against bare `generate` calls.

Same images, same batches, same tiny VLM, same run:
  stage     ConceptsStage on whole partitions: read bytes, decode to bounded RGB, caption + concepts
            prompts through the processor and generate (one image prefill shared by both prompts),
            parse, build both tables, write Parquet
  baseline  the processor and `model.generate` for both prompts on the same batches of images
            decoded beforehand (outside the timer), each prompt with its own prefill
The ratio stage/baseline is what the stage adds over the model (target <= 1.15); since the stage
shares the image prefill and the baseline does not, it can be below 1 with a real-size VLM.
"""

from __future__ import annotations

import tempfile

from sonify.bench.common import bench_args, best_of, demo_config, peak_rss_mib


def main(argv=None) -> None:
    a = bench_args("concepts", __doc__, argv, images=(48, "demo images to generate and caption"), batch_size=8, max_new_tokens=32, repeats=3,
                   vlm=("tiny:vlm", "model id or path (default: the tiny random VLM)"))

    from omegaconf import OmegaConf

    from sonify.engine.executor import PartitionWorker, run_stage
    from sonify.engine.partitions import work_table
    from sonify.engine.store import TableStore
    from sonify.media.image import load_rgb
    from sonify.sources.images import read_image_bytes
    from sonify.stages import get_stage
    from sonify.stages.concepts import ConceptsStage

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        # fixed length (min = max new tokens) so both runs generate exactly the same number of tokens
        gen = f"{{max_new_tokens: {a.max_new_tokens}, min_new_tokens: {a.max_new_tokens}, do_sample: false}}"
        cfg = demo_config(tmp, "run.progress=false", f"demo_data.num_images={a.images}",
            f"models.vlms=[{a.vlm}]", "stages.concepts.imports=[]", f"stages.concepts.batch_size={a.batch_size}",
            f"stages.concepts.generation={gen}", f"stages.concepts.caption_generation={gen}",
        )
        from sonify.sources.demo import ensure_demo_data
        ensure_demo_data(cfg.demo_data.dir, a.images, 0)
        run_stage(get_stage("images"), cfg, progress_bar=False)
        work = work_table(ConceptsStage.work_list(cfg, TableStore(cfg.run.dir)))
        n = work.num_rows
        worker = PartitionWorker(get_stage("concepts"), OmegaConf.to_container(cfg))
        stage = worker.stage
        vlm = stage.vlms[a.vlm]
        batches = [work.slice(s, a.batch_size) for s in range(0, n, a.batch_size)]
        decoded = [[load_rgb(read_image_bytes(stage.paths.locate(r), r["tar_offset"], r["nbytes"]), stage.conf.max_pixels, stage.conf.max_image_side)
                    for r in b.to_pylist()] for b in batches]

        def stage_run():
            stats = worker.run_partition("bench", work)
            assert not stats["failed"], stats["failed"]

        def bare_run():
            for images in decoded:
                vlm.generate_from(vlm.prepare(images, stage.caption_prompt), stage.caption_generation)
                vlm.generate_from(vlm.prepare(images, stage.concepts_prompt), stage.generation)

        bare_run()  # warm-up
        t_stage, m_stage = best_of(stage_run, a.repeats)
        t_bare, m_bare = best_of(bare_run, a.repeats)

    print(f"{n} images, batches of {a.batch_size}, VLM {a.vlm}, {a.max_new_tokens} new tokens per prompt, 2 prompts per image; "
          f"best of {a.repeats}, torch threads as configured")
    print(f"{'measurement':<52} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    print(f"{'concepts stage (read, decode, 2 x generate, parse, write)':<52} {t_stage:>8.3f} {n / t_stage:>9.1f} {t_stage / t_bare:>6.2f}")
    print(f"{'  baseline: processor + generate on the same batches':<52} {t_bare:>8.3f} {n / t_bare:>9.1f} {1.0:>6.2f}")
    print(f"stage/baseline ratio: {t_stage / t_bare:.3f} (target <= 1.15); medians {m_stage:.3f}s vs {m_bare:.3f}s; "
          f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
