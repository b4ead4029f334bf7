"""Rebuilding mixtures from a release manifest: sources resolved under their dataset's root, rendered
with the pipeline's own renderer, locally in processes or on Ray. Bad rows become report rows."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from pathlib import Path


class SourceRefused(Exception):
    pass


class OutputRefused(Exception):
    """A row whose output path would land outside --out (absolute, `..`, or through a link)."""


REPORT_NAME = "render_report.parquet"


def resolve_output(out_dir: str | Path, relpath: str) -> Path:
    """Where a row's mixture goes: `relpath` under `out_dir`, refused unless it stays inside.

    Absolute paths and `..` are refused outright; what is left is resolved with the links that exist
    now, so a subfolder of --out that is a link to elsewhere is refused too.
    """
    from sonify.engine.files import TMP_PREFIX

    rel = Path(relpath or "")
    if not relpath or rel.is_absolute():
        raise OutputRefused(f"output path {relpath!r} is {'empty' if not relpath else 'absolute'}")
    if ".." in rel.parts:
        raise OutputRefused(f"output path {relpath!r} contains '..'")
    if rel.name.startswith(TMP_PREFIX) or str(rel) in (".", REPORT_NAME):
        raise OutputRefused(f"output path {relpath!r} is a name sonify.mix uses itself")
    root = Path(out_dir).resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a link loop, a NUL byte
        raise OutputRefused(f"output path {relpath!r} cannot be resolved: {e}") from None
    if not target.is_relative_to(root) or target == root:
        raise OutputRefused(f"output path {relpath!r} resolves to {target}, outside --out {root} (through a link)")
    return root / rel


def prepare_out(out_dir: str | Path) -> int:
    """Make --out a writable folder and remove temp files a killed or failed earlier render left; returns how many.

    Raises ValueError with one line when --out is a file or cannot be written.
    """
    from sonify.engine.files import clean_temp_files, ensure_writable_dir

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        ensure_writable_dir(out)
    except OSError as e:
        raise ValueError(f"--out {out} cannot be written: {e.strerror or e}") from None
    return clean_temp_files(out, recursive=True)


def plan_outputs(rows: list[dict], out_dir: str | Path) -> tuple[list[dict], list[dict], dict[Path, list[str]]]:
    """Split rows into those to render and refused report rows; also the output paths claimed twice.

    Paths are compared resolved, so `a/x.flac` and `a/./x.flac` are the same file.
    """
    todo, refused, claimed = [], [], {}
    for row in rows:
        try:
            target = resolve_output(out_dir, row["path"])
        except OutputRefused as e:
            refused.append({"mix_id": row["mix_id"], "path": str(row["path"]), "status": "error",
                            "error": f"refused: {e}", "skipped": False})
            continue
        claimed.setdefault(target.resolve(), []).append(row["mix_id"])
        todo.append(row)
    return todo, refused, {p: ids for p, ids in claimed.items() if len(ids) > 1}


def parse_roots(values: list[str], sources: list[str] = (), known: dict[str, Path] | None = None) -> tuple[Path | None, dict[str, Path]]:
    """The audio roots: `known` (a pipeline's sources), then `--audio-root DIR|NAME=DIR`, then `--source NAME=DIR`
    (later ones win). ValueError with one line for a `--source` that is not NAME=DIR."""
    default, named = None, dict(known or {})
    for v in values:
        if "=" in v and not Path(v).exists():
            name, d = v.split("=", 1)
            named[name] = Path(d)
        else:
            default = Path(v)
    for v in sources:
        name, sep, d = v.partition("=")
        if not (sep and name and d):
            raise ValueError(f"--source {v!r} is not NAME=DIR (the folder where audio source NAME's files are now)")
        named[name] = Path(d)
    return default, named


def missing_root(rows: list[dict], default: Path | None, named: dict[str, Path]) -> str | None:
    """One line naming the first audio source of `rows` that has no root folder, and the flag that gives it; else None."""
    for dataset in sorted({c["dataset"] for r in rows for c in r["components"]}):
        root = named.get(dataset) or (default / dataset if default is not None else None)
        if root is None:
            return f"no root for audio source {dataset!r}: pass --source {dataset}=DIR (the folder its files are relative to now)"
        if not root.is_dir():
            return f"the root of audio source {dataset!r}, {root}, is not a folder: pass --source {dataset}=DIR where its files are now"
    return None


def resolve_source(dataset: str, relpath: str, default: Path | None, named: dict[str, Path]) -> Path:
    """The component's file under its dataset's root; refuses paths that resolve outside the root."""
    root = named.get(dataset) or (default / dataset if default is not None else None)
    if root is None:
        raise SourceRefused(f"no audio root for dataset {dataset!r} (pass --source {dataset}=DIR)")
    root = root.resolve()
    path = (root / relpath).resolve()
    if Path(relpath).is_absolute() or not path.is_relative_to(root):
        raise SourceRefused(f"{relpath!r} resolves outside the audio root of {dataset!r}")
    return path


def render_row(row: dict, roots: tuple[Path | None, dict[str, Path]], out_dir: str, force: bool, check: bool) -> dict:
    """Render one manifest row; returns its report row (never raises for bad data)."""
    from sonify.media.audio import load_chunk
    from sonify.mixing.render import file_sha256, pcm24_sha256, render, write_flac

    report = {"mix_id": row["mix_id"], "path": str(row["path"]), "status": "ok", "error": None, "skipped": False}
    try:
        out = resolve_output(out_dir, row["path"])   # checked again where it is written
        report["path"] = str(out)
        if out.exists() and not out.is_file():
            raise ValueError(f"{out} exists and is not a file")
        if out.exists() and not force:
            report["skipped"] = True
            if check and row.get("flac_sha256") and file_sha256(out) != row["flac_sha256"]:
                raise ValueError("existing output differs from the manifest's flac_sha256 (use --force to re-render)")
            return report
        signals, gains = [], []
        for c in row["components"]:
            path = resolve_source(c["dataset"], c["relpath"], *roots)
            if not path.is_file():
                raise FileNotFoundError(f"source {c['dataset']}/{c['relpath']} not found at {path}")
            signals.append(load_chunk(str(path), c["start_frame"], c["num_frames"], row["sample_rate"], row["chunk_seconds"]))
            gains.append(c["gain_db"])
        if not signals:
            raise ValueError("manifest row has no components")
        mix, _ = render(signals, gains, row["mix_gain_db"])
        if check and row.get("pcm24_sha256") and pcm24_sha256(mix) != row["pcm24_sha256"]:
            raise ValueError("rendered audio differs from the manifest's pcm24_sha256 (sources changed?)")
        flac_sha, _ = write_flac(out, mix, row["sample_rate"])
        if check and row.get("flac_sha256") and flac_sha != row["flac_sha256"]:
            report["error"] = "flac_differs: same audio, different FLAC bytes (another libsndfile version?)"
    except (SourceRefused, OutputRefused) as e:
        report.update(status="error", error=f"refused: {e}")
    except FileNotFoundError as e:
        report.update(status="error", error=f"not_found: {e}")
    except Exception as e:
        report.update(status="error", error=f"failed: {type(e).__name__}: {e}")
    return report


def _render_batch(rows, roots, out_dir, force, check):
    return [render_row(r, roots, out_dir, force, check) for r in rows]


def render_all(rows: list[dict], roots, out_dir: str, workers: int, use_ray: bool, force: bool, check: bool,
               progress: bool = True, batch: int = 16) -> list[dict]:
    """Render every row in batches; at most two batches per worker are in flight at once, so the tasks
    (and their arguments) held at a time do not grow with the manifest."""
    from tqdm.auto import tqdm

    batches = (rows[i:i + batch] for i in range(0, len(rows), batch))
    reports: list[dict] = []
    bar = tqdm(total=len(rows), unit="mix", desc="rendering", disable=not progress)

    def collect(results: list[dict]) -> None:
        reports.extend(results)
        bar.update(len(results))

    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING")
        task = ray.remote(_render_batch)
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: list = []
        for b in batches:
            pending.append(task.remote(b, roots, out_dir, force, check))
            if len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                collect(ray.get(done[0]))
        for ref in pending:
            collect(ray.get(ref))
    elif workers <= 1:
        for b in batches:
            collect(_render_batch(b, roots, out_dir, force, check))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            running: set = set()
            for b in batches:
                running.add(pool.submit(_render_batch, b, roots, out_dir, force, check))
                if len(running) >= 2 * workers:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        collect(f.result())
            for f in as_completed(running):
                collect(f.result())
    bar.close()
    return reports
