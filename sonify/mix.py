"""Rebuild every mixture of a release manifest from the source audio alone.

    python -m sonify.mix --manifest release.parquet --source NAME=DIR ... [--out DIR] [--check | --verify]

A manifest names each component by its audio source (`source`) and its path relative to that source's
root (`uri`), never by a path of the machine that made it. Say where each source's root is now:
`--source NAME=DIR` (repeatable; `--audio-root NAME=DIR` is a documented alias), `--audio-root DIR` holding one
folder per source (`DIR/<source>/<uri>`), or `--pipeline NAME`, whose `sources.audio` give the
roots (a folder source's path, a list's root or folder, a recipe's root); flags win over the pipeline.
A source with no root, or whose root is not a folder, fails in one line naming it. No model is needed. Components
are decoded and gained exactly as the pipeline did (`sonify.mixing.render`), so the files are bit-for-bit
the pipeline's. Parallel over local processes, or over Ray with `--ray` (or when RAY_ADDRESS is set);
resumable (existing outputs are kept unless --force); missing, corrupt or out-of-root sources
become per-row errors and a non-zero exit. A report lands in <out>/render_report.parquet.

Nothing is written outside --out: a row whose output `path` is absolute, holds `..` or resolves
outside through a link is refused (one line each, non-zero exit). A manifest that cannot be
rendered (a missing column, values of the wrong kind, two rows with the same output path) or an
--out that is not a writable folder fails in one line, exit 2, before anything is rendered.
Temp files left by an earlier render that was killed are removed first. The manifest is streamed in
batches with a bounded number of batches in flight, so memory does not grow with the release.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sonify.engine.cli import command, command_parser
from sonify.engine.errors import ConfigError
from sonify.mixing.rebuild import (REPORT_NAME, Renderer, duplicate_outputs, missing_root, parse_roots, prepare_out,
                                   release_sources, report_writer)


@command
def main(argv: list[str] | None = None) -> int:
    from sonify.mixing.release import Release

    p = command_parser("mix", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--manifest", required=True, help="release manifest (.parquet or .jsonl)")
    p.add_argument("--source", action="append", default=[], metavar="NAME=DIR", help="where audio source NAME's root is now")
    p.add_argument("--audio-root", action="append", default=[], metavar="DIR|NAME=DIR",
                   help="DIR: a folder of per-source folders (DIR/<source>/<uri>); NAME=DIR: an alias of --source NAME=DIR")
    p.add_argument("--pipeline", metavar="NAME", help="take the audio sources' roots from this pipeline's config")
    p.add_argument("--out", default="mixes", help="output folder (default: ./mixes)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local processes (default: all cores)")
    p.add_argument("--ray", action="store_true", help="render on Ray (RAY_ADDRESS, or a local Ray)")
    p.add_argument("--force", action="store_true", help="re-render outputs that already exist")
    p.add_argument("--check", action="store_true", help="verify each mixture against the manifest's hashes")
    p.add_argument("--verify", action="store_true", help="render in memory and compare with pcm24_sha256; write no audio")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if not (a.audio_root or a.source or a.pipeline):
        p.error("say where the audio sources are: --source NAME=DIR (one per source), --audio-root DIR or --pipeline NAME")
    t0 = time.perf_counter()
    if not Path(a.manifest).is_file():   # said here: the readers' own messages would repeat the path
        print(f"sonify.mix: manifest {a.manifest}: no such file", file=sys.stderr)
        return 2
    try:
        release = Release(a.manifest)
        dups = duplicate_outputs(release, a.out)   # a first pass checks every row before anything is rendered
        names = release_sources(release)
    except (OSError, ValueError) as e:
        print(f"sonify.mix: manifest {a.manifest}: {e}", file=sys.stderr)
        return 2
    if dups:
        path, ids = next(iter(dups.items()))
        print(f"sonify.mix: {len(dups)} output paths are claimed by more than one row, e.g. {path} by mix ids "
              f"{', '.join(ids[:3])}; nothing rendered", file=sys.stderr)
        return 2
    try:
        roots = parse_roots(a.audio_root, a.source, pipeline_roots(a.pipeline) if a.pipeline else None)
    except (ValueError, ConfigError) as e:
        print(f"sonify.mix: {e}", file=sys.stderr)
        return 2
    problem = missing_root(names, *roots)
    if problem:
        print(f"sonify.mix: {problem}; nothing rendered", file=sys.stderr)
        return 2
    try:
        prepare_out(a.out)
    except ValueError as e:
        print(f"sonify.mix: {e}", file=sys.stderr)
        return 2
    from sonify.engine.cluster import ray_address

    renderer = Renderer(roots, a.out, a.workers, a.ray or ray_address() is not None,   # the engine's rule for joining Ray
                        a.force, a.check, a.verify)
    with report_writer(Path(a.out) / REPORT_NAME, release.num_rows, not a.no_progress) as reports:
        for done in renderer.run(release.rows()):    # a row whose output is refused comes back as its error row
            reports.add(done)
    errors, notes = reports.errors, +reports.notes
    print(f"{release.num_rows} mixtures: {reports.rendered} {'verified' if a.verify else 'rendered'}, "
          f"{reports.skipped} already there, {reports.failed} errors {dict(errors) if errors else ''} in "
          f"{time.perf_counter() - t0:.1f}s -> {a.out}" + (f"; notes {dict(notes)}" if notes else "")
          + ("; hashes checked" if a.check else "") + f"; batches in flight: at most {renderer.peak}, bound {renderer.limit}")
    for r in reports.first_failed:
        print(f"  {r['mix_id']}: {r['error']}", file=sys.stderr)
    if reports.failed > len(reports.first_failed):
        print(f"  ... {reports.failed - len(reports.first_failed)} more in {Path(a.out) / REPORT_NAME}", file=sys.stderr)
    return 1 if reports.failed else 0


def pipeline_roots(name: str) -> dict[str, Path]:
    """The roots of a pipeline's audio sources, by source name (resolved as `sonify.run` resolves them)."""
    from sonify.engine.config import load_config
    from sonify.sources import source_root

    return {str(s.name): Path(source_root(s)) for s in load_config([f"pipeline={name}"]).sources.audio}


if __name__ == "__main__":
    sys.exit(main())
