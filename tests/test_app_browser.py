"""The real app (`python -m sonify.app`, a subprocess) in Debian's headless Chromium on the demo run with its tiny
models and a checkpoint trained on the run's shards: sonify, search, draw, a bad upload. Screenshots go to
artifacts/ (gitignored). Slow: it trains a checkpoint and starts the server."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from sonify.engine.keys import keyed_rng
from sonify.webapp.browser import Driver, chromium

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"


def skip_without_browser():
    why = None
    if chromium() is None:
        why = "Chromium is not installed (Debian: apt-get install -y chromium); the app's browser test did not run"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (pip install playwright; it drives the system Chromium, no download)"
    try:
        import gradio  # noqa: F401
    except ImportError:
        why = why or "gradio is not installed (pip install -e '.[app]')"
    if why:
        print(f"\n*** SKIPPED: {why} ***", file=sys.stderr)
        warnings.warn(f"app browser test SKIPPED: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def checkpoint(full_run, tmp_path_factory):
    """The tiny DiT trained for a few steps on the demo run's shards, as `make demo` trains it."""
    cfg, _ = full_run
    out = tmp_path_factory.mktemp("dit") / "dit"
    shards = Path(cfg.run.dir) / "shards"
    p = subprocess.run([sys.executable, "-m", "sonify.train_dit", "config=train_demo", f"shards={shards / 'train.txt'}",
                        f"val_shards={shards / 'val.txt'}", f"output_dir={out}", f"tiny_dir={cfg.models.tiny_dir}",
                        "steps=2", "checkpoint_every=2", "val_every=0", "progress=false"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(full_run, checkpoint):
    """`python -m sonify.app run=... checkpoint=...` until the module ends; stopped by SIGTERM, which must remove
    its temporary folder."""
    skip_without_browser()
    cfg, _ = full_run
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sonify.app", f"run={cfg.run.dir}", f"checkpoint={checkpoint}",
                             "--port", str(free_port()), "--page-size", "5"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    line = proc.stdout.readline()
    m = re.match(r"sonify.app: serving .* at (http://\S+) \(temporary files in (\S+), removed at exit\)", line)
    assert m, (line, proc.stderr.read()[-3000:] if proc.poll() is not None else "")
    yield cfg, m.group(1), Path(m.group(2))
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert not Path(m.group(2)).exists(), "the app's temporary folder outlived it"


def pool_and_query(cfg, text: str):
    import pyarrow.parquet as pq

    from sonify.models.clap import ClapEmbedder

    d = Path(cfg.run.dir) / "matrices"
    pool = np.load(d / "audio_embeddings.npy").astype(np.float32)
    ids = pq.read_table(d / "audio_embeddings.ids.parquet").column("id").to_pylist()
    v = ClapEmbedder(cfg.models.clap, cfg.models.tiny_dir, "cpu", "float32").embed_text([text])[0].astype(np.float64)
    return pool, ids, (v / np.linalg.norm(v)).astype(np.float16).astype(np.float32)


def test_the_app_in_headless_chromium(served, demo_dir, paper_algorithm1, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    cfg, url, temp = served
    image = sorted((demo_dir / "images").glob("scene_*.jpg"))[0]
    concepts = ["dog - barking", "bell ringing"]
    with sync_playwright() as p:
        d = Driver(p, url, chromium())
        # sonify: the chunks are Algorithm 1's keyed choice among the eligible set, recomputed from the pool matrix
        key = hashlib.sha256(image.read_bytes()).hexdigest()[:16]
        for draw in (0, 1):
            chosen = d.sonify(None if draw else str(image), "\n".join(concepts), again=bool(draw))
            assert d.status("sonify-status").startswith(f"draw {draw}:"), d.status("sonify-status")
            assert len(chosen) == 2
            for i, (text, chunk) in enumerate(zip(concepts, chosen)):
                pool, ids, q = pool_and_query(cfg, text)
                rng = keyed_rng(int(cfg.run.seed), key, "typed", i, *(("draw", draw) if draw else ()))
                eligible, pick = paper_algorithm1(q, pool, int(cfg.stages.retrieve.k), rng)
                assert chunk in {ids[j] for j in eligible} and chunk == ids[pick]
            players = d.audio_players("match-table")
            assert len(players) == 2 and all(a["error"] is None for a in players), players
            assert all(abs(a["duration"] - float(cfg.stages.audio.chunk_seconds)) < 0.01 for a in players), players
            if draw == 0:
                mixture = d.page.get_attribute("#mixture a[download]", "href")
                assert mixture and d.page.request.get(mixture).ok
                d.screenshot(ARTIFACTS / "app-sonify.png")
        # search: the top chunk is NumPy's cosine top-1 over the matrix
        hits = d.search("a dog barking")
        pool, ids, q = pool_and_query(cfg, "a dog barking")
        assert hits[0] == ids[int(np.argmax(pool @ q))] and len(hits) == 5
        assert all(a["error"] is None for a in d.audio_players("search-table"))
        d.screenshot(ARTIFACTS / "app-search.png")
        # draw from two demo sounds with offsets: a PNG of the checkpoint's training size
        audio = demo_dir / "audio"
        msg = d.draw([(0, str(audio / "dog_bark_16000hz_1ch.wav"), 0), (1, str(audio / "bell_8000hz_1ch.wav"), -6)])
        size = int(cfg.stages.latents.resolution)
        assert f"{size}x{size}" in msg, msg
        pngs = d.drawn_images()
        assert pngs and all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in pngs)
        assert all(Image.open(io.BytesIO(b)).size == (size, size) for b in pngs)
        d.screenshot(ARTIFACTS / "app-draw.png")
        problems = list(d.problems)   # the bad upload below makes the browser's waveform fail to load: expected
        # a text file renamed .wav: the message, in the page
        fake = tmp_path / "not_audio.wav"
        fake.write_text("this is a text file, not a WAV\n")
        msg = d.draw([(2, str(fake), 0)], expect="cannot be used")
        assert "input 3 (not_audio.wav) cannot be used" in msg and "cannot be decoded as audio" in msg, msg
        d.screenshot(ARTIFACTS / "app-bad-upload.png")
        # the sonify tab's chunks go into the draw tab's chunk boxes
        d.tab("Sonify an image")
        d.page.click("#send-to-draw")
        d.tab("Draw from sound")
        d.page.wait_for_function("c => document.querySelector('#draw-chunk-0 textarea, #draw-chunk-0 input').value === c",
                                 arg=chosen[0], timeout=30_000)
        boxes = [d.page.locator(f"#draw-chunk-{i} textarea, #draw-chunk-{i} input").first.input_value() for i in range(4)]
        assert boxes == [*chosen, "", ""]
        foreign = d.foreign_requests()
        d.close()
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    assert not problems, problems
    assert temp.is_dir() and any(temp.rglob("*.wav"))   # its files live in its own folder while it runs
