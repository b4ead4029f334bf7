import pytest
from omegaconf import OmegaConf

from sonify.engine.config import load_config
from sonify.engine.errors import ConfigError
from sonify.run import main
from sonify.stages import stage_names


def _load(*args):
    return load_config(list(args), stage_names())


def test_pipeline_and_overrides_resolve():
    cfg = _load("pipeline=demo", "stage=audio", "run.root=/x", "stages.audio.chunk_seconds=2.5")
    assert cfg.run.dir == "/x/demo"
    assert cfg.stages.audio.chunk_seconds == 2.5
    assert cfg.sources.audio[0].path == "/x/demo/data/audio"
    sam = _load("pipeline=sam")
    assert sam.models.vlms == ["llava-hf/llava-1.5-7b-hf", "HuggingFaceTB/SmolVLM-Instruct"]
    assert sam.models.trust_remote_code is False   # CogVLM (remote code) is the documented opt-in
    assert sam.models.clap == "laion/clap-htsat-unfused"


@pytest.mark.parametrize("args, fragment", [
    (["nonsense=1"], "unknown config key 'nonsense'; valid keys: pipeline, stage"),
    (["stages.audio.chunk_secs=3"], "unknown config key 'stages.audio.chunk_secs'; valid keys under 'stages.audio':"),
    (["stage=bogus"], "unknown stage 'bogus' for key 'stage'; valid choices: images, audio"),
    (["run.executor=spark"], "bad value 'spark' for key 'run.executor'; valid choices: ray, local"),
    (["stages.images.batch_size=many"], "bad value for key 'stages.images.batch_size'"),
    (["pipeline=nope"], "unknown pipeline 'nope'; valid choices: demo, sam"),
    (["sources.audio=[{name: a, kind: tar, path: /x}]"], "bad value 'tar' for key 'sources.audio[0].kind'; valid choices: folder, parquet, csv"),
    (["sources.audio=[{name: a, pth: /x}]"], "unknown config key 'sources.audio[0].pth'"),
    (["justaword"], "is not key=value"),
])
def test_bad_config_is_one_line_naming_key_and_choices(args, fragment):
    with pytest.raises(ConfigError) as e:
        _load("pipeline=demo", *args)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_prints_one_line_and_exits_2(capsys):
    assert main(["pipeline=demo", "stage=bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sonify: unknown stage 'bogus'") and "\n" not in err


def test_resolved_config_saved_beside_outputs(make_cfg):
    from sonify.run import run_pipeline

    cfg = make_cfg("stage=audio", "stages.audio.silence_dbfs=-80")
    assert run_pipeline(cfg) == 0
    saved = OmegaConf.load(f"{cfg.run.dir}/config.yaml")
    assert saved.stages.audio.silence_dbfs == -80
    assert "${" not in OmegaConf.to_yaml(saved)  # fully resolved
