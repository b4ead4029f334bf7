"""Stage `shards`: WebDataset tars of training samples, one sample per (image, variant).

Samples: `<key>.latent.npy` (the VAE's [mean, std], (2, C, h, w) float16), `<key>.ast.npy` (T x D
float16), `<key>.json` (image id, variant, concepts, components, loudness figures) and optionally
`<key>.jpg` (the centre crop) and `<key>.flac` (the mixture). Keys are '<image id>_<variant key>'
(`sonify.engine.ids.sample_key`): no dots or slashes. The json's components hold
`SHARD_COMPONENT_FIELDS` of the mixes table's component type, under the same names. The split is by a hash of the image id (every variant of an image on one
side); samples are shuffled across shards by a hash of (seed, key). Each shard is one partition:
written to a temp file and renamed, with a JSON summary beside it. A worker gets its shard's rows
from the engine's plan file and reads one sample's members at a time, so memory is bounded by one
shard's metadata and one sample's bytes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.files import atomic_path, atomic_write
from sonify.engine.ids import sample_key_sql, variant_key_of_sql
from sonify.engine.keys import unit_hash_sql
from sonify.engine.schemas import SHARD_COMPONENT_FIELDS, STATUS_ERROR, STATUS_OK, component_sql
from sonify.engine.settings import AT_LEAST_1, FRACTION, StageSettings, ranged
from sonify.engine.store import rows_to_table
from sonify.media.tar import TarStream
from sonify.sources import SourcePaths
from sonify.stages.base import Stage


@dataclass
class ShardsSettings(StageSettings):
    batch_size: int = 1000
    samples_per_shard: int = ranged(1000, AT_LEAST_1)
    val_fraction: float = ranged(0.01, FRACTION)   # by a hash of the image id: all variants of an image on one side
    include_jpg: bool = False          # the centre-cropped image as jpg
    include_flac: bool = False         # the mixture as flac
    jpg_quality: int = ranged(90, (lambda v, c: 0 <= v <= 100, "an integer in [0, 100]"))


def _assign_sql(conf: ShardsSettings, seed: int) -> str:
    """Each sample's split (by a hash of its image id: every variant on one side), shard and position
    (in the order of a hash of (seed, key)), as SQL over `samples`."""
    n = conf.samples_per_shard
    split = unit_hash_sql("'split' || chr(0) || image_id")
    return f"""
        WITH k AS (SELECT id, CASE WHEN {split} < {conf.val_fraction!r} THEN 'val' ELSE 'train' END AS split,
                          sha1('{seed}' || chr(0) || id) AS ord FROM samples),
             r AS (SELECT id, split, row_number() OVER (PARTITION BY split ORDER BY ord) - 1 AS i FROM k)
        SELECT id, split, split || '-' || printf('%06d', i // {n}) || '.tar' AS shard, CAST(i % {n} AS INTEGER) AS position
        FROM r"""


class ShardsStage(Stage):
    name = "shards"
    Settings = ShardsSettings
    version = 2                         # 2: the json speaks the tables' words (image_uri, components' text, source, uri, cosine)
    outputs = ("shard_index",)
    upstream = ("mix", "features", "latents", "filter", "concepts", "images")
    uses = ("run.seed", "stages.latents.resolution", "stages.latents.max_pixels")
    files_dir = "shards"
    partition_by = "shard"
    whole_partition = True
    # a sample's content is its members' bytes (by hash) and its metadata; paths are only where they lie
    content_columns = ("id", "split", "shard", "position", "ast_sha256", "latent_sha256", "flac_sha256", "image_sha256", "meta")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.paths = SourcePaths.of(cfg, "images")

    @classmethod
    def work_list(cls, cfg, store):
        conf = cls.settings(cfg)
        con = store.connect("mixes", "images", "concepts", feats="audio_features", lat="image_latents", kept="kept_images")
        # six joins into a JSON per sample: two threads join them within run.plan_memory (1GB at 1M images,
        # bench plan), the join with the assignment streams on one, as the plan file's sort does
        con.execute("SET threads = 2")
        con.execute(f"""
            CREATE TEMP TABLE samples AS
            SELECT {sample_key_sql("m.image_id", variant_key_of_sql("m.id"))} AS id, m.image_id, m.variant, m.id AS mix_id,
                   f.path AS ast_path, l.path AS latent_path, m.path AS mix_path,
                   f.sha256 AS ast_sha256, l.sha256 AS latent_sha256, m.flac_sha256, i.sha256 AS image_sha256,
                   i.source, i.uri, i.tar_offset, i.nbytes,
                   to_json(struct_pack(
                       image_id := m.image_id, image_source := i.source, image_uri := i.uri, variant := m.variant,
                       concepts := c.concepts, lufs := m.lufs, peak_dbfs := m.peak_dbfs, mix_gain_db := m.mix_gain_db,
                       duration := m.duration, ast_frames := f.frames, ast_dim := f.dim,
                       latent_shape := [l.channels, l.height, l.width], scaling_factor := l.scaling_factor,
                       components := list_transform(list_filter(m.components, lambda x: x.included),
                                                 lambda x: {component_sql(SHARD_COMPONENT_FIELDS, "x")})
                   ))::VARCHAR AS meta
            FROM mixes m
            JOIN feats f ON f.id = m.id AND f.status = 'ok'
            JOIN lat l ON l.id = m.image_id AND l.status = 'ok'
            JOIN kept k ON k.id = m.image_id AND k.kept
            JOIN images i ON i.id = m.image_id
            LEFT JOIN concepts c ON c.id = m.id
            WHERE m.status = 'ok'""")
        con.execute(f"CREATE TEMP TABLE assign AS {_assign_sql(conf, cfg.run.seed)}")
        con.execute("SET threads = 1")
        return con.sql("SELECT a.shard, a.position, a.split, s.* EXCLUDE (id), a.id FROM assign a JOIN samples s USING (id)")

    @classmethod
    def finalize(cls, cfg, store) -> None:
        """`shards/train.txt` and `shards/val.txt`: the current shards of each split, one path per line
        relative to that folder. The trainer reads these lists, never a glob of the folder."""
        con = store.connect("shard_index") if store.files("shard_index") else None   # a row per sample: never in Python
        for split in ("train", "val"):
            paths = con.execute("SELECT DISTINCT shard, path FROM shard_index WHERE split = ? AND status = ? ORDER BY shard, path",
                                [split, STATUS_OK]).fetchall() if con else []
            lines = "".join(Path(p).relative_to(cls.files_dir).as_posix() + "\n" for _, p in paths)
            atomic_write(Path(cfg.run.dir) / cls.files_dir / f"{split}.txt", lines)

    def _jpg(self, r: dict) -> bytes:
        from sonify.media.image import center_crop
        from sonify.sources.images import load_image

        im = center_crop(load_image(r, self.paths, self.cfg.stages.latents.max_pixels), self.cfg.stages.latents.resolution)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=self.conf.jpg_quality)
        return buf.getvalue()

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        shard = batch.column("shard")[0].as_py()
        rel, target = self.owned_path(shard)
        index, total = [], 0
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            tf = TarStream(f)
            for r in batch.sort_by("position").to_pylist():   # one shard's rows: bounded by samples_per_shard
                k = r["id"]
                row = {"id": k, "split": r["split"], "shard": shard, "path": rel, "position": r["position"], "image_id": r["image_id"],
                       "variant": r["variant"], "mix_id": r["mix_id"]}
                try:  # gather every member first: a sample goes into the tar whole or not at all
                    members = [(f"{k}.latent.npy", (self.run_dir / r["latent_path"]).read_bytes()),
                               (f"{k}.ast.npy", (self.run_dir / r["ast_path"]).read_bytes()),
                               (f"{k}.json", r["meta"].encode())]
                    members.append((f"{k}.jpg", self._jpg(r) if self.conf.include_jpg else None))
                    members.append((f"{k}.flac", (self.run_dir / r["mix_path"]).read_bytes() if self.conf.include_flac else None))
                except Exception as e:
                    index.append({**row, "status": STATUS_ERROR, "error": error_text("missing_input", f"{type(e).__name__}: {e}")})
                    continue
                sizes = [tf.add(name, data) if data is not None else 0 for name, data in members]
                total += sum(sizes)
                index.append({**row, **dict(zip(("latent_bytes", "ast_bytes", "json_bytes", "jpg_bytes", "flac_bytes"), sizes)),
                              "status": STATUS_OK, "error": None})
            tf.close()
        summary = {"shard": shard, "count": sum(1 for i in index if i["status"] == STATUS_OK), "errors": sum(1 for i in index if i["status"] != STATUS_OK),
                   "payload_bytes": total, "file_bytes": target.stat().st_size}
        atomic_write(target.with_suffix(".json"), json.dumps(summary))
        return {"shard_index": rows_to_table("shard_index", index)}
