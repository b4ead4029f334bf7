"""A stage is one module: its settings class lives beside it, the registry assembles the config's `stages`
section from those classes, the loader checks their fields' metadata, and a stage reads only what it
declares (its settings, `uses`, its models, what the engine gives every stage): anything else is an error."""

from __future__ import annotations

import dataclasses

import pytest

from sonify.engine.errors import ConfigError
from sonify.engine.executor import run_stage
from sonify.engine.settings import StageSettings, runtime_keys
from sonify.engine.store import TableStore
from sonify.stages import STAGES, get_stage, settings_schema
from sonify.stages.base import UndeclaredSetting
from sonify.stages.filter import FilterStage
from sonify.stages.images import ImagesStage


def test_each_stage_declares_its_settings_in_its_module_and_reads_them_typed_through_the_registry(make_cfg):
    cfg = make_cfg("stages.retrieve.k=5", "stages.mix.lufs_min=-30", "stages.shards.val_fraction=0")
    sections = {f.name: f.type for f in dataclasses.fields(settings_schema())}
    assert list(sections) == list(dict.fromkeys(get_stage(s).conf_key or s for s in STAGES))   # pipeline order
    for name in STAGES:
        cls = get_stage(name)
        assert cls.Settings is not StageSettings and issubclass(cls.Settings, StageSettings), name
        assert cls.Settings.__module__ == cls.__module__, f"{name}'s settings class is not in its stage module"
        assert sections[cls.conf_key or name] is cls.Settings
        conf = cls.settings(cfg)
        assert isinstance(conf, cls.Settings)
        for f in dataclasses.fields(conf):   # the values the config holds, typed as declared
            assert getattr(conf, f.name) == getattr(cfg.stages[cls.conf_key or name], f.name), (name, f.name)
    assert get_stage("retrieve").settings(cfg).k == 5
    assert get_stage("latents").settings(cfg).resolution == 64                 # pipelines/demo.yaml
    assert get_stage("concepts").settings(cfg).partition_rows == 16            # the demo's, over the stage's own default 64
    assert type(get_stage("mix").settings(cfg).lufs_min) is float              # -30 given as an integer
    assert type(get_stage("shards").settings(cfg).val_fraction) is float
    imports = get_stage("concepts").settings(cfg).imports
    assert imports and imports[0].name == "demo-import" and dataclasses.is_dataclass(imports[0])


def test_a_worker_config_without_types_is_typed_again():
    """Workers get the config as plain data (`PartitionWorker`): the stage's settings are typed from its class."""
    from omegaconf import OmegaConf

    plain = OmegaConf.create({"stages": {"embed": {"model_batch": 4, "device": "cpu"}}})
    conf = get_stage("embed_text").settings(plain)
    assert conf.model_batch == 4 and conf.device == "cpu" and conf.text_max_tokens == 77 and conf.partition_rows == 1024


@pytest.mark.parametrize("setting, line", [
    ("stages.retrieve.ablation_modes=[raw,best]", "bad value 'best' in key 'stages.retrieve.ablation_modes'; valid choices: ssr, raw, argmax, softmax"),
    ("stages.features.dtype=half", "bad value 'half' for key 'stages.features.dtype'; valid choices: auto, float32, bfloat16, float16"),
    ("stages.mix.lufs_max=-30", "bad value -30.0 for key 'stages.mix.lufs_max'; valid values: a loudness >= stages.mix.lufs_min"),
    ("stages.concepts.partition_rows=0", "bad value 0 for key 'stages.concepts.partition_rows'; valid values: an integer >= 1"),
    ("stages.embed.num_gpus=-1", "bad value -1.0 for key 'stages.embed.num_gpus'; valid values: a number >= 0"),
    ("ray.num_cpus=0", "bad value 0 for key 'ray.num_cpus'; valid values: null or an integer >= 1"),
])
def test_the_loader_checks_the_fields_metadata(make_cfg, setting, line):
    with pytest.raises(ConfigError) as e:
        make_cfg(setting)
    assert str(e.value) == line


def test_runtime_fields_stay_out_of_the_fingerprint_and_the_others_do_not(make_cfg):
    embed = get_stage("embed_text")
    assert {"partition_rows", "batch_size", "text_batch_size", "device", "num_gpus"} <= runtime_keys(embed.Settings)
    assert "model_batch" not in runtime_keys(embed.Settings)
    base = embed.lineage(make_cfg())
    assert embed.lineage(make_cfg("stages.embed.text_batch_size=3", "stages.embed.partition_rows=7")) == base
    assert embed.lineage(make_cfg("stages.embed.model_batch=3")) != base


def test_what_a_stage_may_read():
    assert "stages.audio.chunk_seconds" in get_stage("embed_audio").readable()      # its `uses`
    assert "stages.audio.chunk_seconds" not in get_stage("embed_text").readable()
    assert {"models.clap", "run.torch_threads", "stages.embed", "run.dir"} <= get_stage("embed_text").readable()
    assert "sources.images" in get_stage("concepts").readable() and "sources.audio" not in get_stage("concepts").readable()
    assert "sources.audio" in get_stage("mix").readable() and "sources.images" not in get_stage("mix").readable()
    assert "sources.images" in get_stage("shards").readable()   # it reads the images table (its jpg members)
    assert "models.clap" not in get_stage("mix").readable()


class LeakyFilter(FilterStage):
    """A planted bug: the filter's work list depends on another stage's setting it does not declare."""

    @classmethod
    def work_list(cls, cfg, store):
        cfg.stages.latents.resolution
        return super().work_list(cfg, store)


class DeclaredFilter(LeakyFilter):
    uses = ("stages.latents.resolution",)


class LeakyInit(FilterStage):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.rate = cfg.stages.mix.sample_rate


class LeakyFinalize(FilterStage):
    @classmethod
    def finalize(cls, cfg, store):
        cfg.run.seed


class LeakyFingerprint(FilterStage):
    @classmethod
    def own_fingerprint(cls, cfg):
        return {**super().own_fingerprint(cfg), "sr": cfg["stages"]["mix"]["sample_rate"]}


def test_an_undeclared_read_fails_naming_the_key_and_the_stage(make_cfg, tmp_path):
    cfg = make_cfg()
    store = TableStore(cfg.run.dir)
    with pytest.raises(UndeclaredSetting, match=r"^stage filter read 'stages.latents.resolution', which is not in its "
                                                r"settings or `uses`"):
        LeakyFilter.work_list(cfg, store)
    with pytest.raises(UndeclaredSetting, match="stage filter read 'stages.mix.sample_rate'"):
        LeakyInit(cfg)
    with pytest.raises(UndeclaredSetting, match="stage filter read 'run.seed'"):
        LeakyFinalize.finalize(cfg, store)
    with pytest.raises(UndeclaredSetting, match="stage filter read 'stages.mix.sample_rate'"):
        LeakyFingerprint.lineage(cfg)
    # declared in `uses`, the same read passes, and the setting joins the fingerprint
    assert "stages.latents.resolution" in DeclaredFilter.own_fingerprint(cfg)["uses"]
    assert DeclaredFilter.lineage(cfg) != DeclaredFilter.lineage(make_cfg("stages.latents.resolution=32"))
    assert FilterStage.lineage(cfg) == FilterStage.lineage(make_cfg("stages.latents.resolution=32"))


class LeakyImages(ImagesStage):
    def process_batch(self, batch):
        self.cfg.stages.mix.sample_rate
        return super().process_batch(batch)


def test_an_undeclared_read_in_process_batch_fails_the_partition_at_once(make_cfg):
    """Through the engine: the partition fails in one line naming the key and the stage, with no retry."""
    cfg = make_cfg("stage=images", "run.max_retries=3")
    run = run_stage(LeakyImages, cfg, progress_bar=False)
    assert run.failed and run.computed == 0
    assert all("stage images read 'stages.mix.sample_rate'" in f for f in run.failed), run.failed
    stats = TableStore(cfg.run.dir).run_dir / "stats" / "images"
    assert all('"attempts": 1' in p.read_text() for p in stats.glob("*.json"))
    assert not run_stage(ImagesStage, cfg, progress_bar=False).failed   # the stage as written reads only what it declares
