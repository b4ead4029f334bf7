"""Images for a clip list: from a checkpoint (batched, resumable, seeded) or from another model's folder.

Output: `<out>/images/<id>.png` (PNG: lossless, so FID sees the model's pixels) and `<out>/index.parquet`
(id, image, status, error, seed, checkpoint). Each image is written atomically and its batch's index
rows follow it in `<out>/index/`; a re-run skips every id whose image exists, so an interrupted run
resumed generates no image twice. The starting latent of a row comes from a generator keyed by
(seed, id): the image of a row does not depend on the batch it was in.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.files import atomic_write
from sonify.engine.keys import keyed_rng
from sonify.evaluation.benchmarks import read_clips, read_listing
from sonify.evaluation.config import EvalConf
from sonify.media import IMAGE_EXTENSIONS

log = logging.getLogger("sonify.evaluate")
INDEX_FILE = "index.parquet"
INDEX_SCHEMA = pa.schema([("id", pa.string()), ("image", pa.string()), ("seed", pa.int64()), ("source", pa.string()),
                          ("status", pa.string()), ("error", pa.string())])


def row_seed(seed: int, clip_id: str) -> int:
    return int(keyed_rng(seed, clip_id, "evaluate.generate").integers(0, 2**63 - 1))


def _write_index(out: Path, rows: list[dict], name: str) -> None:
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    atomic_write(out / name, lambda tmp: pq.write_table(table, tmp))


def _read_parts(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    found = {}
    for f in sorted((out / "index").glob("[!.]*.parquet")):
        for r in pq.read_table(f).to_pylist():
            found[r["id"]] = r
    return found


def _check_settings(out: Path, settings: dict) -> None:
    """The first run records its settings; a resume with other ones would mix two models' images, so it is refused."""
    import json

    f = out / "settings.json"
    if f.exists():
        old = json.loads(f.read_text())
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out} holds images made with other settings ({', '.join(f'{k}={old.get(k)!r}' for k in changed)}); "
                             "use another --out or remove it")
    else:
        atomic_write(f, json.dumps(settings, indent=1))


def generate_images(clips_path: str | Path, out: str | Path, cfg: EvalConf, sampler=None) -> pa.Table:
    """Generate the images a clip list lacks; returns the full index. `sampler` is injectable for tests."""
    import torch
    from tqdm.auto import tqdm

    from sonify.training.sampling import Sampler, condition_audio

    clips, base = read_clips(clips_path)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    g = cfg.generate
    _check_settings(out, {"checkpoint": g.checkpoint, "steps": g.steps, "guidance": g.guidance, "lufs": g.lufs,
                          "use_ema": g.use_ema, "seed": cfg.seed})
    done = _read_parts(out)
    todo, rows = [], list(done.values())
    for r in clips.to_pylist():
        if r["id"] in done:
            continue
        image = f"images/{r['id']}.png"
        if r["status"] != "ok":
            rows.append({"id": r["id"], "image": None, "seed": None, "source": g.checkpoint, "status": "error", "error": r["error"]})
        elif (out / image).exists():   # written before a kill, its index row lost: keep it, do not redo it
            rows.append({"id": r["id"], "image": image, "seed": row_seed(cfg.seed, r["id"]), "source": g.checkpoint, "status": "ok", "error": None})
        else:
            todo.append(r)
    if todo and g.checkpoint is None:
        raise ValueError("generate.checkpoint is not set (a checkpoint-N folder or a training output_dir)")
    if todo and sampler is None:
        sampler = Sampler(g.checkpoint, todo[0]["seconds"], g.guidance, g.steps, g.use_ema, g.device)
    bar = tqdm(total=len(todo), desc="generate", unit="image", disable=not cfg.progress)
    for b in range(0, len(todo), g.batch_size):
        batch, clips_ok, batch_rows = todo[b:b + g.batch_size], [], []
        for r in batch:
            try:
                clips_ok.append((r, condition_audio([str(base / r["audio"])], [0.0], g.lufs, False, 16000, r["seconds"])))
            except (OSError, ValueError, RuntimeError) as e:
                reason = "silent" if "silent" in str(e) else "unreadable_audio"
                batch_rows.append({"id": r["id"], "image": None, "seed": None, "source": g.checkpoint, "status": "error",
                                   "error": error_text(reason, e)})
        if clips_ok:
            seeds = [row_seed(cfg.seed, r["id"]) for r, _ in clips_ok]
            latents = torch.cat([sampler.initial_latents(1, torch.Generator().manual_seed(s)) for s in seeds])
            for (r, _), s, im in zip(clips_ok, seeds, sampler.images([c for _, c in clips_ok], latents)):
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                atomic_write(out / "images" / f"{r['id']}.png", buf.getvalue())
                batch_rows.append({"id": r["id"], "image": f"images/{r['id']}.png", "seed": s, "source": g.checkpoint,
                                   "status": "ok", "error": None})
        _write_index(out, batch_rows, f"index/{batch[0]['id']}.parquet")
        rows.extend(batch_rows)
        bar.update(len(batch))
    bar.close()
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=INDEX_SCHEMA)
    _write_index(out, table.to_pylist(), INDEX_FILE)
    return table


def index_folder(clips_path: str | Path, images: str | Path, out: str | Path) -> pa.Table:
    """An index over another model's images, `<images>/<id>.<png|jpg|...>`; a clip without one is a `missing_image` row."""
    clips, _ = read_clips(clips_path)
    images, out = Path(images).resolve(), Path(out)
    by_id = {}
    for p in sorted(images.iterdir()) if images.is_dir() else []:
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            by_id.setdefault(p.stem, p)
    rows = []
    for r in clips.to_pylist():
        if r["status"] != "ok":
            rows.append({"id": r["id"], "image": None, "seed": None, "source": str(images), "status": "error", "error": r["error"]})
        elif r["id"] in by_id:
            rows.append({"id": r["id"], "image": str(by_id[r["id"]]), "seed": None, "source": str(images), "status": "ok", "error": None})
        else:
            rows.append({"id": r["id"], "image": None, "seed": None, "source": str(images), "status": "error",
                         "error": error_text("missing_image", f"no {r['id']}.* in {images}")})
    out.mkdir(parents=True, exist_ok=True)
    _write_index(out, rows, INDEX_FILE)
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def read_index(path: str | Path) -> tuple[pa.Table, Path]:
    """The image index (its file, or the folder holding `index.parquet`) and the folder its paths are relative to."""
    return read_listing(path, INDEX_FILE, "image index", "generate")
