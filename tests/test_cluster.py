"""Failure policy and placement: transient failures are retried, persistent ones stop the stage with
nothing kept, a killed actor is restarted, and model stages get the GPUs they ask for."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import copy_run

from sonify.engine.errors import ConfigError
from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore, rows_to_table
from sonify.stages import get_stage
from sonify.stages.base import Stage
from sonify.stages.images import ImagesSettings


def _fresh(cfg, stage: str) -> None:
    """Forget a stage's outputs so the next run computes them."""
    store = TableStore(cfg.run.dir)
    for t in get_stage(stage).outputs:
        store.remove_partitions(t, store.partitions(t))


def test_a_transient_model_error_is_retried_and_leaves_no_error_row(full_run, tmp_path, monkeypatch):
    from sonify.models.clap import ClapEmbedder

    cfg = copy_run(full_run, tmp_path)
    _fresh(cfg, "embed_audio")
    real, calls = ClapEmbedder.embed_audio, []

    def flaky(self, clips, *keys):
        calls.append(len(clips))
        if len(calls) == 1:   # as torch reports it, from inside the model call
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.68 GiB total capacity)")
        return real(self, clips, *keys)

    monkeypatch.setattr(ClapEmbedder, "embed_audio", flaky)
    run = run_stage(get_stage("embed_audio"), cfg, progress_bar=False)
    assert not run.failed and run.computed == run.partitions and len(calls) > 1
    assert run.tables["audio_embeddings"]["errors"] == {}
    stats = [json.loads(p.read_text()) for p in (Path(cfg.run.dir) / "stats" / "embed_audio").glob("*.json")]
    assert sorted(s["attempts"] for s in stats)[-1] == 2


def test_a_model_that_always_fails_stops_the_run_with_nothing_kept(full_run, tmp_path, monkeypatch, capsys):
    from sonify.models.clap import ClapEmbedder
    from sonify.run import run_pipeline

    cfg = copy_run(full_run, tmp_path, "run.max_retries=2")
    _fresh(cfg, "embed_audio")
    _fresh(cfg, "mix")
    calls = []

    def broken(self, clips, *keys):
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(ClapEmbedder, "embed_audio", broken)
    assert run_pipeline(cfg) == 1
    err = capsys.readouterr().err
    assert "stage embed_audio has" in err and "later stages not run" in err
    store = TableStore(cfg.run.dir)
    assert not store.partitions("audio_embeddings")           # no partition is written as finished
    assert not store.partitions("mixes")                      # and the stages after it did not run
    assert len(calls) == 3 * len(TableStore(full_run[0].run.dir).partitions("audio_embeddings"))   # 1 + 2 retries each
    summary = json.loads((Path(cfg.run.dir) / "summary.json").read_text())
    assert [s["stage"] for s in summary][-1] == "embed_audio"
    monkeypatch.undo()
    assert run_pipeline(cfg) == 0                             # the next run retries it, and goes on
    assert store.partitions("audio_embeddings") and store.partitions("mixes")


def test_too_many_error_rows_stop_the_stage(full_run, tmp_path, monkeypatch):
    """A decoder that fails on every file must not quietly make the whole pool error rows."""
    import sonify.stages.embed as embed

    cfg = copy_run(full_run, tmp_path, "run.error_fraction_min_rows=5")
    _fresh(cfg, "embed_audio")

    def no_decoder(*args, **kwargs):
        raise OSError("Error opening file: Format not recognised")

    monkeypatch.setattr(embed, "load_chunk", no_decoder)
    run = run_stage(get_stage("embed_audio"), cfg, progress_bar=False)
    assert len(run.failed) == 1 and "more than run.max_error_fraction=0.5" in run.failed[0] and "decode_error" in run.failed[0]
    assert not TableStore(cfg.run.dir).partitions("audio_embeddings")
    # expected outcomes do not count: the demo's VLM gives parse_error rows by design and the stage passes
    assert "parse_error" in get_stage("concepts").expected_errors


class SuicidalStage(Stage):
    """Kills its own worker process the first time it runs (a node lost mid-stage), then works."""
    name = "images"
    Settings = ImagesSettings          # reads the images stage's section
    outputs = ("images",)

    @classmethod
    def work_list(cls, cfg, store):
        return pa.table({"id": [f"r{i:02d}" for i in range(12)], "source": ["s"] * 12})

    def process_batch(self, batch):
        marker = Path(self.cfg.run.dir) / "killed-once"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return {"images": _rows(batch)}


def _rows(batch) -> pa.Table:
    rows = [{"id": i, "source": "s", "status": "error", "error": "not_found: synthetic"} for i in batch.column("id").to_pylist()]
    return rows_to_table("images", rows)


class GpuProbeStage(SuicidalStage):
    """Records, from inside its actor, the GPUs Ray gave it."""

    def process_batch(self, batch):
        import ray

        ids = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        (Path(self.cfg.run.dir) / f"gpus-{os.getpid()}.json").write_text(json.dumps(ids))
        return {"images": _rows(batch)}


@pytest.mark.ray
def test_a_killed_actor_is_restarted_and_every_row_lands_once(make_cfg, ray_head):
    import ray
    import ray.cloudpickle

    from sonify.engine.cluster import connect_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # this test module is not on the workers' path
    cfg = make_cfg("run.executor=ray", f"ray.address={ray_head}", "stages.images.partition_rows=3", "stages.images.concurrency=1",
                   "run.error_fraction_min_rows=1000")
    Path(cfg.run.dir).mkdir(parents=True)
    connect_ray(cfg)
    try:
        run = run_stage(SuicidalStage, cfg, progress_bar=False)
    finally:
        ray.shutdown()
    assert (Path(cfg.run.dir) / "killed-once").exists()
    assert not run.failed and run.computed == 4
    ids = TableStore(cfg.run.dir).read("images").column("id").to_pylist()
    assert sorted(ids) == [f"r{i:02d}" for i in range(12)]


@pytest.mark.ray
def test_model_stages_get_the_gpus_they_ask_for_and_over_asking_refuses(make_cfg, ray_driver):
    """On a CPU machine whose Ray declares 8 GPUs (the session's head): each actor sees the GPU share it asked for."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    on_head = ("run.executor=ray", f"ray.address={ray_driver}")
    cfg = make_cfg(*on_head, "stages.images.num_gpus=0.5", "stages.images.concurrency=2",
                   "stages.images.partition_rows=2", "run.error_fraction_min_rows=1000")
    Path(cfg.run.dir).mkdir(parents=True)
    assert run_stage(GpuProbeStage, cfg, progress_bar=False).computed == 6
    seen = [json.loads(p.read_text()) for p in Path(cfg.run.dir).glob("gpus-*.json")]
    assert seen and all(len(ids) == 1 for ids in seen)   # a half-GPU share: one device id per actor
    over = make_cfg(*on_head, "stages.images.num_gpus=9", "run.force=true")
    with pytest.raises(ConfigError, match="num_gpus=9 per actor, but the cluster has 8 GPUs"):
        run_stage(get_stage("images"), over, progress_bar=False)
    typed = make_cfg(*on_head, "stages.images.accelerator_type=H100", "run.force=true")
    with pytest.raises(ConfigError, match="accelerator_type='H100'"):
        run_stage(get_stage("images"), typed, progress_bar=False)


@pytest.mark.ray
def test_a_rerun_with_nothing_to_do_starts_no_ray(full_run, tmp_path, monkeypatch, ray_head):
    """What is finished is decided before Ray starts: a skip-everything re-run never connects."""
    import sonify.engine.cluster as cluster
    from sonify.run import run_pipeline

    calls = []
    monkeypatch.setattr(cluster, "connect_ray", lambda cfg: calls.append(cfg) or False)
    cfg = copy_run(full_run, tmp_path, "run.executor=ray", f"ray.address={ray_head}")
    assert run_pipeline(cfg) == 0
    assert calls == []
    _fresh(cfg, "shards")   # now there is work: the first partition that needs Ray connects, once
    monkeypatch.setattr(cluster, "connect_ray", lambda cfg: calls.append(cfg) or False)
    import ray

    from sonify.engine.cluster import init_ray

    init_ray(ray_head)   # connected here, so the patched connect_ray can count its calls
    try:
        assert run_pipeline(cfg) == 0
    finally:
        ray.shutdown()
    assert len(calls) == 1
