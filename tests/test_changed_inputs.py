"""Changed inputs are seen: a file replaced under the same name is read again (its listing records size and
modification time), and its content digest decides what recomputes downstream."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ALL_STAGES
from test_lineage import run_all as _run_all

from sonify.engine.config import load_config
from sonify.engine.store import TableStore
from sonify.sources.audio import list_audio
from sonify.sources.images import list_images
from sonify.stages import stage_names

TABLES = ("images", "audio_files", "audio_chunks", "concepts", "captions", "kept_images", "audio_embeddings",
          "concept_embeddings", "matches", "mixes", "audio_features", "image_latents", "shard_index")


def _later(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def test_the_listing_records_size_and_time_so_a_replaced_file_is_new_work(tmp_path, demo_dir):
    from sonify.engine.config import SourceConf

    data = tmp_path / "data"
    shutil.copytree(demo_dir / "images", data / "images")
    shutil.copytree(demo_dir / "audio", data / "audio")
    shutil.copytree(demo_dir / "sa1b", data / "sa1b")
    images = SourceConf(name="f", kind="folder", path=str(data / "images"))
    tars = SourceConf(name="t", kind="tar", path=str(data / "sa1b"))
    audio = SourceConf(name="a", kind="folder", path=str(data / "audio"))
    exts = [".jpg", ".png", ".jpeg", ".webp"]
    before = [list_images(images, exts).to_pylist(), list_images(tars, exts).to_pylist(), list_audio(audio, [".wav"]).to_pylist()]
    assert all(r["size"] is not None and r["mtime_ns"] for rows in before for r in rows if not r["list_error"])
    shutil.copy(data / "images" / "scene_002.jpg", data / "images" / "scene_001.jpg")   # another picture, same name
    _later(data / "audio" / "bell_8000hz_1ch.wav")                                       # touched: a new time
    tar = sorted((data / "sa1b").glob("*.tar"))[0]
    _later(tar)
    after = [list_images(images, exts).to_pylist(), list_images(tars, exts).to_pylist(), list_audio(audio, [".wav"]).to_pylist()]
    changed = [{r["uri"] for r in b if r not in a} for b, a in zip(after, before)]
    assert changed[0] == {"scene_001.jpg"} and changed[2] == {"bell_8000hz_1ch.wav"}
    assert changed[1] and all(r.startswith(tar.name + "#") for r in changed[1])   # every member of the rewritten tar


def _cfg(tmp_path: Path, data: Path, name: str):
    return load_config(["pipeline=demo", f"run.root={tmp_path / name}", f"demo_data.dir={data}", "demo_data.enabled=false",
                        "run.executor=local", "run.progress=false", "models.vlms=[]", f"models.tiny_dir={tmp_path / 'tiny'}",
                        "stages.images.partition_rows=4", "stages.audio.partition_rows=2", "stages.latents.partition_rows=4",
                        "stages.mix.partition_rows=4", "stages.features.partition_rows=4"], stage_names())


def _tables(cfg) -> dict[str, dict]:
    """Every table by id, partition names blanked (a fresh run cuts its partitions differently)."""
    store = TableStore(cfg.run.dir)
    blank = lambda v: re.sub(r"part-[0-9a-f]{16}", "part-*", v) if isinstance(v, str) else v
    out = {}
    for t in TABLES:
        rows = store.read(t).to_pylist() if store.exists(t) else []
        out[t] = {r["id"]: {k: blank(v) for k, v in r.items()} for r in rows}
    return out


def _differs(a: dict, b: dict) -> set[str]:
    return {i for i in set(a) | set(b) if a.get(i) != b.get(i)}


@pytest.mark.slow
def test_a_replaced_image_and_audio_file_recompute_exactly_their_rows_and_a_touch_recomputes_nothing_downstream(
        tmp_path, demo_dir):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    cfg = _cfg(tmp_path, data, "runs")
    _run_all(cfg)
    first = _tables(cfg)
    image, wav = data / "images" / "scene_001.jpg", data / "audio" / "dog_bark_16000hz_1ch.wav"

    # touched, not changed: each is read again (one partition), and nothing downstream recomputes
    _later(image)
    _later(wav)
    computed = _run_all(cfg)
    assert computed == {s: int(s in ("images", "audio")) for s in ALL_STAGES}, computed
    assert _tables(cfg) == first

    # replaced under the same names: another picture (another size), the sound reversed (the same size)
    old_size = wav.stat().st_size
    shutil.copy(data / "images" / "scene_002.jpg", image)
    x, sr = sf.read(wav, dtype="int16", always_2d=True)
    info = sf.info(wav)
    sf.write(wav, np.ascontiguousarray(x[::-1]), sr, subtype=info.subtype, format=info.format)
    assert wav.stat().st_size == old_size
    _later(wav)
    computed = _run_all(cfg)
    assert computed["images"] == 1 and computed["audio"] == 1 and computed["embed_audio"] >= 1
    assert computed["concepts"] == computed["filter"] == computed["embed_text"] == 0   # imported concepts: not the pixels
    second = _tables(cfg)
    image_id = next(i for i, r in second["images"].items() if r["uri"] == "scene_001.jpg")
    wav_id = next(i for i, r in second["audio_files"].items() if r["uri"] == wav.name)
    assert _differs(first["images"], second["images"]) == {image_id}
    assert _differs(first["audio_files"], second["audio_files"]) <= {wav_id}
    assert _differs(first["audio_chunks"], second["audio_chunks"]) == {c for c in second["audio_chunks"] if c.startswith(wav_id)}
    assert _differs(first["audio_embeddings"], second["audio_embeddings"]) <= {c for c in second["audio_chunks"] if c.startswith(wav_id)}
    assert _differs(first["image_latents"], second["image_latents"]) <= {image_id}
    assert second["images"][image_id]["sha256"] != first["images"][image_id]["sha256"]

    fresh = _cfg(tmp_path, data, "fresh")
    _run_all(fresh)
    assert _tables(fresh) == second   # row for row what a fresh run over the changed files makes
