"""Stage `shards`: WebDataset tars of training samples, one sample per (image, variant).

Samples: `<key>.latent.npy` (the VAE's [mean, std], (2, C, h, w) float16), `<key>.ast.npy` (T x D
float16), `<key>.json` (image id, variant, concepts, components, loudness figures) and optionally
`<key>.jpg` (the centre crop) and `<key>.flac` (the mixture). Keys are '<image id>_<vlm key>':
no dots or slashes. The split is by a hash of the image id (every variant of an image on one
side); samples are shuffled across shards by a hash of (seed, key). Each shard is one partition:
written to a temp file and renamed, with a JSON summary beside it. Workers read their shard's rows
from a plan file sorted by shard, so memory is bounded by one sample.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sonify.engine.errors import error_text
from sonify.engine.files import atomic_path, atomic_write
from sonify.engine.keys import unit_hash
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.store import rows_to_table
from sonify.media.tar import TarStream
from sonify.sources import SourcePaths
from sonify.stages.base import Stage

PLAN = "shards/_plan.parquet"


def _assign(keys: pa.Table, conf, seed: int) -> pa.Table:
    rows = keys.to_pylist()
    for r in rows:
        r["split"] = "val" if unit_hash(f"split\x00{r['image_id']}") < conf.val_fraction else "train"
        r["_order"] = hashlib.sha1(f"{seed}\x00{r['id']}".encode()).hexdigest()
    out = []
    for split in ("train", "val"):
        members = sorted((r for r in rows if r["split"] == split), key=lambda r: r["_order"])
        n = int(conf.samples_per_shard)
        for i, r in enumerate(members):
            out.append({"id": r["id"], "split": split, "shard": f"{split}-{i // n:06d}.tar", "position": i % n})
    return pa.Table.from_pylist(out, schema=pa.schema([("id", pa.string()), ("split", pa.string()),
                                                      ("shard", pa.string()), ("position", pa.int32())]))


class ShardsStage(Stage):
    name = "shards"
    outputs = ("shard_index",)
    upstream = ("mix", "features", "latents", "filter", "concepts", "images")
    uses = ("run.seed", "stages.latents.resolution", "stages.latents.max_pixels")
    files_dir = "shards"
    partition_by = "shard"
    whole_partition = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.paths = SourcePaths.of(cfg, "images")

    @classmethod
    def work_list(cls, cfg, store) -> pa.Table:
        import duckdb

        conf = cfg.stages.shards
        con = duckdb.connect()
        con.register("mixes", store.read("mixes", columns=["id", "image_id", "vlm", "components", "lufs", "peak_dbfs", "mix_gain_db", "path", "flac_sha256", "duration", "status"]))
        con.register("feats", store.read("audio_features", columns=["id", "path", "sha256", "frames", "dim", "status"]))
        con.register("lat", store.read("image_latents", columns=["id", "path", "sha256", "channels", "height", "width", "scaling_factor", "status"]))
        con.register("kept", store.read("kept_images", columns=["id", "kept"]))
        con.register("images", store.read("images", columns=["id", "source", "relpath", "uri", "tar_offset", "nbytes", "sha256"]))
        con.register("concepts", store.read("concepts", columns=["id", "concepts"]))
        con.execute("""
            CREATE TEMP TABLE samples AS
            SELECT m.image_id || '_' || split_part(m.id, '-', 1) AS id, m.image_id, m.vlm, m.id AS mix_id,
                   f.path AS ast_path, l.path AS latent_path, m.path AS mix_path,
                   f.sha256 AS ast_sha256, l.sha256 AS latent_sha256, m.flac_sha256, i.sha256 AS image_sha256,
                   i.source, i.uri, i.tar_offset, i.nbytes,
                   to_json(struct_pack(
                       image_id := m.image_id, image_source := i.source, image_relpath := i.relpath, variant := m.vlm,
                       concepts := c.concepts, lufs := m.lufs, peak_dbfs := m.peak_dbfs, mix_gain_db := m.mix_gain_db,
                       duration := m.duration, ast_frames := f.frames, ast_dim := f.dim,
                       latent_shape := [l.channels, l.height, l.width], scaling_factor := l.scaling_factor,
                       components := list_transform(list_filter(m.components, lambda x: x.included), lambda x: struct_pack(
                           concept := x.text, chunk_id := x.chunk_id, dataset := x.dataset, relpath := x.relpath,
                           "offset" := x."offset", duration := x.duration, similarity := x.cosine,
                           target_lufs := x.target_lufs, measured_lufs := x.measured_lufs, gain_db := x.gain_db))
                   ))::VARCHAR AS meta
            FROM mixes m
            JOIN feats f ON f.id = m.id AND f.status = 'ok'
            JOIN lat l ON l.id = m.image_id AND l.status = 'ok'
            JOIN kept k ON k.id = m.image_id AND k.kept
            JOIN images i ON i.id = m.image_id
            LEFT JOIN concepts c ON c.id = m.id
            WHERE m.status = 'ok'""")
        assign = _assign(con.sql("SELECT id, image_id FROM samples").to_arrow_table(), conf, int(cfg.run.seed))
        con.register("assign", assign)
        plan = Path(cfg.run.dir) / PLAN
        with atomic_path(plan) as tmp:
            con.execute(f"""COPY (SELECT a.shard, a.position, a.split, s.* FROM assign a JOIN samples s USING (id)
                                  ORDER BY a.shard, a.position)
                            TO '{tmp}' (FORMAT parquet, ROW_GROUP_SIZE {max(1, int(conf.samples_per_shard))})""")
        # a sample's content is its members' bytes (by hash) and its metadata; paths are only where they lie
        return con.sql("""SELECT a.id, a.split, a.shard, a.position, s.ast_sha256, s.latent_sha256, s.flac_sha256,
                                 s.image_sha256, s.meta FROM assign a JOIN samples s USING (id)""").to_arrow_table()

    @classmethod
    def finalize(cls, cfg, store) -> None:
        """`shards/train.txt` and `shards/val.txt`: the current shards of each split, one path per line
        relative to that folder. The trainer reads these lists, never a glob of the folder."""
        index = store.read("shard_index", columns=["split", "shard", "path", "status"]).to_pylist()
        for split in ("train", "val"):
            paths = sorted({(r["shard"], r["path"]) for r in index if r["split"] == split and r["status"] == STATUS_OK})
            lines = "".join(Path(p).relative_to(cls.files_dir).as_posix() + "\n" for _, p in paths)
            atomic_write(Path(cfg.run.dir) / cls.files_dir / f"{split}.txt", lines)

    def _jpg(self, r: dict) -> bytes:
        from sonify.media.image import center_crop
        from sonify.sources.images import load_image

        im = center_crop(load_image(r, self.paths, int(self.cfg.stages.latents.max_pixels)), int(self.cfg.stages.latents.resolution))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(self.conf.jpg_quality))
        return buf.getvalue()

    def process_batch(self, batch: pa.Table) -> dict[str, pa.Table]:
        shard = batch.column("shard")[0].as_py()
        plan = pq.read_table(self.run_dir / PLAN, filters=[("shard", "=", shard)],
                             columns=["id", "split", "position", "image_id", "vlm", "mix_id", "ast_path", "latent_path",
                                      "mix_path", "source", "uri", "tar_offset", "nbytes", "meta"]).to_pylist()  # written in position order
        wanted = set(batch.column("id").to_pylist())
        rel, target = self.owned_path(shard)
        index, total = [], 0
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            tf = TarStream(f)
            for r in plan:
                if r["id"] not in wanted:
                    continue
                k = r["id"]
                row = {"id": k, "split": r["split"], "shard": shard, "path": rel, "position": r["position"], "image_id": r["image_id"],
                       "variant": r["vlm"], "mix_id": r["mix_id"]}
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
