"""The Hugging Face export round trip: every demo mixture and image comes back decoded."""

from __future__ import annotations

import io
import importlib.util

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageOps

datasets = pytest.importorskip("datasets")

from sonify import export as cmd  # noqa: E402
from sonify.engine.store import TableStore  # noqa: E402
from sonify.publish.hf import decode_audio  # noqa: E402
from sonify.sources import SourcePaths
from sonify.sources.images import read_image_bytes  # noqa: E402


def torchcodec_works() -> bool:
    if importlib.util.find_spec("torchcodec") is None:
        return False
    try:
        from torchcodec.decoders import AudioDecoder  # noqa: F401
        return True
    except Exception:
        return False


def decoded(example) -> tuple[np.ndarray, int]:
    """The audio as `datasets` decodes it (torchcodec), or with soundfile where torchcodec cannot load."""
    a = example["audio"]
    if isinstance(a, dict):
        return decode_audio(example)
    s = a.get_all_samples()
    return s.data.numpy().T.squeeze(), s.sample_rate


@pytest.fixture(scope="module")
def exported(full_run, tmp_path_factory):
    cfg, _ = full_run
    out = tmp_path_factory.mktemp("hf") / "demo"
    assert cmd.main(["hf", f"run={cfg.run.dir}", "--out", str(out), "--rows-per-parquet", "8"]) == 0
    return cfg, out


@pytest.mark.parametrize("how", ["load_from_disk", "parquet"])
def test_round_trip_decodes_every_mixture_and_image(exported, how):
    cfg, out = exported
    store = TableStore(cfg.run.dir)
    if how == "load_from_disk":
        ds = datasets.load_from_disk(str(out))
    else:
        ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (out / "parquet").glob("*.parquet")),
                                   split="train", cache_dir=str(out.parent / "cache"))
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["audio"], datasets.Audio)
    assert ds.features["audio"].decode and ds.features["image"].decode
    if not torchcodec_works():
        # datasets >= 4 decodes Audio with torchcodec, which cannot load next to the CPU torch here (README)
        with pytest.raises(ImportError, match="torchcodec"):
            ds[0]["audio"]
        ds = ds.cast_column("audio", datasets.Audio(decode=False))
    mixes = {m["id"]: m for m in store.read("mixes").to_pylist() if m["status"] == "ok"}
    images = {r["id"]: r for r in store.read("images").to_pylist()}
    split = {r["mix_id"]: r["split"] for r in store.read("shard_index").to_pylist()}
    assert len(ds) == len(mixes) and set(ds["id"]) == set(mixes)
    for ex in ds:
        m = mixes[ex["id"]]
        samples, rate = decoded(ex)
        ref, ref_rate = sf.read(cfg.run.dir + "/" + m["path"])
        assert rate == ref_rate == m["sample_rate"] and samples.shape == ref.shape
        np.testing.assert_allclose(samples, ref, rtol=0, atol=1e-6)
        img = images[ex["image_id"]]
        with Image.open(io.BytesIO(read_image_bytes(SourcePaths.of(cfg, "images").locate(img), img["tar_offset"], img["nbytes"]))) as f:
            # datasets applies the EXIF orientation, as sonify's images table does (width/height upright)
            assert np.array_equal(np.asarray(ex["image"]), np.asarray(ImageOps.exif_transpose(f)))
            assert ex["image"].size == (img["width"], img["height"])
        assert ex["split"] == split[ex["id"]] and ex["lufs"] == pytest.approx(m["lufs"])
        assert [c["chunk_id"] for c in ex["components"]] == [c["chunk_id"] for c in m["components"]]
        assert all(c["threshold"] is not None and c["target_lufs"] is not None for c in ex["components"])
        assert [c["text"] for c in ex["concepts"]] == [c["text"] for c in ex["components"]]


def test_export_of_a_folder_without_a_run_fails_in_one_line(tmp_path, capsys):
    assert cmd.main(["hf", f"run={tmp_path}", "--out", str(tmp_path / "x")]) == 2
    assert "no images table" in capsys.readouterr().err and not (tmp_path / "x").exists()
