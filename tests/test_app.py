"""The app's plain functions (`sonify.webapp`) on the shared demo run: search, sonify, mixture, bad inputs.

The references are written from the definitions: cosine top-k by NumPy over the pool matrix, Algorithm 1
by `paper_algorithm1` (conftest), the mix stage's own FLAC for the mixture rule. The browser test and
the draw tab with a trained checkpoint are in test_app_browser.py (slow)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sonify import app as cmd
from sonify.engine.keys import keyed_rng
from sonify.engine.store import TableStore
from sonify.webapp import draw_tab, search_tab, sonify_tab
from sonify.webapp.runtime import AppConf, AppError, AppRun


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def opened(full_run):
    cfg, _ = full_run
    before = snapshot(Path(cfg.run.dir))
    app = AppRun(cfg.run.dir, None, AppConf(page_size=5))
    yield cfg, app, before
    temp = app.temp.dir
    app.close()
    assert not temp.exists()


def reference_query(app: AppRun, text: str) -> np.ndarray:
    """The query as the embed stage stores it: CLAP text features, unit length (NumPy), float16."""
    v = app.clap.embed_text([text])[0].astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float16).astype(np.float32)


def pool_matrix(cfg) -> tuple[np.ndarray, list[str]]:
    import pyarrow.parquet as pq

    d = Path(cfg.run.dir) / "matrices"
    return (np.load(d / "audio_embeddings.npy").astype(np.float32),
            pq.read_table(d / "audio_embeddings.ids.parquet").column("id").to_pylist())


def test_the_pool_is_memory_mapped_read_only(opened):
    _, app, _ = opened
    assert isinstance(app.pool, np.memmap) and not app.pool.flags.writeable


def test_search_ranks_by_numpy_cosine_and_pages_without_overlap(opened):
    cfg, app, _ = opened
    pool, ids = pool_matrix(cfg)
    cos = pool @ reference_query(app, "a dog barking")
    order = sorted(range(len(ids)), key=lambda i: (-float(cos[i]), i))
    first = search_tab.search(app, "a dog barking", 0)
    assert first.rows[0]["chunk_id"] == ids[int(np.argmax(cos))]
    assert first.pages == -(-len(ids) // 5)
    seen = [r["chunk_id"] for p in range(first.pages) for r in search_tab.search(app, "a dog barking", p, players=False).rows]
    assert seen == [ids[i] for i in order]                     # every chunk once, in cosine order
    assert [r["cosine"] for r in first.rows] == pytest.approx([float(cos[i]) for i in order[:5]], abs=1e-5)
    r = first.rows[0]
    x, rate = sf.read(r["audio"])
    assert rate == 16000 and x.shape[0] == int(16000 * float(cfg.stages.audio.chunk_seconds))
    assert r["uri"] and r["source"] in {"demo_sfx", "demo_labelled"}


def test_top_rows_breaks_ties_by_row():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], np.float32)
    full = np.lexsort((np.arange(6), -scores.astype(np.float64)))
    for start, stop in ((0, 2), (2, 4), (4, 6), (1, 5), (5, 9)):
        assert search_tab.top_rows(scores, start, stop).tolist() == full[start:stop].tolist()


def test_sonify_picks_algorithm1s_keyed_choice(opened, paper_algorithm1):
    cfg, app, _ = opened
    pool, ids = pool_matrix(cfg)
    texts = sonify_tab.parse_typed("dog - barking\n* rain on a tin roof\n\nbell", "{line}", 8)
    assert texts == ["dog - barking", "rain on a tin roof", "bell"]
    k = int(cfg.stages.retrieve.k)
    for draw in (0, 1, 2):
        rows = sonify_tab.match(app, texts, "img0", sonify_tab.TYPED, draw)
        for i, (text, r) in enumerate(zip(texts, rows)):
            key = (int(cfg.run.seed), "img0", sonify_tab.TYPED, i) + (("draw", draw) if draw else ())
            eligible, chosen = paper_algorithm1(reference_query(app, text), pool, k, keyed_rng(*key))
            assert r["chunk_id"] == ids[chosen] and r["n_eligible"] == eligible.size
            assert r["chunk_id"] in {ids[j] for j in eligible}
            t = np.sort(np.sign(pool @ reference_query(app, text)) * np.sqrt(np.abs(pool @ reference_query(app, text))))[::-1]
            assert r["threshold"] == pytest.approx(float(t[:k].mean()), abs=1e-5)
            assert r["score"] == pytest.approx(float(np.sign(r["cosine"]) * np.sqrt(abs(r["cosine"]))), abs=1e-9)
    assert sonify_tab.match(app, texts, "img0") == sonify_tab.match(app, texts, "img0")   # keyed: reproducible


def test_the_mixture_is_the_mix_stages_own(opened):
    """The app's mixture of a variant's matched chunks, keyed as the stage keys it, equals the stage's FLAC."""
    cfg, app, _ = opened
    store = TableStore(cfg.run.dir)
    mix = next(m for m in store.read("mixes").to_pylist() if m["status"] == "ok" and m["n_components"] >= 2)
    rows = []
    for c in mix["components"]:
        info = app.chunk_info([c["chunk_id"]])[0]
        rows.append({**info, "concept_index": c["concept_index"], "text": c["text"]})
    res = sonify_tab.mixture(app, rows, mix["image_id"], mix["variant"])
    ours, rate = sf.read(res.mixture)
    theirs, rate2 = sf.read(Path(cfg.run.dir) / mix["path"])
    assert rate == rate2 and ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) < 2.0 / 32768          # 16-bit WAV of the same samples
    assert res.mix_gain_db == pytest.approx(mix["mix_gain_db"], abs=1e-9)
    assert res.mixture_lufs == pytest.approx(mix["lufs"], abs=1e-6)
    for r, c in zip(res.rows, mix["components"]):
        assert r["target_lufs"] == pytest.approx(c["target_lufs"], abs=1e-12)


def test_a_silent_chunk_is_left_out_with_a_note(opened, monkeypatch):
    _, app, _ = opened
    rows = sonify_tab.match(app, ["dog - barking"], "img1")
    monkeypatch.setattr(app, "chunk_audio", lambda info, rate: np.zeros(int(rate * app.chunk_seconds)))
    res = sonify_tab.mixture(app, rows, "img1", sonify_tab.TYPED)
    assert res.mixture is None and "silent" in res.notes[0] and "no audible chunk" in res.notes[1]


def test_bad_images_and_uploads_give_one_line(opened, tmp_path):
    _, app, _ = opened
    bad = tmp_path / "photo.jpg"
    bad.write_text("not an image at all")
    with pytest.raises(AppError, match="cannot be decoded"):
        sonify_tab.decode_image(app, bad)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 3000)
    small = AppRun.__new__(AppRun)
    small.conf, small.cfg = AppConf(max_upload_mb=0.001), app.cfg
    with pytest.raises(AppError, match=r"over the 0.001 MB limit \(--max-upload-mb\)"):
        sonify_tab.decode_image(small, big)
    with pytest.raises(AppError, match="no concepts"):
        sonify_tab.parse_typed(" \n\n", "{line}", 3)
    with pytest.raises(AppError, match="at most 2"):
        sonify_tab.parse_typed("a\nb\nc", "{line}", 2)
    with pytest.raises(AppError, match="type a text"):
        search_tab.search(app, "  ")


def test_bad_draw_inputs_give_one_line(opened, tmp_path):
    _, app, _ = opened
    text = tmp_path / "song.wav"
    text.write_text("this is a text file renamed .wav\n")
    with pytest.raises(AppError, match=r"input 1 \(song.wav\) cannot be used: song.wav cannot be decoded as audio"):
        draw_tab.input_path(app, 0, draw_tab.DrawInput(audio=str(text)))
    silent = tmp_path / "quiet.wav"
    sf.write(silent, np.zeros(16000), 16000)
    with pytest.raises(AppError, match=r"input 2 \(quiet.wav\) is silent"):
        draw_tab.input_path(app, 1, draw_tab.DrawInput(audio=str(silent)))
    with pytest.raises(AppError, match="not in this run's audio_chunks"):
        draw_tab.input_path(app, 0, draw_tab.DrawInput(chunk_id="nope-00000"))
    assert draw_tab.input_path(app, 0, draw_tab.DrawInput()) is None
    with pytest.raises(AppError, match="no checkpoint"):
        draw_tab.draw(app, [draw_tab.DrawInput(audio=str(text))])


def test_runs_without_a_pool_or_with_a_mismatched_checkpoint_are_refused(opened, tmp_path, capsys):
    cfg, app, _ = opened
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(Path(cfg.run.dir) / "config.yaml", bare / "config.yaml")
    with pytest.raises(AppError, match="no audio pool"):
        AppRun(bare)
    assert cmd.main([f"run={bare}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no audio pool" in err[0]
    assert cmd.main([f"run={tmp_path}"]) == 2 and "not a run folder" in capsys.readouterr().err
    width = app.run_ast_dim()
    assert width is not None
    fake = tmp_path / "dit"
    (fake / "checkpoint-1" / "transformer").mkdir(parents=True)
    (fake / "checkpoint-1" / "training_state.pt").write_bytes(b"")
    (fake / "train_config.json").write_text(json.dumps({"ast_dim": width + 1}))
    with pytest.raises(AppError, match=f"AST features {width + 1} wide, but the run's features .* are {width} wide"):
        AppRun(cfg.run.dir, str(fake))
    with pytest.raises(AppError, match="holds no checkpoint"):
        AppRun(cfg.run.dir, str(tmp_path / "bare"))


def test_nothing_is_written_into_the_run(opened):
    cfg, app, before = opened
    search_tab.search(app, "bell")
    sonify_tab.sonify(app, ["bell", "engine"], "img2")
    assert snapshot(Path(cfg.run.dir)) == before


@pytest.mark.slow
def test_the_runs_vlm_gives_concepts_or_says_to_type_them(opened, demo_dir):
    """The tiny VLM runs the real generate path with the run's prompts; its replies are noise, so the answer is
    either parsed concepts or the message that asks for typed ones (never a traceback)."""
    from omegaconf import OmegaConf

    _, app, _ = opened
    with pytest.raises(AppError, match="not one of the run's models.vlms"):
        app.vlm("tiny:vlm")
    OmegaConf.update(app.cfg, "models.vlms", ["tiny:vlm"])
    try:
        up = sonify_tab.decode_image(app, sorted((demo_dir / "images").glob("scene_*.jpg"))[0])
        try:
            caption, lines = sonify_tab.ask_vlm(app, up, "tiny:vlm")
        except AppError as e:
            assert "type concepts instead" in str(e)
        else:
            assert isinstance(caption, str) and lines and all(isinstance(x, str) and x for x in lines)
        assert app.vlm("tiny:vlm") is app.vlm("tiny:vlm")      # loaded once
    finally:
        OmegaConf.update(app.cfg, "models.vlms", [])


def test_handlers_show_one_line_and_escape_what_they_show():
    from sonify.webapp import ui

    assert ui.failure(AppError("the image x.jpg cannot be decoded")) == \
        "<div class='status-error'>the image x.jpg cannot be decoded</div>"
    shown = ui.failure(RuntimeError("boom <b>\ndeep traceback line"))
    assert "unexpected error: RuntimeError: boom &lt;b&gt;" in shown and "deep traceback" not in shown
    row = {"text": "<dog>", "chunk_id": "a'b", "row": 3, "n_eligible": 2, "source": "s", "uri": "p&q.wav",
           "offset": 5.0, "cosine": 0.5, "score": 0.7, "threshold": 0.6, "fallback": None, "target_lufs": -23.0,
           "audio": "/tmp/x y/c.wav"}
    page = ui.sonify_html(sonify_tab.SonifyResult(rows=[row]))
    assert "&lt;dog&gt;" in page and "data-chunk='a&#x27;b'" in page and "p&amp;q.wav" in page
    assert "/gradio_api/file=/tmp/x%20y/c.wav" in page


@pytest.mark.parametrize("flag, value, why", [("--page-size", "0", "must be a positive integer, got 0"),
                                               ("--num-images", "-2", "must be a positive integer, got -2"),
                                               ("--max-upload-mb", "0", "must be above 0, got 0")])
def test_bad_settings_fail_in_one_line(flag, value, why, capsys):
    assert cmd.main(["run=demo", flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"sonify.app: argument {flag}: {why}"


def test_a_run_without_the_float32_pool_copy_is_read_not_written(opened, tmp_path):
    cfg, _, _ = opened
    src, run = Path(cfg.run.dir), tmp_path / "run"
    run.mkdir()
    shutil.copy(src / "config.yaml", run / "config.yaml")
    shutil.copytree(src / "matrices", run / "matrices", ignore=shutil.ignore_patterns("*.f32.npy"))
    for table in ("audio_chunks", "audio_files"):
        shutil.copytree(src / "manifests" / table, run / "manifests" / table)
    before = snapshot(run)
    app = AppRun(run)
    try:
        assert app.pool.dtype == np.float32
        assert np.array_equal(app.pool, np.load(run / "matrices" / "audio_embeddings.npy").astype(np.float32))
        assert search_tab.search(app, "bell", 0, players=False).rows
    finally:
        app.close()
    assert snapshot(run) == before


def test_without_gradio_the_app_names_the_extra_in_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert cmd.main(["run=demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[app]'" in err[0]
