"""Recipes over miniature copies of each corpus's official layout, quirks included."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sonify import recipes as cmd
from sonify.engine.config import RECIPES as CONFIG_RECIPES
from sonify.engine.errors import ConfigError
from sonify.sources.recipes import RECIPES, RecipeError, counts, run_recipe


def wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)


def corpus(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    """A miniature copy of a corpus under `tmp_path/name`: each text file at its path in the layout."""
    root = tmp_path / name
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def by_item(table):
    return {r["item"]: r for r in table.to_pylist()}


@pytest.fixture
def audioset(tmp_path):
    root = corpus(tmp_path, "audioset", {
        "balanced_train_segments.csv": "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'
        '--aE2O5G5WE, 0.000, 10.000, "/m/03fwl"\n',
        "ontology.json": json.dumps([
            {"id": "/m/09x0r", "name": "Speech"}, {"id": "/t/dd00088", "name": "Gush"},
            {"id": "/m/012xff", "name": "Toothbrush"}, {"id": "/m/03fwl", "name": "Goat"}])})
    wav(root / "audio" / "--PJHxphWEs_30.wav")
    wav(root / "audio" / "--ZhevVpy1s_50000.wav")        # milliseconds, as some downloaders name them
    return root


def test_audioset_comments_quoted_labels_ontology_and_missing_clips(audioset):
    t = run_recipe("audioset", audioset)
    rows = by_item(t)
    assert t.num_rows == 3 and counts(t) == {"rows": 3, "ok": 2, "errors": {"not_found": 1}}
    assert rows["--PJHxphWEs_30"]["labels"] == ["Speech", "Gush"]
    assert rows["--PJHxphWEs_30"]["relpath"] == "audio/--PJHxphWEs_30.wav"
    assert rows["--ZhevVpy1s_50"]["relpath"] == "audio/--ZhevVpy1s_50000.wav"
    assert rows["--aE2O5G5WE_0"]["status"] == "error" and rows["--aE2O5G5WE_0"]["labels"] == ["Goat"]
    assert all(not Path(r).is_absolute() for r in t.column("relpath").to_pylist())


def test_audioset_class_labels_indices_instead_of_ontology(audioset):
    (audioset / "ontology.json").unlink()
    (audioset / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech, child"\n1,/t/dd00088,Gush\n2,/m/012xff,Toothbrush\n3,/m/03fwl,Goat\n')
    assert by_item(run_recipe("audioset", audioset))["--PJHxphWEs_30"]["labels"] == ["Speech, child", "Gush"]


@pytest.fixture
def fsd50k(tmp_path):
    root = tmp_path / "fsd50k"
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    (gt / "vocabulary.csv").write_text("0,Electric_guitar,/m/02sgy\n1,Guitar,/m/0342h\n2,Bark,/m/05tny_\n3,Dog,/m/0bt9lr\n")
    (gt / "dev.csv").write_text(
        "fname,labels,mids,split\n"
        '64760,"Electric_guitar,Guitar","/m/02sgy,/m/0342h",train\n'
        '16399,"Bark,Dog","/m/05tny_,/m/0bt9lr",val\n'
        '99999,Bark,/m/05tny_,train\n')
    (gt / "eval.csv").write_text('fname,labels,mids\n37199,"Dog,Unicorn_noise","/m/0bt9lr,/x/1"\n21914,Dog,/m/0bt9lr\n')
    for f in ("FSD50K.dev_audio/64760.wav", "FSD50K.dev_audio/16399.wav", "FSD50K.eval_audio/37199.wav", "FSD50K.eval_audio/21914.wav"):
        wav(root / f)
    meta = root / "FSD50K.metadata"
    meta.mkdir()
    (meta / "dev_clips_info_FSD50K.json").write_text(json.dumps({"64760": {"license": "http://creativecommons.org/publicdomain/zero/1.0/"}}))
    return root


def test_fsd50k_comma_joined_labels_splits_licences_and_errors(fsd50k):
    t = run_recipe("fsd50k", fsd50k)
    rows = by_item(t)
    assert t.num_rows == 5 and counts(t)["errors"] == {"not_found": 1, "unknown_label": 1}
    assert rows["64760"]["labels"] == ["Electric_guitar", "Guitar"] and rows["64760"]["split"] == "train"
    assert rows["64760"]["license"].endswith("zero/1.0/")
    assert rows["16399"]["split"] == "val" and rows["21914"]["split"] == "eval"
    assert rows["21914"]["relpath"] == "FSD50K.eval_audio/21914.wav"
    assert rows["99999"]["error"].startswith("not_found")
    assert "Unicorn_noise" in rows["37199"]["error"]


def test_bbc_sfx_listing_quoted_descriptions_and_missing(tmp_path):
    root = corpus(tmp_path, "bbc", {"BBCSoundEffects.csv":
        '\ufefflocation,description,secs,category,CDNumber,CDName,tracknum\n'
        '07070001.wav,"Dogs, two barking, close.",12,Animals: Dogs,BBC 1,Animals,1\n'
        '07070002.wav,Rain on a tin roof.,30,Weather,BBC 2,Weather,4\n'
        '07070003.wav,Church bell.,8,Bells,BBC 3,Bells,2\n'})
    wav(root / "07070001.wav")
    wav(root / "wav" / "07070002.wav")
    t = run_recipe("bbc_sfx", root)
    rows = by_item(t)
    assert t.num_rows == 3 and counts(t)["errors"] == {"not_found": 1}
    assert rows["07070001"]["caption"] == "Dogs, two barking, close." and rows["07070001"]["labels"] == ["Animals: Dogs"]
    assert rows["07070002"]["relpath"] == "wav/07070002.wav"
    assert rows["07070003"]["status"] == "error"


def test_vggsound_clip_names_and_video_only_clips(tmp_path):
    root = tmp_path / "vgg"
    root.mkdir()
    (root / "vggsound.csv").write_text("---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n--56QUhyDQM,185,playing tennis,train\n")
    wav(root / "audio" / "---g-f_I2yQ_000001.flac")
    (root / "video").mkdir()
    (root / "video" / "--0PQM4-hqg_000030.mp4").write_bytes(b"not really a video")
    t = run_recipe("vggsound", root)
    rows = by_item(t)
    assert t.num_rows == 3 and counts(t)["errors"] == {"not_found": 2}
    assert rows["---g-f_I2yQ_000001"]["relpath"] == "audio/---g-f_I2yQ_000001.flac"
    assert rows["---g-f_I2yQ_000001"]["labels"] == ["people marching"] and rows["---g-f_I2yQ_000001"]["split"] == "test"
    assert "extract its audio" in rows["--0PQM4-hqg_000030"]["error"]
    assert "not downloaded" in rows["--56QUhyDQM_000185"]["error"]


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def sa1b(tmp_path):
    from PIL import Image

    root = tmp_path / "sa1b"
    root.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buf, "JPEG")
    with tarfile.open(root / "sa_000000.tar", "w") as tf:
        for i in (1, 2):
            add_member(tf, f"sa_{i}.jpg", buf.getvalue())
            add_member(tf, f"sa_{i}.json", json.dumps({"image": {"image_id": i, "width": 8, "height": 6}, "annotations": []}).encode())
        add_member(tf, "sa_3.jpg", buf.getvalue())         # its JSON is missing
    (root / "file_list.txt").write_text("file_name\tcdn_link\nsa_000000.tar\thttps://x/sa_000000.tar\nsa_000001.tar\thttps://x/sa_000001.tar\n")
    return root, buf.getvalue()


def test_sa1b_tar_index_offsets_and_missing_json_and_shard(sa1b):
    root, jpg = sa1b
    t = run_recipe("sa1b", root)
    rows = by_item(t)
    assert t.num_rows == 4 and counts(t)["errors"] == {"not_found": 2}
    r = rows["sa_1"]
    assert r["relpath"] == "sa_000000.tar#sa_1.jpg" and r["nbytes"] == len(jpg)
    with open(root / "sa_000000.tar", "rb") as f:
        f.seek(r["tar_offset"])
        assert f.read(r["nbytes"]) == jpg
    assert "json" in rows["sa_3"]["error"] and rows["sa_000001"]["status"] == "error"


def test_command_writes_relative_table_and_counts(audioset, tmp_path, capsys):
    out = tmp_path / "out" / "audioset.parquet"
    assert cmd.main(["audioset", "--root", str(audioset), "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert t.num_rows == 3 and "2 ok" in capsys.readouterr().out
    assert all(not Path(p).is_absolute() for p in t.column("relpath").to_pylist())
    assert cmd.main(["audioset", "--root", str(tmp_path / "nowhere")]) == 2
    (audioset / "balanced_train_segments.csv").unlink()
    assert cmd.main(["audioset", "--root", str(audioset)]) == 2
    assert "balanced_train_segments.csv not found" in capsys.readouterr().err


def test_config_checks_recipes_against_the_one_registry(make_cfg, monkeypatch):
    """The config check reads the sources' registry (no second list): a corpus registered there is valid."""
    assert CONFIG_RECIPES["audio"] == [n for n, role in RECIPES.items() if role == "audio"]
    with pytest.raises(RecipeError, match="valid choices"):
        run_recipe("nope", ".")
    src = "sources.audio=[{name: x, kind: recipe, recipe: %s, root: /somewhere}]"
    with pytest.raises(ConfigError, match="valid choices: audioset, fsd50k, bbc_sfx, vggsound"):
        make_cfg(src % "newcorpus")
    monkeypatch.setitem(RECIPES, "newcorpus", "audio")
    assert make_cfg(src % "newcorpus").sources.audio[0].recipe == "newcorpus"
    with pytest.raises(ConfigError, match="valid choices: sa1b"):   # an audio corpus is no image source
        make_cfg(src.replace("audio", "images") % "fsd50k")


def test_recipe_sources_in_the_images_and_audio_stages(make_cfg, sa1b, fsd50k):
    """Sources of kind recipe run inside the stages: rows get relpaths, labels, and not_found errors."""
    from sonify.engine.executor import run_stage
    from sonify.engine.store import TableStore
    from sonify.stages import get_stage

    root, _ = sa1b
    cfg = make_cfg(f"sources.images=[{{name: sa1b, kind: recipe, recipe: sa1b, root: '{root}'}}]",
                   f"sources.audio=[{{name: fsd50k, kind: recipe, recipe: fsd50k, root: '{fsd50k}'}}]")
    for stage in ("images", "audio"):
        assert not run_stage(get_stage(stage), cfg, progress_bar=False).failed
    store = TableStore(cfg.run.dir)
    images = {r["uri"]: r for r in store.read("images").to_pylist()}
    assert images["sa_000000.tar#sa_1.jpg"]["status"] == "ok" and images["sa_000000.tar#sa_1.jpg"]["width"] == 8
    assert images["sa_000000.tar#sa_3.jpg"]["error"].startswith("not_found")
    files = {r["uri"]: r for r in store.read("audio_files").to_pylist()}
    assert len(files) == 5 and files["FSD50K.dev_audio/64760.wav"]["labels"] == ["Electric_guitar", "Guitar"]
    assert files["FSD50K.dev_audio/64760.wav"]["status"] == "ok"
    assert files["FSD50K.dev_audio/99999.wav"]["error"].startswith("not_found")


def test_recipe_source_config_errors(make_cfg):
    with pytest.raises(ConfigError, match="sources.audio\\[0\\].recipe'; valid choices: audioset"):
        make_cfg("sources.audio=[{name: a, kind: recipe, recipe: sa1b, root: /x}]")
    with pytest.raises(ConfigError, match="root' is empty"):
        make_cfg("sources.audio=[{name: a, kind: recipe, recipe: fsd50k}]")


def test_sam_pipeline_uses_recipes():
    from sonify.engine.config import load_config
    from sonify.stages import stage_names

    cfg = load_config(["pipeline=sam"], stage_names())
    kinds = {(s.kind, s.recipe) for s in [*cfg.sources.images, *cfg.sources.audio]}
    assert kinds == {("recipe", "sa1b"), ("recipe", "audioset"), ("recipe", "fsd50k"), ("recipe", "bbc_sfx")}
