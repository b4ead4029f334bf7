"""Stage `mix`: one mixture per (image, variant) from its matched chunks.

Each chunk is decoded from its source at the output rate (16 kHz by default), measured with the
BS.1770-4 meter (`sonify.media.loudness`), scaled to a target drawn uniformly from
[lufs_min, lufs_max] by a generator keyed by (seed, image, variant, concept index), and summed.
Silent components (loudness -inf: below the absolute gate) are left out with a reason; a variant
with none left is an error row. A sum whose sample peak is above the ceiling is scaled down and
the gain recorded. A chunk matched by two concepts of one variant (Algorithm 1 allows it) is summed
twice and listed in `repeated_chunks`; `stages.retrieve.distinct_within_variant` avoids it. Mixtures are 24-bit FLAC under `<run>/mixes/`; when the stage finishes, the
release manifest (`sonify.mixing.release`) is written. A variant with a component that `sonify.mix`
would refuse to rebuild from (an absolute or `..` source path, or one that a linked folder takes outside
its source's root) is an `unrebuildable` error row:
the release never holds a row that cannot be rebuilt.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sonify.engine.errors import error_reason, error_text
from sonify.engine.ids import parse_variant_id, parent_of_indexed_sql
from sonify.engine.partitions import nest_sorted
from sonify.engine.schemas import COMPONENT_TYPE, STATUS_ERROR, STATUS_OK
from sonify.engine.settings import AT_LEAST_1, StageSettings, ranged, runtime
from sonify.engine.store import rows_to_table
from sonify.media.audio import dbfs, load_chunk
from sonify.mixing.rebuild import SourceRefused, relpath_problem, resolve_source
from sonify.mixing.render import render, target_lufs, write_flac
from sonify.sources import SourcePaths
from sonify.stages.base import Stage

WORK_COMPONENT = pa.struct([f for f in COMPONENT_TYPE if f.name not in
                            ("target_lufs", "measured_lufs", "gain_db", "included", "reason")])


@dataclass
class MixSettings(StageSettings):
    partition_rows: int = 512
    sample_rate: int = ranged(16000, AT_LEAST_1)   # rate of the mixtures (AST takes 16 kHz)
    lufs_min: float = -24.0            # each component's target is drawn uniformly from [lufs_min, lufs_max]
    lufs_max: float = ranged(-22.0, (lambda v, c: v >= c.stages.mix.lufs_min, "a loudness >= stages.mix.lufs_min"))   # EBU R128's -23 LUFS
    # the summed mixture is scaled down if its sample peak is above this
    peak_ceiling_dbfs: float = ranged(-1.0, (lambda v, c: v <= 0, "a level in dBFS <= 0"))
    # also write release/release.jsonl beside release.parquet: only the release step (`finalize`, run even when every
    # partition is skipped) reads it, no mixture depends on it, so it stays out of the fingerprint
    release_jsonl: bool = runtime(False)


WORK_SCHEMA = pa.schema([("id", pa.string()), ("image_id", pa.string()), ("variant", pa.string()),
                         ("components", pa.list_(WORK_COMPONENT))])


class MixStage(Stage):
    name = "mix"
    Settings = MixSettings
    version = 4                         # 2: mixes.repeated_chunks, files in partition folders; 3: uris relative to source roots;
                                        # 4: a row sonify.mix would refuse is an unrebuildable error row;
                                        # components carry their chunk's pcm_sha256 (a changed source remixes)
                                        # (mixes schema 6 renamed columns: variant, components' source; no relpath)
    outputs = ("mixes",)
    upstream = ("retrieve", "audio")
    uses = ("run.seed", "stages.audio.chunk_seconds")
    files_dir = "mixes"
    expected_errors = frozenset({"no_audible_component"})

    def __init__(self, cfg):
        from sonify.media.loudness import LoudnessMeter   # pyloudnorm (scipy) loads with a worker, not with the config

        super().__init__(cfg)
        self.rate = self.conf.sample_rate
        self.meter = LoudnessMeter(self.rate)
        self.chunk_seconds = cfg.stages.audio.chunk_seconds
        self.paths = SourcePaths.of(cfg, "audio")

    @classmethod
    def work_list(cls, cfg, store):
        """Matched chunks grouped by (image, variant). (Temp files that a killed mixture write left under
        mixes/ are removed by the executor before any partition runs, as for every stage's files.)"""
        flat = store.connect("matches", chunks="audio_chunks", files="audio_files").sql(f"""
            SELECT {parent_of_indexed_sql("m.id")} AS id, m.image_id, m.variant, m.concept_index, m.text, m.chunk_id,
                   f.source, c.uri, c.sample_rate AS source_rate, c.start_frame, c.num_frames,
                   c."offset", c.duration, m.cosine, c.pcm_sha256
            FROM matches m JOIN chunks c ON c.id = m.chunk_id JOIN files f ON f.id = c.file_id
            WHERE m.status = 'ok'
            ORDER BY 1, m.concept_index""")   # a sort spills to disk; a list aggregate of 2M groups would not
        return nest_sorted(flat, "id", ["id", "image_id", "variant"], WORK_COMPONENT, "components")

    @classmethod
    def finalize(cls, cfg, store) -> None:
        from sonify.mixing.release import write_release

        write_release(cfg, store)

    def _refused(self, comp: dict) -> str | None:
        """Why `sonify.mix` would refuse this component, by its own rule (`resolve_source`) against the
        run's roots: besides an absolute or `..` path, a path that a linked folder takes outside its root,
        which the listing's string-only check cannot see."""
        problem = relpath_problem(comp["uri"])
        root = self.paths.roots.get(comp["source"])
        if problem or root is None or "://" in root:
            return problem
        try:
            resolve_source(comp["source"], comp["uri"], None, {comp["source"]: Path(root)})
        except SourceRefused:
            return f"{comp['uri']!r} resolves outside the audio root {root}"
        return None

    def _mix(self, row: dict) -> dict:
        conf, seed = self.conf, self.cfg.run.seed
        counts = Counter(c["chunk_id"] for c in row["components"])
        out = {"id": row["id"], "image_id": row["image_id"], "variant": row["variant"], "sample_rate": self.rate,
               "repeated_chunks": sorted(k for k, n in counts.items() if n > 1)}
        comps, signals, weighted, gains = [], [], [], []
        refused = next(((c, why) for c in row["components"] if (why := self._refused(c))), None)
        if refused:
            return {**out, "status": STATUS_ERROR, "error": error_text(
                "unrebuildable", f"source {refused[0]['source']!r}: {refused[1]}; sonify.mix refuses it (list sources store "
                                 f"paths relative to their root)")}
        for c in row["components"]:
            comp = {**c, "target_lufs": target_lufs(conf.lufs_min, conf.lufs_max, seed, row["image_id"], row["variant"], c["concept_index"]),
                    "measured_lufs": None, "gain_db": None, "included": False, "reason": None}
            try:
                x = load_chunk(self.paths.resolve(c["source"], c["uri"]), c["start_frame"], c["num_frames"], self.rate, self.chunk_seconds)
            except Exception as e:
                comp["reason"] = error_text("decode_error", f"{type(e).__name__}: {e}")
                comps.append(comp)
                continue
            y = self.meter.k_weight(self.meter.pad(x))
            measured = self.meter.integrated_weighted(y)
            if not math.isfinite(measured):
                comp["reason"] = error_text("below_gate", "silent, or quieter than the -70 LUFS absolute gate")
            else:
                comp.update(measured_lufs=measured, gain_db=comp["target_lufs"] - measured, included=True)
                signals.append(x)
                weighted.append(y)
                gains.append(comp["gain_db"])
            comps.append(comp)
        out.update(components=comps, n_components=len(signals))
        if not signals:
            reasons = sorted({error_reason(c["reason"] or "") for c in comps}) or ["no_components"]
            return {**out, "status": STATUS_ERROR,
                    "error": error_text("no_audible_component", f"{len(comps)} components, none summed ({', '.join(reasons)})")}
        final, mix_gain = render(signals, gains, ceiling_dbfs=conf.peak_ceiling_dbfs)
        key, image_id = parse_variant_id(row["id"])
        path, target = self.owned_path(f"{key}/{image_id}.flac")
        flac_sha, pcm_sha = write_flac(target, final, self.rate)
        # the mixture's K-weighted signal from its components' (the filter is linear): no second filtering
        lufs = self.meter.integrated_weighted(render(weighted, gains, mix_gain)[0])
        return {**out, "duration": final.shape[0] / self.rate, "mix_gain_db": mix_gain,
                "lufs": lufs, "peak_dbfs": dbfs(float(np.max(np.abs(final)))),
                "path": path, "pcm24_sha256": pcm_sha, "flac_sha256": flac_sha,
                "status": STATUS_OK, "error": None}

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        return {"mixes": rows_to_table("mixes", [self._mix(r) for r in batch.to_pylist()])}
