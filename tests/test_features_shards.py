"""Stages `features`, `latents` and `shards`: AST time series, VAE latents, WebDataset tars."""

import glob
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_run
from PIL import Image

from sonify.engine.config import load_config
from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.media.image import center_crop
from sonify.models.encoders import kaldi_frames
from sonify.stages import get_stage, stage_names
from sonify.training.data import expand_shards


@pytest.fixture
def shard_run(full_run):
    return full_run


def test_ast_time_series_for_5s_clips(shard_run):
    cfg, _ = shard_run
    rows = TableStore(cfg.run.dir).read("audio_features").to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows)
    assert {r["input_frames"] for r in rows} == {kaldi_frames(80000)} == {498}   # 5 s, not padded to 1024
    f = np.load(Path(cfg.run.dir) / rows[0]["path"])
    assert f.dtype == np.float16 and f.shape == (rows[0]["frames"], rows[0]["dim"]) == (49, 32)


def test_ast_pooling_none_keeps_all_patch_tokens(tmp_path):
    from sonify.models.encoders import ASTEncoder

    enc = ASTEncoder("tiny:ast", str(tmp_path), 498, pooling="none", device="cpu", dtype="float32")
    (out,) = enc.encode([np.zeros(80000, np.float32)])
    assert out.shape == (12 * 49, 32) and enc.model.config.max_length == 498


def test_latents_store_mean_and_std(shard_run):
    cfg, _ = shard_run
    store = TableStore(cfg.run.dir)
    rows = store.read("image_latents").to_pylist()
    kept = {r["id"] for r in store.read("kept_images").to_pylist() if r["kept"]}
    assert {r["id"] for r in rows} == kept and all(r["status"] == "ok" for r in rows)
    lat = np.load(Path(cfg.run.dir) / rows[0]["path"])
    assert lat.dtype == np.float16 and lat.shape == (2, rows[0]["channels"], rows[0]["height"], rows[0]["width"])
    assert np.all(lat[1] > 0) and rows[0]["scaling_factor"] == pytest.approx(0.18215)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (64, 64), (50, 500)])
def test_center_crop_is_square_and_centred(size):
    im = Image.new("RGB", size, (0, 0, 0))
    out = center_crop(im, 64)
    assert out.size == (64, 64)


def _samples(urls):
    import webdataset as wds

    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())


def test_shards_read_back_with_webdataset_and_tarfile(shard_run):
    cfg, _ = shard_run
    store = TableStore(cfg.run.dir)
    urls = expand_shards(f"{cfg.run.dir}/shards/train.txt") + expand_shards(f"{cfg.run.dir}/shards/val.txt")
    samples = _samples(urls)
    index = store.read("shard_index").to_pylist()
    assert len(samples) == len(index) and all(r["status"] == "ok" for r in index)
    for s in samples:
        assert "." not in s["__key__"] and "/" not in s["__key__"]
        assert s["latent.npy"].dtype == np.float16 and s["latent.npy"].shape[0] == 2
        assert s["ast.npy"].dtype == np.float16 and s["ast.npy"].shape == (49, 32)
        meta = s["json"]
        assert meta["image_id"] and meta["variant"] and meta["components"] and meta["lufs"] < 0
        assert Image.open(__import__("io").BytesIO(s["jpg"])).size == (64, 64)
    for url in urls:
        with tarfile.open(url) as tf:
            names = tf.getnames()
            assert len(names) == 5 * len({n.split(".")[0] for n in names})
        summary = json.loads(Path(url.replace(".tar", ".json")).read_text())
        assert summary["count"] == len(names) // 5


def test_every_kept_variant_exactly_once_and_images_on_one_side(shard_run):
    cfg, _ = shard_run
    store = TableStore(cfg.run.dir)
    index = store.read("shard_index").to_pylist()
    mixes = {m["id"] for m in store.read("mixes").to_pylist() if m["status"] == "ok"}
    assert sorted(r["mix_id"] for r in index) == sorted(mixes)
    sides = {}
    for r in index:
        sides.setdefault(r["image_id"], set()).add(r["split"])
    assert all(len(v) == 1 for v in sides.values())
    assert {r["split"] for r in index} == {"train", "val"}
    assert max(r["position"] for r in index) < cfg.stages.shards.samples_per_shard


def test_shards_are_deterministic_and_skip_when_done(shard_run, tmp_path):
    cfg, args = shard_run
    other = copy_run(shard_run, tmp_path, "run.force=true")
    run_stage(get_stage("shards"), other, progress_bar=False)
    digest = lambda d: {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in glob.glob(f"{d}/shards/part-*/*.tar")}
    assert digest(cfg.run.dir) == digest(other.run.dir)
    again = run_stage(get_stage("shards"), load_config([*args, f"run.root={tmp_path / 'runs'}"], stage_names()), progress_bar=False)
    assert again.computed == 0 and again.skipped == again.partitions


def test_missing_feature_file_is_an_error_row_and_the_shard_is_still_written(shard_run, tmp_path):
    other = copy_run(shard_run, tmp_path, "run.force=true")
    victim = TableStore(other.run.dir).read("audio_features").to_pylist()[0]
    (Path(other.run.dir) / victim["path"]).unlink()
    run = run_stage(get_stage("shards"), other, progress_bar=False)
    assert not run.failed and run.tables["shard_index"]["errors"] == {"missing_input": 1}
    assert len(_samples(sorted(glob.glob(f"{other.run.dir}/shards/part-*/*.tar")))) == run.tables["shard_index"]["ok"]


def test_corrupt_mixture_and_vanished_image_are_error_rows(shard_run, tmp_path):
    import pyarrow as pa

    from sonify.stages.features import FeaturesStage
    from sonify.stages.latents import LatentsStage

    other = copy_run(shard_run, tmp_path)
    store = TableStore(other.run.dir)
    work = FeaturesStage.work_list(other, store).slice(0, 2)
    (Path(other.run.dir) / work.column("path")[0].as_py()).write_bytes(b"not flac")
    features = FeaturesStage(other)
    features.partition = "part-test"
    rows = features.process_batch(work)["audio_features"].to_pylist()
    assert rows[0]["error"].startswith("decode_error:") and rows[1]["status"] == "ok"
    lw = LatentsStage.work_list(other, store).slice(0, 2).to_pylist()
    lw[0]["uri"], lw[0]["tar_offset"] = str(tmp_path / "gone.png"), None
    latents = LatentsStage(other)
    latents.partition = "part-test"
    out = latents.process_batch(pa.Table.from_pylist(lw))["image_latents"].to_pylist()
    assert out[0]["error"].startswith("unreadable:") and out[1]["status"] == "ok"


@pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [10240, 3], [100000] * 3])
def test_tar_stream_is_byte_identical_to_tarfile(tmp_path, sizes):
    import io

    from sonify.media.tar import TarStream

    members = [(f"k{i:03d}_x.part{i}", bytes([i % 256]) * n) for i, n in enumerate(sizes)]
    with open(tmp_path / "ours.tar", "wb") as f:
        t = TarStream(f)
        for name, data in members:
            t.add(name, data)
        t.close()
    with tarfile.open(tmp_path / "ref.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()
