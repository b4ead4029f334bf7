"""`python -m sonify.bench app [--run runs/demo] [--chunks 100000] [--repeats 5]`

The app on a generated pool: a copy of a built run (its config, models, audio sources) whose pool is
`--chunks` random unit vectors of the run's CLAP width, each row a chunk pointing into the run's own
audio (so players decode real files). Measured, in the same run:
  startup   `python -m sonify.app run=<copy>` from spawn to the first page served (HTTP 200 on /), for
            the run's own pool (the baseline) and the generated one; then the page rendered in headless
            Chromium (the Sonify button on screen), when Chromium is installed
  search    `search_tab.search` (CLAP text embedding, the scan of the mapped pool, the page's chunk
            metadata and players) once the app's background warm-up finished: first call and median of `--repeats`
  scan      the pool part alone at CLAP's real width (512): matrix-vector product + the page's top rows
Targets (issue 27): startup < 10 s, search < 0.5 s. Nothing is written into `--run`.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from sonify.engine.cli import command_parser

QUERY = "rain on a tin roof"


def generated_run(src: Path, dest: Path, chunks: int, seed: int = 0) -> Path:
    """A copy of `src` (config, audio tables) with a pool of `chunks` random unit rows, as the embed stage writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sonify.engine.store import TableStore
    from sonify.retrieval.matrices import float32_matrix, matrix_paths

    dest.mkdir(parents=True)
    shutil.copy(src / "config.yaml", dest / "config.yaml")
    for table in ("audio_files", "audio_features"):
        if (src / "manifests" / table).is_dir():
            shutil.copytree(src / "manifests" / table, dest / "manifests" / table)
    import pyarrow.compute as pc

    real = TableStore(src).read("audio_chunks")
    real = real.filter(pc.equal(real.column("status"), "ok"))
    take = np.arange(chunks) % real.num_rows
    rows = real.take(pa.array(take))
    ids = pa.array([f"gen{i:08d}" for i in range(chunks)], pa.string())
    rows = rows.set_column(rows.schema.get_field_index("id"), "id", ids)
    store = TableStore(dest)
    store.write_partition("audio_chunks", "generated", rows)
    dim = int(np.load(matrix_paths(TableStore(src), "audio_embeddings")[0], mmap_mode="r").shape[1])
    rng = np.random.default_rng(seed)
    npy, ids_path, meta = matrix_paths(store, "audio_embeddings")
    npy.parent.mkdir(parents=True, exist_ok=True)
    mat = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float16, shape=(chunks, dim))
    for s in range(0, chunks, 65536):
        v = rng.standard_normal((min(65536, chunks - s), dim), dtype=np.float32)
        mat[s:s + v.shape[0]] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
    mat.flush()
    del mat
    pq.write_table(pa.table({"id": ids, "row": pa.array(np.arange(chunks), pa.int64())}), ids_path)
    meta.write_text('{"table": "audio_embeddings", "generated": true}')
    float32_matrix(store, "audio_embeddings")
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startup(run: Path, chromium: str | None) -> tuple[float, float | None]:
    """Seconds from spawning the command to the first page served; then to the page rendered in Chromium."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2]))}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sonify.app", f"run={run}", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"sonify.bench app: the app exited: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        served = time.perf_counter() - t0
        rendered = None
        if chromium:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page()
                t1 = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("#sonify-button", timeout=60_000)
                rendered = time.perf_counter() - t1
                browser.close()
        return served, rendered
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def main(argv=None) -> None:
    ap = command_parser("bench app", __doc__, settings=False)
    ap.add_argument("--run", default="runs/demo", help="a built run (make demo)")
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan-dim", type=int, default=512)
    a = ap.parse_args(argv)
    src = Path(a.run)
    if not (src / "config.yaml").is_file():
        raise SystemExit(f"sonify.bench app: {src} is not a built run (make demo first, or --run DIR)")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

    from sonify.webapp.browser import chromium
    from sonify.webapp.runtime import AppConf, AppRun
    from sonify.webapp.search_tab import search, top_rows

    exe = chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        exe = None
    with tempfile.TemporaryDirectory(prefix="sonify-bench-app-") as tmp:
        t0 = time.perf_counter()
        big = generated_run(src, Path(tmp) / "run", a.chunks)
        print(f"generated a {a.chunks}-chunk pool in {time.perf_counter() - t0:.1f} s")
        for name, run in (("run's own pool", src), (f"{a.chunks} chunks", big)):
            served, rendered = startup(run, exe)
            print(f"startup ({name}): first page served {served:.2f} s" +
                  (f"; rendered in Chromium {rendered:.2f} s later" if rendered is not None else "; (no Chromium: not rendered)"))
        app = AppRun(big, None, AppConf(), background=True)
        try:
            app.load_in_background()   # as the command does once its page is up
            app.clap
            t0 = time.perf_counter()
            search(app, QUERY, 0)
            first = time.perf_counter() - t0
            times = []
            for i in range(a.repeats):
                t0 = time.perf_counter()
                search(app, f"{QUERY} {i}", i % 3)
                times.append(time.perf_counter() - t0)
            print(f"search ({a.chunks} chunks x {app.pool.shape[1]}-d, page of {app.conf.page_size} with players): "
                  f"first {first:.3f} s, median {statistics.median(times):.3f} s over {a.repeats}")
            parts = {"CLAP text": [], "pool scan + top rows": [], "chunk metadata": [], "players (decode + WAV)": []}
            for i in range(a.repeats):   # the same work in its parts (fresh clip files each time: no reuse)
                marks = [time.perf_counter()]
                q = app.text_queries([f"{QUERY} part {i}"])[0]
                marks.append(time.perf_counter())
                rows = top_rows(app.pool @ q, 0, app.conf.page_size)
                marks.append(time.perf_counter())
                infos = app.chunk_rows(rows.tolist())
                marks.append(time.perf_counter())
                for info in infos:
                    app.temp.wav(app.chunk_audio(info, 16000) * (1 - 1e-3 * (i + 1)), 16000, "bench")
                marks.append(time.perf_counter())
                for name, t0, t1 in zip(parts, marks, marks[1:]):
                    parts[name].append(t1 - t0)
            print("  parts (median): " + ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in parts.items()))
        finally:
            app.close()
        rng = np.random.default_rng(1)
        pool = rng.standard_normal((a.chunks, a.scan_dim), dtype=np.float32)
        q = rng.standard_normal(a.scan_dim).astype(np.float32)
        scans = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            top_rows(pool @ q, 0, AppConf().page_size)
            scans.append(time.perf_counter() - t0)
        print(f"scan ({a.chunks} x {a.scan_dim}, float32 in memory): median {statistics.median(scans) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
