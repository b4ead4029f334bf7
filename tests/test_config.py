import re

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
    (["pipeline=nope"], "unknown pipeline 'nope'; valid choices: demo, paper, sam"),
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


def test_paper_preset_is_the_papers_build_and_marks_every_value_the_paper_does_not_give():
    from pathlib import Path

    from sonify.training.config import load_train_config

    cfg = _load("pipeline=paper")
    assert cfg.models.vlms == ["llava-hf/llava-1.5-7b-hf", "THUDM/cogvlm-chat-hf"] and cfg.models.trust_remote_code
    assert cfg.stages.embed.audio_input == "paper16k"                          # A.7
    assert list(cfg.stages.filter.caption_vlms) == ["llava-hf/llava-1.5-7b-hf"]  # A.2: LLaVA's captions only
    assert [(s.name, s.recipe) for s in cfg.sources.images] == [("sa1b", "sa1b")]
    assert [s.recipe for s in cfg.sources.audio] == ["audioset", "fsd50k", "bbc_sfx"]
    assert cfg.stages.audio.chunk_seconds == 5.0 and cfg.stages.retrieve.mode == "ssr" and cfg.stages.latents.resolution == 512
    train = load_train_config(["config=train_paper"])
    assert train.dit == "PixArt-alpha/PixArt-XL-2-512x512" and train.ast_dim == 768
    assert (train.lr, train.weight_decay, train.global_batch, train.steps) == (3.16e-5, 3e-2, 640, 500_000)
    # the values the paper does not give carry a comment saying they are this project's choice
    for path, keys in (("pipelines/paper.yaml", ["k:", "lufs_min:", "peak_ceiling_dbfs:"]),
                       ("pipelines/train_paper.yaml", ["cond_dropout:", "ema_decay:", "val_sample_steps:", "val_guidance:",
                                                       "warmup_steps:"])):
        lines = Path(path).read_text().splitlines()
        for key in keys:
            line = next(line for line in lines if key in line)
            assert "# ours" in line, f"{path}: {line.strip()}"
    # and every value of the training preset says where it comes from: the paper, or ours (on its line or the block above)
    lines = Path("pipelines/train_paper.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith(("#", " ")) and not line.rstrip().endswith(":"):
            above = lines[i - 1] if i and lines[i - 1].startswith("#") else ""
            assert "#" in line or "ours" in above, f"train_paper.yaml: {line.strip()} says neither the paper nor ours"


def test_paper_build_without_its_corpora_fails_in_one_line_naming_the_missing_source(tmp_path, capsys):
    assert main(["pipeline=paper", "stage=concepts", f"run.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stage concepts needs table images: run stage=images first" in err
    assert "missing images source(s): sa1b (/data/sa1b)" in err


def test_a_missing_prompt_file_names_each_folder_once(monkeypatch, tmp_path):
    """The error lists the folders a prompt path is tried in; run from the repo they are one folder, said once."""
    from sonify.engine.config import resolve_text
    from sonify.engine.paths import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(ConfigError) as e:
        resolve_text("prompts/no_such_prompt.txt")
    assert str(e.value) == f"prompt file 'prompts/no_such_prompt.txt' not found (relative to {REPO_ROOT})"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"relative to {tmp_path} or {REPO_ROOT}"):
        resolve_text("prompts/no_such_prompt.txt")


@pytest.mark.parametrize("bad", ["run.plan_memory=lots", "stages.concepts.concepts_prompt=/nonexistent.txt",
                                 "stages.filter.keywords=/nonexistent.txt", "models.clap=/nonexistent"])
def test_rejected_setting_leaves_saved_config_and_readers_alone(tmp_path, demo_dir, capsys, bad):
    from sonify.engine.store import open_run

    args = ["pipeline=demo", f"run.root={tmp_path}", f"demo_data.dir={demo_dir}", "demo_data.enabled=false",
            "run.executor=local", "run.progress=false"]
    saved = tmp_path / "demo" / "config.yaml"
    assert main([*args, "stage=all", bad]) == 2
    assert not saved.exists()   # a rejected first run saves nothing
    assert main([*args, "stage=images"]) == 0
    before = saved.read_text()
    capsys.readouterr()
    assert main([*args, "stage=all", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sonify: ") and "\n" not in err
    assert saved.read_text() == before
    assert open_run(tmp_path / "demo").execute("SELECT count(*) FROM images").fetchone()[0] > 0


@pytest.mark.parametrize("args", [["run=foo"], ["run=foo", "run.name=x"], ["run.name=x", "run=foo"], ["stage=images", "run=foo"]])
def test_run_equals_is_one_line_pointing_at_run_name_and_root(capsys, args):
    assert main(["pipeline=demo", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sonify: run= is not a setting of sonify.run; use run.name=NAME or run.root=DIR "
                   "(run= names a run for the readers: query, report, export, app)")


@pytest.mark.parametrize("arg, key", [("stages.retrieve=3", "stages.retrieve"), ("models=3", "models"), ("run=3", "run")])
def test_a_value_given_to_a_section_names_the_section(arg, key):
    with pytest.raises(ConfigError) as e:
        _load("pipeline=demo", arg)
    assert f"key '{key}' is a section" in str(e.value) and "?" not in str(e.value) and "\n" not in str(e.value)


def _leaf_keys(node, prefix=""):
    """Every leaf key of a loaded config, list items of sections as `[i]` (as --help writes them)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        return [k for key in node for k in _leaf_keys(node[key], f"{prefix}{key}.")]
    if isinstance(node, ListConfig) and len(node) and isinstance(node[0], DictConfig):
        return _leaf_keys(node[0], f"{prefix[:-1]}[i].")
    return [prefix[:-1]]


def test_run_help_lists_every_key_with_its_default(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    keys = _leaf_keys(_load("pipeline=demo"))
    assert len(keys) > 100
    listed = set(re.findall(r"^  (\S+) = ", out, re.M))
    for key in keys:   # a dict-valued setting (e.g. stages.concepts.generation) is listed whole
        parts = key.split(".")
        assert any(".".join(parts[:n]) in listed for n in range(1, len(parts) + 1)), f"--help does not list {key}"
    assert "  run.plan_memory = 1GB" in out and "  run.executor = ray   (one of: ray, local)" in out
    assert "\n[stages.mix]\n" in out
