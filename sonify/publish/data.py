"""What the report and the export read from a run: its tables as rows, joined per image and variant."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from sonify.engine.executor import table_counts
from sonify.engine.keys import keyed_rng
from sonify.engine.schemas import STATUS_OK, TABLES
from sonify.engine.store import TableStore

# the tables in the order rows flow through a run
FLOW = ("images", "audio_files", "audio_chunks", "concepts", "captions", "kept_images", "audio_embeddings",
        "concept_embeddings", "matches", "mixes", "audio_features", "image_latents", "shard_index")


class Run:
    """A run folder's tables, read once, with the joins the report and the export need."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.store = TableStore(self.dir)
        self._paths: dict = {}
        if not self.store.exists("images"):
            raise FileNotFoundError(f"{self.dir}: no images table under manifests/; pass run=<run dir> of a run")

    def paths(self, role: str):
        """The `SourcePaths` of the run's `images` or `audio` sources, from the config it saved (`config.yaml`):
        stored uris are relative to those roots."""
        from omegaconf import OmegaConf

        from sonify.sources import SourcePaths

        if role not in self._paths:
            saved = self.dir / "config.yaml"
            if not saved.is_file():
                raise FileNotFoundError(f"{saved} is missing: the run's source roots are unknown (run a stage with sonify.run)")
            self._paths[role] = SourcePaths(OmegaConf.load(saved).sources[role], role)
        return self._paths[role]

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table | None:
        return self.store.read(name, columns) if self.store.exists(name) else None

    def rows(self, name: str, columns: list[str] | None = None) -> list[dict]:
        t = self.table(name, columns)
        return t.to_pylist() if t is not None else []

    def counts(self) -> dict[str, dict]:
        """Rows, ok, errors by reason (and kept/dropped) of every table present, in flow order."""
        names = [n for n in FLOW if self.store.exists(n)] + sorted(
            n for n in TABLES if n not in FLOW and self.store.exists(n))
        return {n: table_counts(self.store, n) for n in names}

    def ok_columns(self, name: str, columns: list[str]) -> dict[str, list]:
        """Columns of a table's ok rows as lists (empty when the table is absent)."""
        import pyarrow.compute as pc

        t = self.table(name, columns + ["status"])
        if t is None:
            return {}
        t = t.filter(pc.equal(t.column("status"), STATUS_OK))
        return {c: t.column(c).to_pylist() for c in columns}

    def by_id(self, name: str, key: str = "id", columns: list[str] | None = None) -> dict[str, dict]:
        return {r[key]: r for r in self.rows(name, columns)}

    def grouped(self, name: str, key: str = "image_id", only: list[str] | None = None) -> dict[str, list[dict]]:
        """Rows by `key`; with `only`, just the rows whose key is in it (filtered in Arrow, not in Python)."""
        import pyarrow.compute as pc

        t = self.table(name)
        out: dict[str, list[dict]] = defaultdict(list)
        if t is None:
            return out
        if only is not None:
            t = t.filter(pc.is_in(t.column(key), value_set=pa.array(only, pa.string())))
        for r in t.to_pylist():
            out[r[key]].append(r)
        return out

    def kept_ids(self) -> list[str]:
        return sorted(r["id"] for r in self.rows("kept_images", ["id", "kept"]) if r["kept"])

    def ok_mixes(self) -> list[dict]:
        return sorted((r for r in self.rows("mixes") if r["status"] == STATUS_OK), key=lambda r: r["id"])


def sample(ids: list[str], limit: int | None, seed: int, purpose: str) -> list[str]:
    """At most `limit` of `ids` (sorted), drawn by the keyed generator: the same run and seed, the same sample."""
    ids = sorted(ids)
    if limit is None or len(ids) <= limit:
        return ids
    pick = keyed_rng(seed, purpose).choice(len(ids), size=limit, replace=False)
    return [ids[i] for i in sorted(pick)]
