"""Driving the app in headless Chromium (Playwright with the system browser, nothing downloaded): the steps the
browser test checks and `python -m sonify.app --screenshots DIR` (`make app-screenshots`) photographs."""

from __future__ import annotations

import shutil
from pathlib import Path

TIMEOUT_MS = 120_000    # a step may load a model on first use
STATUS_JS = ("(id) => { const e = document.querySelector('#' + id + ' .status-ok, #' + id + ' .status-error');"
             " return e ? e.innerText : ''; }")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Driver:
    """One page of the app; records every request and every page error or console error."""

    def __init__(self, playwright, url: str, executable: str):
        self.url = url
        self.browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        self.page = self.browser.new_page(viewport={"width": 1300, "height": 1100})
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.goto(url)
        self.page.wait_for_selector("#sonify-button", timeout=TIMEOUT_MS)

    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the app itself (fonts, scripts, analytics)."""
        return [u for u in self.requests if not u.startswith(self.url.rstrip("/")) and not u.startswith(("data:", "blob:"))]

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()
        self.page.wait_for_timeout(300)

    def status(self, elem: str) -> str:
        """The tab's status line (the app's own line, not Gradio's progress text around it)."""
        return self.page.evaluate(STATUS_JS, elem)

    def wait_status(self, elem: str, text: str) -> str:
        self.page.wait_for_function(f"([id, t]) => ({STATUS_JS})(id).includes(t)", arg=[elem, text], timeout=TIMEOUT_MS)
        return self.status(elem)

    def sonify(self, image: str | None, concepts: str, again: bool = False) -> list[str]:
        """Upload `image`, type `concepts`, press Sonify (or Draw again); the matched chunk ids in concept order."""
        p = self.page
        self.tab("Sonify an image")
        if image:
            p.locator("#image-upload input[type=file]").set_input_files(image)
            self.wait_status("sonify-status", "image decoded")
        p.locator("#concepts textarea").fill(concepts)
        before = self.status("sonify-status")
        p.click("#draw-again" if again else "#sonify-button")
        p.wait_for_function(f"b => {{ const s = ({STATUS_JS})('sonify-status'); return s !== b && !s.startsWith('image decoded'); }}",
                            arg=before, timeout=TIMEOUT_MS)
        return p.eval_on_selector_all("#match-table tr.match", "els => els.map(e => e.dataset.chunk)")

    def audio_players(self, table: str) -> list[dict]:
        """Every player of a results table once its metadata loaded: duration and error code."""
        return self.page.evaluate("""async (sel) => Promise.all(Array.from(document.querySelectorAll(sel + ' audio')).map(a =>
            new Promise(done => {
              const report = () => done({src: a.currentSrc, duration: a.duration, error: a.error && a.error.code});
              if (a.readyState >= 1 || a.error) return report();
              a.addEventListener('loadedmetadata', report, {once: true});
              a.addEventListener('error', report, {once: true});
              a.load();
            })))""", f"#{table}")

    def search(self, query: str) -> list[str]:
        p = self.page
        self.tab("Search the pool")
        p.locator("#search-query textarea, #search-query input").first.fill(query)
        p.click("#search-button")
        self.wait_status("search-status", "chunks for")
        return p.eval_on_selector_all("#search-table tr.hit", "els => els.map(e => e.dataset.chunk)")

    def draw(self, inputs: list[tuple[int, str, float]], steps: int = 2, expect: str = "image(s)") -> str:
        """Put (slot, file, offset dB) into the draw tab, press Draw; the status line once it says `expect`."""
        p = self.page
        self.tab("Draw from sound")
        for slot, path, offset in inputs:
            p.locator(f"#draw-audio-{slot} input[type=file]").set_input_files(path)
            p.wait_for_selector(f"#draw-audio-{slot} audio, #draw-audio-{slot} [data-testid='waveform-controls']",
                                state="attached", timeout=TIMEOUT_MS)
            box = p.locator(f"#draw-offset-{slot} input[type=number]")
            box.fill(str(offset))
            box.press("Enter")
        steps_box = p.locator("#draw-steps input[type=number]")
        steps_box.fill(str(steps))
        steps_box.press("Enter")
        p.wait_for_timeout(500)
        p.click("#draw-button")
        return self.wait_status("draw-status", expect)

    def drawn_images(self) -> list[bytes]:
        srcs = self.page.eval_on_selector_all("#drawn img", "els => els.map(e => e.src)")
        return [self.page.request.get(s).body() for s in srcs]

    def screenshot(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)

    def close(self) -> None:
        self.browser.close()
