"""Run pipeline stages: `python -m sonify.run pipeline=demo stage=all [key=value ...]`.

Starts a local Ray by default (CPU count from `ray.num_cpus`), joins a cluster when `ray.address` or
RAY_ADDRESS is set (which is how `ray job submit -- python -m sonify.run ...` runs), or runs in
this process with `run.executor=local`. Outputs go to `<run.dir>/manifests/<table>/`.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from omegaconf import DictConfig, OmegaConf

from sonify.engine.config import load_config, save_config
from sonify.engine.paths import check_run_dir
from sonify.engine.errors import ConfigError, DiskFull, MissingTable, SonifyError, disk_full, disk_full_line
from sonify.models.loading import TINY_PREFIX, check_local_model
from sonify.stages import expand, get_stage, missing_inputs, missing_table_line, stage_names

log = logging.getLogger("sonify")


class MissingInput(SonifyError):
    """A selected stage reads a table that no earlier run (or stage of this run) has written."""


def selected_stages(cfg: DictConfig) -> list[str]:
    return expand([s.strip() for s in str(cfg.stage).split(",")])


def tiny_model_roles(cfg: DictConfig, stages: list[str]) -> list[str]:
    """Model roles used by these stages that name tiny random models (the demo says so)."""
    roles = {role for name in stages for role in get_stage(name).models}
    names = OmegaConf.to_container(cfg.models)
    return sorted(r for r in roles if any(str(m).startswith(TINY_PREFIX) for m in (names[r] if isinstance(names[r], list) else [names[r]])))


def check_settings(cfg: DictConfig, stages: list[str]) -> None:
    """What can fail before anything is written, so that a rejected setting leaves the run folder (and its
    saved config.yaml, which readers take `run.plan_memory` from) as it was: every selected stage's lineage
    (prompt and keyword files, model identities) and the local model folders its roles name."""
    for name in stages:
        stage = get_stage(name)
        stage.lineage(cfg)
        for role in stage.models:
            names = cfg.models[role]
            for model in [names] if isinstance(names, str) else names:
                check_local_model(str(model), role)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        from sonify.engine.config import pipeline_schema
        from sonify.engine.settings import describe

        print(__doc__)
        print(f"stages, in order: {', '.join(stage_names())} (or all; several: stage=images,audio)")
        print("\nkeys (key=value) and their defaults; pipelines/<pipeline>.yaml sets some of them, the command line "
              "overrides both:")
        print("\n".join(describe(pipeline_schema())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if any(a.split("=", 1)[0] == "run" for a in argv):   # the readers' spelling; here `run` is a section
            raise ConfigError("run= is not a setting of sonify.run; use run.name=NAME or run.root=DIR "
                              "(run= names a run for the readers: query, report, export, app)")
        cfg = load_config(argv, stage_names())
        return run_pipeline(cfg)
    except SonifyError as e:
        print(f"sonify: {e}", file=sys.stderr)
        return 2


def run_pipeline(cfg: DictConfig) -> int:
    """Run the selected stages in order under the run folder's lock; stop at the first failed stage."""
    from sonify.engine.lock import RunLock

    run_dir = str(check_run_dir(cfg))   # one line naming run.root when it is not a writable folder
    check_settings(cfg, selected_stages(cfg))   # before config.yaml is saved: a rejected run changes nothing
    missing = missing_inputs(cfg, selected_stages(cfg))   # e.g. stage=concepts before images: names the absent corpora
    if missing:
        raise MissingInput(missing)
    with RunLock(run_dir) as lock:
        if lock.took_over:
            print(f"took over the lock of {lock.took_over}, which is no longer running")
        return _run_locked(cfg, run_dir)


def _run_locked(cfg: DictConfig, run_dir: str) -> int:
    from sonify.engine.cluster import connect_ray
    from sonify.engine.executor import run_stage
    from sonify.engine.summary import format_summary, save_summary

    t0 = time.perf_counter()
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    if cfg.demo_data.enabled:
        from sonify.sources.demo import ensure_demo_data
        ensure_demo_data(cfg.demo_data.dir, cfg.demo_data.num_images, cfg.demo_data.seed)
        print(f"demo data (generated offline, nothing downloaded): {cfg.demo_data.dir}")
    stages = selected_stages(cfg)
    tiny = tiny_model_roles(cfg, stages)
    if tiny:
        print(f"models: tiny random models built from configs for {', '.join(tiny)} (offline demo; outputs are not meaningful)")
    started_ray = []

    def connect() -> None:   # Ray starts with the first partition that needs it, not before
        if not started_ray:
            started_ray.append(connect_ray(cfg))

    runs = []
    try:
        for name in stages:
            try:
                runs.append(run_stage(get_stage(name), cfg, progress_bar=cfg.run.progress, connect=connect))
            except MissingTable as e:   # an upstream stage has not run in this folder: say which, in one line
                raise MissingInput(missing_table_line(name, e.table)) from None
            except Exception as e:   # planning, a partition, the release: a full disk anywhere is one line
                if disk_full(e) and not isinstance(e, DiskFull):
                    raise DiskFull(disk_full_line(run_dir, name)) from None
                raise
            if runs[-1].failed:
                print(f"sonify: stage {name} has {len(runs[-1].failed)} failed partition(s); later stages not run", file=sys.stderr)
                break
    finally:
        if any(started_ray):
            import ray
            ray.shutdown()
    print()
    print(format_summary(runs))
    summary_path = save_summary(runs, run_dir)
    print(f"\ndone in {time.perf_counter() - t0:.1f}s; outputs in {run_dir}/manifests, summary in {summary_path}")
    if runs:
        table = next(iter(runs[-1].tables))
        print(f'query them: python -m sonify.query run={run_dir} "SELECT status, count(*) FROM {table} GROUP BY status"')
        print(f"            python -m sonify.query run={run_dir} --file manifests/status_by_table.sql   (more in manifests/)")
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
