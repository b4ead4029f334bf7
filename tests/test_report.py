"""The report site: built from the shared demo run, then opened in headless Chromium."""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sonify import report as cmd
from sonify.engine.store import TableStore
from sonify.media.audio import load_chunk
from sonify.publish.site import ReportConf, build_report
from sonify.sources import SourcePaths

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def report(full_run, tmp_path_factory):
    cfg, _ = full_run
    out = tmp_path_factory.mktemp("report")
    assert cmd.main([f"run={cfg.run.dir}", "--out", str(out), "--page-size", "8"]) == 0
    return cfg, out / "index.html"


def kept_ids(cfg) -> set[str]:
    return {r["id"] for r in TableStore(cfg.run.dir).read("kept_images").to_pylist() if r["kept"]}


def test_report_holds_summary_plots_gallery_and_dropped(report):
    cfg, index = report
    page = index.read_text()
    store = TableStore(cfg.run.dir)
    cards = set(re.findall(r"class='card' data-image='([0-9a-f]+)'", page))
    assert cards == kept_ids(cfg)
    for plot in ("loudness", "scores", "eligible", "reuse", "concepts", "pool", "filter", "errors"):
        assert (index.parent / "assets" / "plots" / f"{plot}.png").stat().st_size > 1000, plot
    dropped = [r for r in store.read("kept_images").to_pylist() if not r["kept"]]
    assert dropped and all(r["reason"] in page for r in dropped)
    failed = [r for r in store.read("images").to_pylist() if r["status"] != "ok"]
    assert failed and all(r["error"].split(":")[0] in page for r in failed)
    assert "decompression_bomb" in page and "<table class='summary'>" in page


def test_chunk_clips_are_the_audio_as_mixed(report):
    cfg, index = report
    store = TableStore(cfg.run.dir)
    mixes = [m for m in store.read("mixes").to_pylist() if m["status"] == "ok"]
    comp = mixes[0]["components"][0]
    y, rate = sf.read(index.parent / "assets" / "chunks" / f"{comp['chunk_id']}.flac")
    ref = load_chunk(SourcePaths.of(cfg, "audio").resolve(comp["source"], comp["uri"]), comp["start_frame"], comp["num_frames"], mixes[0]["sample_rate"], 5.0)
    assert rate == mixes[0]["sample_rate"] and y.shape == ref.shape == (5 * rate,)
    np.testing.assert_allclose(y, ref, atol=2 / 2**15)


def test_large_runs_are_sampled_with_a_seed(full_run, tmp_path):
    cfg, _ = full_run
    pick = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        page = build_report(cfg.run.dir, tmp_path / name, ReportConf(max_images=3, seed=seed, max_dropped=2)).read_text()
        pick.append(re.findall(r"class='card' data-image='([0-9a-f]+)'", page))
        assert "a seeded sample" in page
    assert len(pick[0]) == 3 and pick[0] == pick[1] and pick[0] != pick[2]
    assert set(pick[0]) <= kept_ids(cfg)


def test_report_of_a_folder_without_a_run_fails_in_one_line(tmp_path, capsys):
    assert cmd.main([f"run={tmp_path}"]) == 2
    assert "no images table" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_in_headless_chromium(report):
    """No console errors; every kept image shows; every audio source loads with its clip's duration."""
    exe = chromium()
    why = None
    if exe is None:
        why = "Chromium is not installed (Debian: apt-get install -y chromium); the report's browser test did not run"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            why = "playwright is not installed (pip install playwright; it drives the system Chromium, no download)"
    if why:
        print(f"\n*** SKIPPED: {why} ***", file=sys.stderr)
        warnings.warn(f"report browser test SKIPPED: {why}")
        pytest.skip(why)
    cfg, index = report
    store = TableStore(cfg.run.dir)
    mixes = {m["path"].split("/")[-1]: m["duration"] for m in store.read("mixes").to_pylist() if m["status"] == "ok"}
    kept = kept_ids(cfg)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        problems = []
        page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        # a media element that has its metadata cancels the rest of the file (net::ERR_ABORTED): not a failure
        page.on("requestfailed", lambda r: problems.append(f"requestfailed: {r.url} {r.failure}")
                if "ERR_ABORTED" not in (r.failure or "") else None)
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        audio = page.evaluate("""async () => Promise.all(Array.from(document.querySelectorAll('audio')).map(a =>
            new Promise(done => {
              const report = () => done({cls: a.className, src: a.currentSrc, duration: a.duration,
                                         expected: parseFloat(a.dataset.expected), error: a.error && a.error.code});
              if (a.readyState >= 1 || a.error) return report();
              a.addEventListener('loadedmetadata', report, {once: true});
              a.addEventListener('error', report, {once: true});
            })))""")
        seen, total_pages = set(), int(page.inner_text("#page-label").split(" of ")[1])
        for i in range(total_pages):
            visible = page.evaluate("""() => Array.from(document.querySelectorAll('.page.current .card')).map(c => {
                const img = c.querySelector('img.thumb');
                return [c.dataset.image, !!img && img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0];
              })""")
            assert all(ok for _, ok in visible), visible
            seen |= {image for image, _ in visible}
            if i == 0:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
            page.click("#next")
        browser.close()
    assert not problems, problems
    assert seen == kept and total_pages > 1
    assert audio and all(a["error"] is None for a in audio), [a for a in audio if a["error"] is not None]
    for a in audio:
        assert abs(a["duration"] - a["expected"]) < 0.01, a
        if a["cls"] == "chunk":
            assert a["expected"] == pytest.approx(float(cfg.stages.audio.chunk_seconds))
        else:
            assert a["expected"] == pytest.approx(mixes[a["src"].split("/")[-1]])
    assert {a["src"].split("/")[-1] for a in audio if a["cls"] == "mixture"} == set(mixes)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
