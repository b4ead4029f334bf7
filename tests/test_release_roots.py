"""Every release rebuilds: a list source's entries are stored relative to its root; an entry outside
it is an error row naming the `root` setting at listing time, and the mix stage never writes a release
row that `sonify.mix` would refuse."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sonify.engine.config import load_config
from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.stages import get_stage, stage_names

REPO = Path(__file__).resolve().parents[1]
GOOD = ("bell_8000hz_1ch.wav", "dog_bark_16000hz_1ch.wav", "rain_44100hz_2ch.wav", "wind_16000hz_1ch.wav",
        "birdsong_22050hz_1ch.flac", "engine_48000hz_2ch.flac", "click_48000hz_1ch.wav")


def _pipeline(tmp_path: Path, demo_dir: Path, root: str | None) -> Path:
    """The demo pipeline whose audio is one CSV list of absolute paths, in a folder of its own (not above the files)."""
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "abs.csv").write_text("uri,labels\n" + "".join(f"{demo_dir / 'audio' / n},x\n" for n in GOOD))
    conf = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    conf["demo_data"] = {"enabled": False, "dir": str(demo_dir), "num_images": 12}
    conf["sources"]["audio"] = [{"name": "abs_list", "kind": "csv", "path": str(lists / "abs.csv"), **({"root": root} if root else {})}]
    conf["sources"]["images"] = conf["sources"]["images"][:1]
    conf["models"]["vlms"] = []
    path = tmp_path / f"abs_{'root' if root else 'none'}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _cfg(tmp_path, pipeline: Path):
    return load_config([f"pipeline={pipeline}", f"run.root={tmp_path / 'runs'}", "run.executor=local", "run.progress=false",
                        f"models.tiny_dir={tmp_path / 'tiny'}"], stage_names())


def test_absolute_entries_outside_the_list_root_are_error_rows_naming_root(tmp_path, demo_dir):
    cfg = _cfg(tmp_path, _pipeline(tmp_path, demo_dir, None))
    run_stage(get_stage("audio"), cfg, progress_bar=False)
    rows = TableStore(cfg.run.dir).read("audio_files").to_pylist()
    assert len(rows) == len(GOOD)
    assert all(r["status"] == "error" and r["error"].startswith("outside_root: ") and "set root: on that source" in r["error"]
               for r in rows), rows


def test_the_mix_stage_refuses_a_row_sonify_mix_would_refuse(make_cfg):
    from sonify.stages.mix import MixStage

    stage = MixStage(make_cfg())
    comp = {"source": "demo_sfx", "uri": "/elsewhere/a.wav", "concept_index": 0, "chunk_id": "c"}
    row = stage._mix({"id": "k-img", "image_id": "img", "variant": "v", "components": [comp]})
    assert row["status"] == "error" and row["error"].startswith("unrebuildable: source 'demo_sfx': '/elsewhere/a.wav' is absolute")
    row = stage._mix({"id": "k-img", "image_id": "img", "variant": "v", "components": [{**comp, "uri": "../a.wav"}]})
    assert row["error"].startswith("unrebuildable: ")


@pytest.mark.slow
def test_a_list_of_absolute_paths_with_root_slash_makes_a_release_that_rebuilds_byte_for_byte(tmp_path, demo_dir):
    pipeline = _pipeline(tmp_path, demo_dir, "/")
    cfg = _cfg(tmp_path, pipeline)
    for stage in ("images", "audio", "concepts", "filter", "embed_audio", "embed_text", "retrieve", "mix"):
        assert not run_stage(get_stage(stage), cfg, progress_bar=False).failed, stage
    files = TableStore(cfg.run.dir).read("audio_files").to_pylist()
    assert {r["uri"] for r in files} == {str(demo_dir / "audio" / n).lstrip("/") for n in GOOD}
    mixes = [r for r in TableStore(cfg.run.dir).read("mixes").to_pylist() if r["status"] == "ok"]
    assert len(mixes) > 5
    out = tmp_path / "rebuilt"
    p = subprocess.run([sys.executable, "-m", "sonify.mix", "--manifest", str(Path(cfg.run.dir) / "release" / "release.parquet"),
                        "--pipeline", str(pipeline), "--out", str(out), "--check", "--no-progress", "--workers", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    for m in mixes:
        rebuilt = out / m["path"].split("/", 2)[2]
        assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == \
            hashlib.sha256((Path(cfg.run.dir) / m["path"]).read_bytes()).hexdigest()


def test_the_mix_stage_refuses_a_component_that_a_linked_folder_takes_outside_its_root(make_cfg, tmp_path):
    """The listing's check is lexical (a list can name a million files); `sonify.mix` resolves links. A
    folder inside the root that links outside it passed the listing and the mix stage, and the release
    it made was refused by `sonify.mix --pipeline` row by row (exit 1): the stage must refuse it first."""
    from sonify.mixing.rebuild import SourceRefused, resolve_source
    from sonify.stages.mix import MixStage

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SourceRefused):   # what sonify.mix does with such a row
        resolve_source("demo_sfx", "link/a.wav", None, {"demo_sfx": root})
    stage = MixStage(make_cfg())
    stage.paths.roots["demo_sfx"] = str(root)   # demo_sfx's folder, as the config would give it
    comp = {"source": "demo_sfx", "uri": "link/a.wav", "concept_index": 0, "chunk_id": "c"}
    row = stage._mix({"id": "k-img", "image_id": "img", "variant": "v", "components": [comp]})
    assert row["status"] == "error"
    assert row["error"].startswith(f"unrebuildable: source 'demo_sfx': 'link/a.wav' resolves outside the audio root {root}")
