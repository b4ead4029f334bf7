import math

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from sonify.media.audio import load_chunk
from sonify.stages.audio import AudioStage


@pytest.mark.parametrize("sr, seconds, starts, last_frames", [
    (48000, 34.0, [i * 240000 for i in range(7)], 4 * 48000),   # 34 s: 7 chunks, the last 4 s + 1 s padding
    (16000, 0.3, [0], 4800),                                     # shorter than a chunk: one, mostly padding
    (22050, 10.0, [0, 110250], 110250),                          # an exact multiple: no padding
])
def test_the_stage_cuts_non_overlapping_chunks_and_pads_the_last(tmp_path, make_cfg, sr, seconds, starts, last_frames):
    """DESIGN: mono, non-overlapping 5 s chunks pointing into the source, the last one zero-padded."""
    path = tmp_path / f"noise_{sr}.wav"
    sf.write(path, 0.1 * np.random.default_rng(sr).standard_normal(int(round(sr * seconds))), sr, subtype="FLOAT")
    files, chunks = _one(path, make_cfg)
    assert files[0]["status"] == "ok" and files[0]["num_chunks"] == len(starts)
    assert [c["start_frame"] for c in chunks] == starts and [c["chunk_index"] for c in chunks] == list(range(len(starts)))
    assert all(c["num_frames"] == 5 * sr and c["padding"] == 0 for c in chunks[:-1])
    assert chunks[-1]["num_frames"] == last_frames
    assert chunks[-1]["padding"] == pytest.approx(5.0 - last_frames / sr)
    assert sum(c["num_frames"] for c in chunks) == files[0]["frames"] == int(round(sr * seconds))


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
def test_load_chunk_resamples_from_source_and_pads(tmp_path, sr):
    t = np.arange(int(sr * 7.0)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "tone.wav"
    sf.write(path, np.stack([x, x], 1), sr, subtype="FLOAT")
    last = load_chunk(str(path), 5 * sr, 2 * sr, 48000, chunk_seconds=5.0)
    assert last.shape == (240000,) and last.dtype == np.float32
    assert np.all(last[2 * 48000 + 200:] == 0)                  # padding after the real 2 s
    assert 0.45 < np.max(np.abs(last[:2 * 48000])) < 0.55        # stereo downmix keeps the level
    # the dominant frequency survives resampling
    spec = np.abs(np.fft.rfft(last[:96000]))
    assert abs(np.argmax(spec) * 48000 / 96000 - 440) < 2


def _stage(make_cfg, *o):
    return AudioStage(make_cfg(*o))


def _process(stage, listing: pa.Table):
    out = stage.process_batch(listing)
    return out["audio_files"].to_pylist(), out["audio_chunks"].to_pylist()


def test_audio_stage_on_demo_sources(make_cfg):
    cfg = make_cfg()
    stage = AudioStage(cfg)
    files, chunks = _process(stage, AudioStage.work_list(cfg, None))
    by_name = {f["uri"].rsplit("/", 1)[-1]: f for f in files}
    engine = by_name["engine_48000hz_2ch.flac"]
    assert engine["status"] == "ok" and engine["num_chunks"] == 7 and engine["channels"] == 2
    eng_chunks = [c for c in chunks if c["file_id"] == engine["id"]]
    assert len(eng_chunks) == 7 and math.isclose(eng_chunks[-1]["padding"], 1.0)
    assert {f["sample_rate"] for f in files if f["status"] == "ok"} >= {8000, 16000, 22050, 44100, 48000}
    assert math.isclose(by_name["click_48000hz_1ch.wav"]["duration"], 0.3)
    assert by_name["empty.wav"]["error"].startswith("empty:")
    assert by_name["corrupt.wav"]["error"].startswith("corrupt:")
    assert by_name["truncated.flac"]["status"] == "error"
    assert by_name["missing.wav"]["error"].startswith("not_found:")
    silent = by_name["silent_16000hz_1ch.wav"]
    assert silent["error"].startswith("silent:")
    assert all(c["error"].startswith("silent:") for c in chunks if c["file_id"] == silent["id"])
    labelled = by_name["crowd_cheer.flac"]
    assert labelled["labels"] == ["Cheering", "Crowd"] and labelled["uri"] == "labelled/crowd_cheer.flac" and "relpath" not in labelled
    # chunk ids are unique and every ok chunk decodes to exactly 5 s at 48 kHz
    assert len({c["id"] for c in chunks}) == len(chunks)
    for c in [c for c in chunks if c["status"] == "ok"][:5]:
        assert load_chunk(stage.paths.locate(c), c["start_frame"], c["num_frames"], 48000, 5.0).shape == (240000,)


def test_audio_stage_wrong_rate_and_many_channels(tmp_path, make_cfg):
    path = tmp_path / "six.wav"
    sf.write(path, np.full((11025, 6), 0.1, np.float32), 11025, subtype="FLOAT")
    listing = pa.Table.from_pylist([{"id": "x", "source": "t", "uri": str(path), "labels": [], "list_error": None}])
    files, chunks = _process(_stage(make_cfg), listing)
    assert files[0]["status"] == "ok" and files[0]["channels"] == 6 and files[0]["sample_rate"] == 11025
    assert len(chunks) == 1 and math.isclose(chunks[0]["peak_dbfs"], 20 * math.log10(0.1), abs_tol=1e-3)


def test_audio_stage_nonfinite_samples_are_error_rows(tmp_path, make_cfg):
    path = tmp_path / "nan.wav"
    x = np.zeros(16000, np.float32)
    x[100] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    listing = pa.Table.from_pylist([{"id": "n", "source": "t", "uri": str(path), "labels": [], "list_error": None}])
    files, chunks = _process(_stage(make_cfg), listing)
    assert files[0]["error"].startswith("corrupt:") and chunks == []


def _one(path, make_cfg):
    listing = pa.Table.from_pylist([{"id": "f", "source": "t", "uri": str(path), "labels": [], "list_error": None}])
    return _process(_stage(make_cfg), listing)


def test_antiphase_stereo_is_channels_cancel_not_silent(tmp_path, make_cfg):
    x = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000 * 7) / 16000)
    sf.write(tmp_path / "anti.wav", np.stack([x, -x], 1).astype(np.float32), 16000, subtype="FLOAT")
    files, chunks = _one(tmp_path / "anti.wav", make_cfg)
    assert files[0]["error"].startswith("channels_cancel:") and "antiphase" in files[0]["error"]
    assert len(chunks) == 2 and all(c["error"].startswith("channels_cancel:") for c in chunks)
    sf.write(tmp_path / "quiet.wav", np.zeros((16000, 2), np.float32), 16000, subtype="FLOAT")
    assert _one(tmp_path / "quiet.wav", make_cfg)[0][0]["error"].startswith("silent:")   # true silence stays silent


def _cut(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("fraction", [1 / 3, 0.9])
def test_truncated_wav_is_truncated(tmp_path, make_cfg, fraction):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "full.wav", rng.normal(0, 0.1, (22050 * 12, 2)).astype(np.float32), 22050, subtype="PCM_16")
    assert _one(tmp_path / "full.wav", make_cfg)[0][0]["status"] == "ok"
    files, chunks = _one(_cut(tmp_path / "full.wav", tmp_path / "cut.wav", fraction), make_cfg)
    assert files[0]["error"].startswith("truncated:") and "RIFF data chunk" in files[0]["error"] and chunks == []


@pytest.mark.parametrize("fraction", [1 / 3, 0.9])
def test_truncated_flac_is_truncated(tmp_path, make_cfg, fraction):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "full.flac", rng.normal(0, 0.1, 44100 * 12).astype(np.float32), 44100, format="FLAC")
    assert _one(tmp_path / "full.flac", make_cfg)[0][0]["status"] == "ok"
    files, chunks = _one(_cut(tmp_path / "full.flac", tmp_path / "cut.flac", fraction), make_cfg)
    assert files[0]["error"].startswith("truncated:") and chunks == []


def test_declared_frames_reads_the_headers_not_the_decoder(tmp_path):
    from sonify.media.audio import declared_frames

    sf.write(tmp_path / "a.wav", np.zeros((1234, 3), np.float32), 8000, subtype="PCM_24")
    sf.write(tmp_path / "a.flac", np.zeros(4321, np.float32), 8000, format="FLAC")
    sf.write(tmp_path / "a.ogg", np.zeros(4000, np.float32), 8000, format="OGG")
    assert declared_frames(str(tmp_path / "a.wav")) == (1234, "RIFF data chunk")
    assert declared_frames(str(tmp_path / "a.flac")) == (4321, "FLAC STREAMINFO")
    assert declared_frames(str(tmp_path / "a.ogg"))[0] is None
    cut = _cut(tmp_path / "a.wav", tmp_path / "b.wav", 0.5)
    assert declared_frames(str(cut))[0] == 1234 and sf.info(str(cut)).frames < 1234   # libsndfile counts what is there
