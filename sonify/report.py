"""Write a run's report: `python -m sonify.report run=runs/<pipeline> [--out DIR]`.

A static site (index.html + assets, opens from disk): where every row went, plots, a paged gallery
of kept images with their concepts, chosen chunks and mixtures (audio players), and dropped images.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sonify.engine.cli import command, command_parser, non_negative_int, out_folder, parse_command, positive_int, report_errors, run_of
from sonify.publish.site import ReportConf, build_report


def run_chunk_seconds(run_dir: Path, default: float) -> float:
    """The chunk length the run mixed at, from its saved config."""
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        from omegaconf import OmegaConf
        return float(OmegaConf.select(OmegaConf.load(cfg), "stages.audio.chunk_seconds", default=default))
    return default


@command
def main(argv: list[str] | None = None) -> int:
    d = ReportConf()
    p = command_parser("report", __doc__)
    p.add_argument("--out", type=out_folder, help="the site's folder (default <run>/report)")
    p.add_argument("--max-images", type=non_negative_int, default=d.max_images, help="kept images shown; more are sampled (seeded)")
    p.add_argument("--page-size", type=positive_int, default=d.page_size)
    p.add_argument("--seed", type=int, default=d.seed)
    a, settings = parse_command(p, argv)
    run_dir = run_of(p, settings)
    conf = ReportConf(max_images=a.max_images, page_size=a.page_size, seed=a.seed,
                      chunk_seconds=run_chunk_seconds(run_dir, d.chunk_seconds))
    return report_errors("report", lambda: print(f"report: {build_report(run_dir, a.out, conf)}"))


if __name__ == "__main__":
    sys.exit(main())
