"""Export a run: `python -m sonify.export hf run=runs/<pipeline> --out DIR`.

`hf` writes a Hugging Face `datasets` dataset (image, mixture audio, concepts, components with
their loudness and scores, split) that `datasets.load_from_disk(DIR)` reads, plus the same rows as
Parquet under `DIR/parquet/` for `load_dataset("parquet", data_files=...)` or the Hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from sonify.engine.config import split_run_arg
    from sonify.engine.errors import ConfigError

    try:
        run_dir, rest = split_run_arg(argv)
    except ConfigError as e:
        print(f"sonify.export: {e}", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="python -m sonify.export", description=__doc__.splitlines()[0])
    p.add_argument("format", choices=["hf"], help="hf: a Hugging Face datasets dataset")
    p.add_argument("--out", required=True, help="the dataset's folder (replaced whole)")
    p.add_argument("--rows-per-parquet", type=int, default=1000)
    a = p.parse_args(rest)
    try:
        import datasets  # noqa: F401
    except ImportError:
        print("sonify.export: the hf export needs the datasets package, a dependency of sonify that is missing here (pip install 'datasets>=4.0')", file=sys.stderr)
        return 2
    from sonify.publish.hf import export_hf
    try:
        n = export_hf(run_dir, a.out, a.rows_per_parquet)
    except (FileNotFoundError, ConfigError) as e:
        print(f"sonify.export: {e}", file=sys.stderr)
        return 2
    print(f"exported {n} examples to {a.out} (parquet copies in {Path(a.out) / 'parquet'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
