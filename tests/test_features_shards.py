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
from sonify.engine.partitions import work_table
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


@pytest.mark.parametrize("n_frames", [498, 250])
def test_ast_position_embeddings_are_cropped_from_the_middle_of_time(tmp_path, n_frames):
    """AST's recipe for shorter clips: keep the [cls] and [dist] embeddings, and per frequency row the
    t_new time columns in the middle of the pretrained t_max (start = t_max // 2 - t_new // 2)."""
    import shutil

    import torch
    from transformers import ASTModel

    from sonify.models.encoders import ASTEncoder
    from sonify.models.loading import resolve_model

    src = Path(resolve_model("tiny:ast", tmp_path / "tiny"))
    labelled = tmp_path / "ast_labelled"            # position embedding of token i = i in every dimension
    shutil.copytree(src, labelled)
    model = ASTModel.from_pretrained(src)
    n_tokens = model.embeddings.position_embeddings.shape[1]
    model.embeddings.position_embeddings.data = torch.arange(n_tokens, dtype=torch.float32)[None, :, None].expand_as(
        model.embeddings.position_embeddings).clone()
    model.save_pretrained(labelled)
    enc = ASTEncoder(str(labelled), str(tmp_path / "tiny"), n_frames, pooling="mean", device="cpu", dtype="float32")
    got = enc.model.embeddings.position_embeddings.detach()[0, :, 0].numpy()
    c = enc.model.config
    f_dim = (c.num_mel_bins - c.patch_size) // c.frequency_stride + 1
    t_max = (512 - c.patch_size) // c.time_stride + 1             # the tiny model's pretrained max_length is 512
    t_new = (n_frames - c.patch_size) // c.time_stride + 1
    start = t_max // 2 - t_new // 2
    assert n_tokens == 2 + f_dim * t_max and start > 0
    # patches are frequency-major (token 2 + f * T + t); [cls] and [dist] (tokens 0, 1) stay
    expected = [0, 1] + [2 + f * t_max + start + t for f in range(f_dim) for t in range(t_new)]
    assert got.tolist() == expected
    (out,) = enc.encode([np.random.default_rng(0).standard_normal(n_frames * 160 + 240).astype(np.float32) * 0.1])
    assert out.shape == (t_new, c.hidden_size) and np.isfinite(out).all() and out.std() > 0


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


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (64, 64), (50, 500), (301, 200)])
def test_center_crop_is_square_and_centred(size):
    """The image's central square (red, with a yellow ring inside its edge) fills the crop; the bands
    outside it (blue) are cut away. A shifted crop shows blue on one side and loses the ring on the
    other; a crop too tight loses the ring; one too wide shows blue."""
    w, h = size
    side = min(w, h)
    x0, y0 = (w - side) // 2, (h - side) // 2
    ring = side // 8
    a = np.zeros((h, w, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[y0:y0 + side, x0:x0 + side] = (255, 255, 0)
    a[y0 + ring:y0 + side - ring, x0 + ring:x0 + side - ring] = (255, 0, 0)
    out = np.asarray(center_crop(Image.fromarray(a), 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert out[1:-1, 1:-1, 2].max() < 60                         # no outside band (bicubic may touch the outer pixel)
    band = 64 // 8 - 3                                            # well inside the ring, past the resampling blur
    for edge in (out[10:-10, 1:band], out[10:-10, -band:-1], out[1:band, 10:-10], out[-band:-1, 10:-10]):
        assert edge[..., 1].mean() > 200                          # the ring, on every side
    assert out[12:-12, 12:-12, 1].max() < 40                      # the red centre, not zoomed in


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
    work = work_table(FeaturesStage.work_list(other, store)).slice(0, 2)
    (Path(other.run.dir) / work.column("path")[0].as_py()).write_bytes(b"not flac")
    features = FeaturesStage(other)
    features.partition = "part-test"
    rows = features.process_batch(work)["audio_features"].to_pylist()
    assert rows[0]["error"].startswith("decode_error:") and rows[1]["status"] == "ok"
    lw = work_table(LatentsStage.work_list(other, store)).slice(0, 2).to_pylist()
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
