"""Rebuilding mixtures from a release manifest: sources resolved under their dataset's root, rendered
with the pipeline's own renderer, locally in processes or on Ray. Bad rows become report rows."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path


class SourceRefused(Exception):
    pass


def parse_roots(values: list[str]) -> tuple[Path | None, dict[str, Path]]:
    default, named = None, {}
    for v in values:
        if "=" in v and not Path(v).exists():
            name, d = v.split("=", 1)
            named[name] = Path(d)
        else:
            default = Path(v)
    return default, named


def resolve_source(dataset: str, relpath: str, default: Path | None, named: dict[str, Path]) -> Path:
    """The component's file under its dataset's root; refuses paths that resolve outside the root."""
    root = named.get(dataset) or (default / dataset if default is not None else None)
    if root is None:
        raise SourceRefused(f"no audio root for dataset {dataset!r} (pass --audio-root DIR or --audio-root {dataset}=DIR)")
    root = root.resolve()
    path = (root / relpath).resolve()
    if Path(relpath).is_absolute() or not path.is_relative_to(root):
        raise SourceRefused(f"{relpath!r} resolves outside the audio root of {dataset!r}")
    return path


def render_row(row: dict, roots: tuple[Path | None, dict[str, Path]], out_dir: str, force: bool, check: bool) -> dict:
    """Render one manifest row; returns its report row (never raises for bad data)."""
    from sonify.media.audio import load_chunk
    from sonify.mixing.render import file_sha256, pcm24_sha256, render, write_flac

    out = Path(out_dir) / row["path"]
    report = {"mix_id": row["mix_id"], "path": str(out), "status": "ok", "error": None, "skipped": False}
    try:
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
    except SourceRefused as e:
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
    from tqdm.auto import tqdm

    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    reports: list[dict] = []
    bar = tqdm(total=len(rows), unit="mix", desc="rendering", disable=not progress)
    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="WARNING")
        task = ray.remote(_render_batch)
        pending = [task.remote(b, roots, out_dir, force, check) for b in batches]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in ray.get(done[0]):
                reports.append(r)
                bar.update(1)
    elif workers <= 1:
        for b in batches:
            for r in _render_batch(b, roots, out_dir, force, check):
                reports.append(r)
                bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_render_batch, b, roots, out_dir, force, check) for b in batches]
            for f in as_completed(futures):
                for r in f.result():
                    reports.append(r)
                    bar.update(1)
    bar.close()
    return reports
