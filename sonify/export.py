"""Export a run: `python -m sonify.export hf run=runs/<pipeline> --out DIR`.

`hf` writes a Hugging Face `datasets` dataset (image, mixture audio, concepts, components with
their loudness and scores, split) that `datasets.load_from_disk(DIR)` reads, plus the same rows as
Parquet under `DIR/parquet/` for `load_dataset("parquet", data_files=...)` or the Hub.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sonify.engine.cli import command, command_parser, out_folder, parse_command, positive_int, report_errors, run_of


@command
def main(argv: list[str] | None = None) -> int:
    p = command_parser("export", __doc__)
    p.add_argument("format", choices=["hf"], help="hf: a Hugging Face datasets dataset")
    p.add_argument("--out", required=True, type=out_folder,
                   help="the dataset's folder: a new or empty one, or an earlier export of this command (replaced "
                        "whole); refused when it is, holds or lies inside the run folder, or holds anything else")
    p.add_argument("--rows-per-parquet", type=positive_int, default=1000)
    a, settings = parse_command(p, argv)
    run_dir = run_of(p, settings)
    try:
        import datasets  # noqa: F401
    except ImportError:
        print("sonify.export: the hf export needs the datasets package, a dependency of sonify that is missing here (pip install 'datasets>=4.0')", file=sys.stderr)
        return 2

    def export() -> None:
        from sonify.publish.hf import export_hf

        n = export_hf(run_dir, a.out, a.rows_per_parquet)
        print(f"exported {n} examples to {a.out} (parquet copies in {Path(a.out) / 'parquet'})")
    return report_errors("export", export)


if __name__ == "__main__":
    sys.exit(main())
