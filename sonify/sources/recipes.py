"""Recipes: a local copy of a corpus in its official layout -> a source table in sonify's list format.

As lhotse keeps one module per corpus, each corpus is one module, `sonify.sources.corpora.<name>`
(`sa1b`, `audioset`, `fsd50k`, `bbc_sfx`, `vggsound`), holding its layout parsing and its recipe
(`prepare(root)`), and saying where the corpus comes from and what its licence allows. This module is
the registry (`RECIPES`, which the config check also asks) and what every recipe shares. A recipe checks
the copy against the corpus's own listing and returns one row per listed item: `relpath` (relative
to the declared root, never absolute, so a manifest is rebuildable elsewhere), labels, split, licence,
and `status`/`error` (`not_found` for a listed file that is not there: counted, never fatal).
A copy whose listing file itself is missing fails with `RecipeError` (one line).
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from sonify.engine.errors import error_reason, error_text
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.media import AUDIO_EXTENSIONS
from sonify.sources import walk_files

# the registry: corpus -> the role of its source (`sonify.engine.config.RECIPES` reads it when a config is checked)
RECIPES = {"sa1b": "images", "audioset": "audio", "fsd50k": "audio", "bbc_sfx": "audio", "vggsound": "audio"}

SCHEMA = pa.schema([
    ("relpath", pa.string()),            # relative to the root ('shard.tar#member' inside SA-1B tars)
    ("item", pa.string()),               # the corpus's own id of the item (YTID_start, fname, ...)
    ("labels", pa.list_(pa.string())),   # human-readable label names
    ("split", pa.string()),
    ("license", pa.string()),
    ("caption", pa.string()),            # a description where the corpus has one (BBC SFX)
    ("tar_offset", pa.int64()), ("nbytes", pa.int64()),
    ("status", pa.string()), ("error", pa.string()),
])


class RecipeError(ValueError):
    """The copy cannot be read at all (its listing file is missing or malformed)."""


def row(relpath: str, item: str, labels: Iterable[str] = (), split=None, license=None, caption=None,
        tar_offset=None, nbytes=None, error: str | None = None) -> dict:
    return {"relpath": relpath, "item": item, "labels": list(labels), "split": split, "license": license,
            "caption": caption, "tar_offset": tar_offset, "nbytes": nbytes,
            "status": STATUS_ERROR if error else STATUS_OK, "error": error}


def missing(relpath: str, item: str, what: str, **kw) -> dict:
    return row(relpath, item, error=error_text("not_found", what), **kw)


def require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RecipeError(f"{path} not found: {what}")
    return path


def audio_by_stem(root: Path) -> dict[str, str]:
    """File stem -> path relative to `root`, for every audio file under it (one walk)."""
    return {p.stem: str(p.relative_to(root)) for p, problem in walk_files(root, AUDIO_EXTENSIONS) if problem is None}


def run_recipe(name: str, root: str | Path) -> pa.Table:
    """The source table of the corpus `name` whose copy is at `root`."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; valid choices: {', '.join(RECIPES)}")
    root = Path(root)
    if not root.is_dir():
        raise RecipeError(f"{root} is not a folder (the root of a local {name} copy)")
    module = importlib.import_module(f"sonify.sources.corpora.{name}")
    return pa.Table.from_pylist(module.prepare(root), schema=SCHEMA)


def counts(table: pa.Table) -> dict:
    """Rows, ok and errors by reason: what the command prints."""
    errs = Counter(error_reason(e) for e in table.column("error").to_pylist() if e)
    return {"rows": table.num_rows, "ok": table.num_rows - sum(errs.values()), "errors": dict(errs.most_common())}


def recipe_listing(source) -> list[dict]:
    """Rows for a source of kind `recipe` (relpath, labels, tar_offset, nbytes, list_error); `relpath` is
    relative to the recipe's root, which is the source's declared root (`sonify.sources.source_root`)."""
    root = Path(source.root)
    try:
        table = run_recipe(source.recipe, root)
    except RecipeError as e:
        return [{"relpath": ".", "labels": [], "tar_offset": None, "nbytes": None, "list_error": error_text("not_found", e)}]
    return [{"relpath": r["relpath"], "labels": r["labels"], "tar_offset": r["tar_offset"], "nbytes": r["nbytes"],
             "list_error": r["error"]} for r in table.to_pylist()]
