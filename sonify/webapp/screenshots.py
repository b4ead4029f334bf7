"""`python -m sonify.app run=... checkpoint=... --screenshots DIR`: one picture of each tab, for docs/app.md.

Starts the app, drives it in headless Chromium (`browser.Driver`) with the demo's own files (an image and
two sounds from the run's `demo_data.dir`), saves app-sonify.png, app-search.png and app-draw.png, stops.
"""

from __future__ import annotations

from pathlib import Path

from sonify.webapp.runtime import AppError, AppRun

DEMO_IMAGE = "images/scene_001.jpg"
DEMO_SOUNDS = ("audio/dog_bark_16000hz_1ch.wav", "audio/bell_8000hz_1ch.wav")
CONCEPTS = "dog - barking\nbell ringing"
QUERY = "a dog barking"


def demo_files(app: AppRun) -> tuple[Path, list[Path]]:
    root = Path(str(app.cfg.get("demo_data", {}).get("dir", "")))
    files = [root / DEMO_IMAGE, *(root / s for s in DEMO_SOUNDS)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise AppError(f"--screenshots needs the demo run's files (make demo); missing: {', '.join(missing)}")
    return files[0], files[1:]


def take(app: AppRun, out_dir: str, host: str = "127.0.0.1", port: int | None = None) -> list[Path]:
    from sonify.webapp.browser import Driver, chromium
    from sonify.webapp.ui import launch

    image, sounds = demo_files(app)
    exe = chromium()
    if exe is None:
        raise AppError("--screenshots needs Chromium (Debian: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AppError("--screenshots needs playwright (pip install -e '.[test]'; it drives the system Chromium)") from None
    out = Path(out_dir)
    demo, url = launch(app, host, port, block=False)
    shots = [out / "app-sonify.png", out / "app-search.png", out / "app-draw.png"]
    try:
        with sync_playwright() as p:
            d = Driver(p, url, exe)
            d.sonify(str(image), CONCEPTS)
            d.screenshot(shots[0])
            d.search(QUERY)
            d.screenshot(shots[1])
            if app.checkpoint:
                d.draw([(0, str(sounds[0]), 0.0), (1, str(sounds[1]), -6.0)], steps=10)
            else:
                d.tab("Draw from sound")
            d.screenshot(shots[2])
            d.close()
    finally:
        demo.close()
    return shots
