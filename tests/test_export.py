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
from sonify.engine.errors import ConfigError  # noqa: E402
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


def _bare_run(root, *tables: str):
    """A run folder whose `tables` each hold one empty partition (of its declared schema)."""
    from sonify.engine.schemas import table_spec

    store = TableStore(root)
    for name in tables:
        store.write_partition(name, "p0", table_spec(name).schema.empty_table())
    return root


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sonify.export: "), err
    return err[0]


@pytest.mark.parametrize("where", ["the run", "above the run", "inside the run", "a manifests folder"])
def test_export_refuses_an_out_that_would_replace_the_run(tmp_path, where, capsys):
    """`--out` replaces its folder whole: the run folder, a folder holding it or one inside it is refused in one
    line, before anything is written (the run's tables are all still there)."""
    run = _bare_run(tmp_path / "top" / "run", "images", "mixes")
    out = {"the run": run, "above the run": tmp_path / "top", "inside the run": run / "hf",
           "a manifests folder": run / "manifests" / "mixes"}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cmd.main(["hf", f"run={run}", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "--out" in line and "the run folder" in line, line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_export_refuses_a_folder_holding_other_files(tmp_path, capsys):
    run = _bare_run(tmp_path / "run", "images", "mixes")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    assert cmd.main(["hf", f"run={run}", "--out", str(tmp_path / "mine")]) == 2
    line = _one_line(capsys)
    assert "--out" in line and "other files" in line and (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_an_earlier_export_may_be_replaced(exported, tmp_path):
    """The export marks its folder; a second export to the same `--out` is allowed (and an empty folder too)."""
    from sonify.publish.hf import MARKER, check_out

    cfg, out = exported
    assert (out / MARKER).is_file()
    check_out(cfg.run.dir, out)   # no error
    marker = (out / MARKER).read_text()
    try:
        (out / MARKER).unlink()   # an export written before the marker: what save_to_disk writes, plus parquet/
        check_out(cfg.run.dir, out)
        (out / "notes.txt").write_text("x")   # anything else in it: not an export any more
        with pytest.raises(ConfigError, match="other files"):
            check_out(cfg.run.dir, out)
    finally:   # the module's other tests read the same export
        (out / "notes.txt").unlink(missing_ok=True)
        (out / MARKER).write_text(marker)
    (tmp_path / "empty").mkdir()
    check_out(cfg.run.dir, tmp_path / "empty")


def test_export_of_a_run_without_mixes_is_one_line(tmp_path, capsys):
    """The mixes table is checked before the dataset is written: the store's one line, not the generator's traceback."""
    run = _bare_run(tmp_path / "run", "images")
    assert cmd.main(["hf", f"run={run}", "--out", str(tmp_path / "x")]) == 2
    line = _one_line(capsys)
    assert "table 'mixes' has no partitions" in line and "run its stage first" in line, line
    assert not (tmp_path / "x").exists()
