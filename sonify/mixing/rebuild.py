"""Rebuilding mixtures from a release manifest: sources resolved under their dataset's root, rendered
with the pipeline's own renderer, locally on the engine's process pool (`engine.processes`: forkserver or
spawn, never fork) or on Ray (`engine.cluster`). Bad rows become report rows, and so does a mixture whose
worker died or raised: its batch is rendered again one row at a time, so the others still render.

The manifest is streamed: rows are read in batches, rendered with a bounded number of batches in
flight, and report rows are written as they come, so memory does not grow with the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sonify.engine.errors import error_reason


class SourceRefused(Exception):
    pass


class OutputRefused(Exception):
    """A row whose output path would land outside --out (absolute, `..`, or through a link)."""


REPORT_NAME = "render_report.parquet"
REPORT_SCHEMA = pa.schema([("mix_id", pa.string()), ("path", pa.string()), ("status", pa.string()),
                           ("error", pa.string()), ("skipped", pa.bool_())])
MAX_ERROR_LINES = 20


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


def _output_keys(table: pa.Table, out_dir: str | Path) -> Iterator[tuple[str, Path, int]]:
    """(mix id, resolved output path, 64-bit hash of it) of each row whose output is allowed."""
    for mix_id, rel in zip(table.column("mix_id").to_pylist(), table.column("path").to_pylist()):
        try:
            target = resolve_output(out_dir, rel).resolve()
        except OutputRefused:
            continue
        yield mix_id, target, int.from_bytes(hashlib.blake2b(str(target).encode(), digest_size=8).digest(), "little")


def duplicate_outputs(release, out_dir: str | Path) -> dict[Path, list[str]]:
    """Output paths claimed by more than one row (compared resolved: `a/x.flac` is `a/./x.flac`).

    A pass over the whole manifest (every batch checked as it is read) keeping 8 bytes per row, a hash
    of its resolved path; only when hashes repeat, a second pass gathers those rows' paths and ids.
    """
    keys = [np.fromiter((k for _, _, k in _output_keys(t, out_dir)), dtype=np.uint64) for t in release.batches()]
    uniq, counts = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.uint64), return_counts=True)
    repeated = set(uniq[counts > 1].tolist())
    claimed: dict[Path, list[str]] = {}
    for t in release.batches() if repeated else ():
        for mix_id, target, key in _output_keys(t, out_dir):
            if key in repeated:
                claimed.setdefault(target, []).append(mix_id)
    return {p: ids for p, ids in claimed.items() if len(ids) > 1}


def parse_roots(values: list[str], sources: list[str] = (), known: dict[str, Path] | None = None) -> tuple[Path | None, dict[str, Path]]:
    """The audio roots: `known` (a pipeline's sources), then `--audio-root DIR|NAME=DIR` (NAME=DIR an alias of
    `--source NAME=DIR`; a bare DIR holds one folder per source), then `--source NAME=DIR` (later ones win). ValueError with one line for a `--source` that is not NAME=DIR."""
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


def release_sources(release) -> set[str]:
    """The audio sources a release's components name (a pass over its batches)."""
    import pyarrow.compute as pc

    found: set[str] = set()
    for t in release.batches():
        found.update(pc.unique(pc.list_flatten(t.column("components")).combine_chunks().field("source")).to_pylist())
    return found - {None}


def missing_root(names: set[str], default: Path | None, named: dict[str, Path]) -> str | None:
    """One line naming the first audio source in `names` that has no root folder, and the flag that gives it; else None."""
    for source in sorted(names):
        root = named.get(source) or (default / source if default is not None else None)
        if root is None:
            return f"no root for audio source {source!r}: pass --source {source}=DIR (the folder its files are relative to now)"
        if not root.is_dir():
            return f"the root of audio source {source!r}, {root}, is not a folder: pass --source {source}=DIR where its files are now"
    return None


def relpath_problem(relpath: str | None) -> str | None:
    """Why every rebuild refuses a component path whatever its root is (None: it may be resolved):
    empty, absolute, or leaving its root by `..`. The mix stage asks the same before it writes a row."""
    if not relpath:
        return "an empty source path"
    if os.path.isabs(relpath):
        return f"{relpath!r} is absolute"
    if os.path.normpath(relpath).split(os.sep)[0] == "..":
        return f"{relpath!r} leaves its root by '..'"
    return None


def resolve_source(source: str, uri: str, default: Path | None, named: dict[str, Path]) -> Path:
    """The component's file under its audio source's root; refuses paths that resolve outside the root."""
    root = named.get(source) or (default / source if default is not None else None)
    if root is None:
        raise SourceRefused(f"no audio root for source {source!r} (pass --source {source}=DIR)")
    root = root.resolve()
    path = (root / uri).resolve()
    if relpath_problem(uri) or not path.is_relative_to(root):
        raise SourceRefused(f"{uri!r} resolves outside the audio root of {source!r}")
    return path


def render_row(row: dict, roots: tuple[Path | None, dict[str, Path]], out_dir: str, force: bool, check: bool,
               verify: bool = False) -> dict:
    """Render one manifest row; returns its report row (never raises for bad data).

    `verify`: render in memory and compare with the manifest's pcm24_sha256; nothing is written.
    """
    from sonify.media.audio import load_chunk
    from sonify.mixing.render import file_sha256, pcm24_sha256, render, write_flac

    report = {"mix_id": row["mix_id"], "path": str(row["path"]), "status": "ok", "error": None, "skipped": False}
    try:
        out = resolve_output(out_dir, row["path"])   # checked again where it is written
        report["path"] = str(out)
        if out.exists() and not out.is_file():
            raise ValueError(f"{out} exists and is not a file")
        if out.exists() and not force and not verify:
            report["skipped"] = True
            if check and row.get("flac_sha256") and file_sha256(out) != row["flac_sha256"]:
                raise ValueError("existing output differs from the manifest's flac_sha256 (use --force to re-render)")
            return report
        signals, gains = [], []
        for c in row["components"]:
            path = resolve_source(c["source"], c["uri"], *roots)
            if not path.is_file():
                raise FileNotFoundError(f"source {c['source']}/{c['uri']} not found at {path}")
            signals.append(load_chunk(str(path), c["start_frame"], c["num_frames"], row["sample_rate"], row["chunk_seconds"]))
            gains.append(c["gain_db"])
        if not signals:
            raise ValueError("manifest row has no components")
        mix, _ = render(signals, gains, row["mix_gain_db"])
        if verify:
            if not row.get("pcm24_sha256"):
                raise ValueError("the manifest has no pcm24_sha256 for this mixture: nothing to verify against")
            if pcm24_sha256(mix) != row["pcm24_sha256"]:
                raise ValueError("rendered audio differs from the manifest's pcm24_sha256 (sources changed?)")
            return report
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


def _render_batch(rows, roots, out_dir, force, check, verify=False):
    return [render_row(r, roots, out_dir, force, check, verify) for r in rows]


def failed_row(row: dict, error: BaseException) -> dict:
    """The report row of a mixture whose render did not come back (its worker died or raised)."""
    return {"mix_id": row["mix_id"], "path": str(row["path"]), "status": "error",
            "error": f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", "skipped": False}


class Renderer:
    """Renders rows as they are read, in batches, with at most `limit` batches in flight (two per worker),
    so the tasks and rows held at a time do not grow with the manifest. `peak` is the most batches that
    were in flight at once: `sonify.mix` prints it with the bound."""

    def __init__(self, roots, out_dir: str, workers: int, use_ray: bool, force: bool, check: bool,
                 verify: bool = False, batch: int = 16):
        self.task = partial(_render_batch, roots=roots, out_dir=out_dir, force=force, check=check, verify=verify)
        self.workers, self.use_ray, self.batch = max(1, int(workers)), use_ray, batch
        self.limit = self.peak = 0

    def run(self, rows: Iterable[dict]) -> Iterator[list[dict]]:
        """Yield report rows, one list per finished batch (in the order they finish)."""
        rows = iter(rows)
        batches = iter(lambda: list(islice(rows, self.batch)), [])
        if self.use_ray:
            yield from self._on_ray(batches)
        elif self.workers == 1:
            self.limit = 1
            for b in batches:
                self.peak = 1
                yield self.task(b)
        else:
            yield from self._on_processes(batches)

    def _on_processes(self, batches: Iterator[list[dict]]) -> Iterator[list[dict]]:
        from sonify.engine.processes import BoundedMap

        pool = BoundedMap(self.task, self.workers)
        self.limit = pool.limit
        for batch, reports, error in pool(batches):
            self.peak = max(self.peak, pool.peak)
            if error is None:
                yield reports
            elif len(batch) == 1:
                yield [failed_row(batch[0], error)]
            else:   # which row? each alone (the engine's pool runs a task whose worker died again by itself)
                yield [reports[0] if e is None else failed_row(b[0], e) for b, reports, e in BoundedMap(self.task, self.workers)([r] for r in batch)]

    def _on_ray(self, batches: Iterator[list[dict]]) -> Iterator[list[dict]]:
        import ray

        from sonify.engine.cluster import init_ray, ray_address

        if not ray.is_initialized():
            init_ray(ray_address())   # RAY_ADDRESS, or a Ray of its own: never a cluster recorded on the machine
        task = ray.remote(self.task.func)
        self.limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: dict = {}

        def submit(batch: list[dict]):
            pending[task.remote(batch, **self.task.keywords)] = batch
            self.peak = max(self.peak, len(pending))

        def collect(ref) -> list[dict]:
            batch = pending.pop(ref)
            try:
                return ray.get(ref)
            except Exception as e:   # a worker that died or raised: each row alone, so only its own fails
                if len(batch) == 1:
                    return [failed_row(batch[0], e)]
                return [out for row in batch for out in _ray_alone(task, row, self.task.keywords)]

        for b in batches:
            submit(b)
            if len(pending) >= self.limit:
                done, _ = ray.wait(list(pending), num_returns=1)
                yield collect(done[0])
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield collect(done[0])


def _ray_alone(task, row: dict, keywords: dict) -> list[dict]:
    import ray

    try:
        return ray.get(task.remote([row], **keywords))
    except Exception as e:
        return [failed_row(row, e)]


class Reports:
    """Report rows written as they come, counted for the summary line; the first failures kept to print."""

    def __init__(self, writer: pq.ParquetWriter, bar, flush_rows: int = 4096):
        self.writer, self.bar, self.flush_rows = writer, bar, flush_rows
        self.buffer: list[dict] = []
        self.errors, self.notes = Counter(), Counter()
        self.rendered = self.skipped = self.failed = 0
        self.first_failed: list[dict] = []

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            kind = error_reason(r["error"] or "")
            if r["status"] != "ok":
                self.errors[kind] += 1
                self.failed += 1
                if len(self.first_failed) < MAX_ERROR_LINES:
                    self.first_failed.append(r)
            else:
                self.skipped += bool(r["skipped"])
                self.rendered += not r["skipped"]
                self.notes[kind] += bool(r["error"])
        self.buffer.extend(rows)
        self.bar.update(len(rows))
        if len(self.buffer) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=REPORT_SCHEMA))
            self.buffer = []


@contextmanager
def report_writer(path: Path, total: int, progress: bool) -> Iterator[Reports]:
    """`Reports` writing `path` (atomically: a killed render leaves no half report), with a progress bar."""
    from tqdm.auto import tqdm

    from sonify.engine.files import atomic_path

    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, REPORT_SCHEMA) as writer, \
            tqdm(total=total, unit="mix", desc="rendering", disable=not progress) as bar:
        reports = Reports(writer, bar)
        yield reports
        reports.flush()
