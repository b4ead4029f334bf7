"""Prepare a corpus: `python -m sonify.recipes <name> --root DIR [--out FILE]`.

Checks a local copy in its official layout and writes its source table (Parquet, or CSV with labels
joined by ';') with paths relative to `--root`. Use the table as `{kind: parquet, path: FILE,
uri_column: relpath}` when FILE sits in the root, or skip the file: `{kind: recipe, recipe: NAME, root: DIR}`.
Missing files are counted as `not_found` rows; the exit code is 0 unless the copy cannot be read at all (2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sonify.engine.cli import command, command_parser
from sonify.engine.files import atomic_write
from sonify.sources.recipes import RECIPES, RecipeError, counts, run_recipe


def write_table(table, out: Path) -> Path:
    if out.suffix == ".csv":
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
        labels = pc.binary_join(table.column("labels"), ";")
        table = table.set_column(table.column_names.index("labels"), "labels", labels)
        return atomic_write(out, lambda tmp: pacsv.write_csv(table, str(tmp)))
    import pyarrow.parquet as pq
    return atomic_write(out, lambda tmp: pq.write_table(table, str(tmp)))


@command
def main(argv: list[str] | None = None) -> int:
    p = command_parser("recipes", __doc__, settings=False)
    p.add_argument("name", choices=sorted(RECIPES), help="the corpus")
    p.add_argument("--root", required=True, help="the local copy, in the corpus's official layout")
    p.add_argument("--out", help="the source table (.parquet or .csv); default <root>/sonify_<name>.parquet")
    a = p.parse_args(argv)
    try:
        table = run_recipe(a.name, a.root)
    except RecipeError as e:
        print(f"sonify.recipes: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else Path(a.root) / f"sonify_{a.name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(table, out)
    c = counts(table)
    errs = ", ".join(f"{k}={v}" for k, v in c["errors"].items()) or "none"
    print(f"{a.name}: {c['rows']} rows, {c['ok']} ok, errors: {errs} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
