"""`memorisation`: do generated images copy training images? (A.6, Fig. 14, and this project's addition.)

The paper (A.6) shows generated images beside their benchmark ground truth as evidence that models
memorise their training data. Given a folder of generated images (ours or another model's, `<id>.png`
as `evaluate generate --images` takes them) and optionally the benchmark's clip list, this draws that
view with the CLIP image cosine of each pair. This project adds a search: the nearest image of a
reference set (`--reference DIR`, or the run's kept training images) for every generated image by CLIP
image cosine, the share of generated images whose nearest neighbour is above `--threshold` (0.95), and
a grid of the closest pairs. References are embedded in batches and only the running best per
generated image is kept, so memory does not grow with the reference set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonify.media import IMAGE_EXTENSIONS

NAME = "memorisation"
GENERATES = False


def add_arguments(p) -> None:
    p.add_argument("--images", required=True, help="generated images: a folder of <id>.png|jpg (or an evaluate generate folder)")
    p.add_argument("--clips", help="the benchmark clip list (evaluate prepare's folder): the Fig. 14 view beside ground truth")
    p.add_argument("--reference", help="a folder of reference images (default: the run's kept training images)")
    p.add_argument("--threshold", type=float, default=0.95, help="CLIP image cosine counted as a copy (default 0.95)")
    p.add_argument("--show", type=int, default=8, help="pairs in each grid")
    p.add_argument("--clip", help="the CLIP model (default evaluate's clip_iis, openai/clip-vit-base-patch32; "
                                  "tiny:clip for a run built with tiny models, as the demo)")
    p.add_argument("--tiny-dir", help="where tiny: and shape: models are built (default the run's models.tiny_dir)")
    p.add_argument("--batch", type=int, default=64, help="reference images embedded per batch")
    p.add_argument("--device", default="cpu")


def run_models(a, run_dir: Path | None, defaults) -> tuple[str, str]:
    """(CLIP, tiny_dir): the options, else for a run built with tiny models (the demo) the tiny CLIP in its tiny_dir,
    else evaluate's IIS CLIP; a demo user's default must not be a model that cannot load offline."""
    from omegaconf import OmegaConf

    from sonify.models.loading import TINY_PREFIX

    saved = Path(run_dir) / "config.yaml" if run_dir is not None else None
    cfg = OmegaConf.load(saved) if saved is not None and saved.is_file() else None
    tiny_run = cfg is not None and str(cfg.models.clap).startswith(TINY_PREFIX)
    name = a.clip or (f"{TINY_PREFIX}clip" if tiny_run else defaults.clip_iis)
    return name, a.tiny_dir or (str(cfg.models.tiny_dir) if cfg is not None else defaults.tiny_dir)


def folder_images(folder: Path) -> list[tuple[str, str]]:
    """(id, path) of the images in a folder (its `images/` when it is an evaluate generate output)."""
    if (folder / "images").is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
        folder = folder / "images"
    return [(p.stem, str(p)) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]


def run_references(run_dir: Path):
    """The run's kept training images as (id, loader) pairs, read through their sources (folders, tars)."""
    from sonify.publish.data import Run
    from sonify.sources.images import load_image

    run = Run(run_dir)
    kept = {r["id"] for r in run.rows("kept_images", ["id", "kept"]) if r["kept"]}
    paths = run.paths("images")
    for r in run.rows("images"):
        if r["id"] in kept and r.get("status", "ok") == "ok":
            yield r["id"], (lambda r=r: load_image(r, paths, max_pixels=89_478_485, max_side=1024))


def _load(item):
    from sonify.evaluation.features import read_rgb

    return read_rgb(item) if isinstance(item, str) else item()


def embed_all(clip, items: list[tuple[str, object]], errors: list[dict], role: str):
    """CLIP image embeddings of the items that decode; an item that does not is an error row."""
    ids, images = [], []
    for i, item in items:
        try:
            images.append(_load(item))
            ids.append(i)
        except Exception as e:
            errors.append({"role": role, "id": i, "error": f"decode_error: {type(e).__name__}: {e}"})
    return ids, (clip(images) if images else np.zeros((0, 1)))


def nearest(clip, gen: np.ndarray, refs, batch: int, errors: list[dict]) -> tuple[np.ndarray, list]:
    """Per generated row, the best cosine and the reference (id, item) it came from, over batches of references."""
    best, which, chunk = np.full(gen.shape[0], -np.inf), [None] * gen.shape[0], []

    def flush():
        ids, emb = embed_all(clip, chunk, errors, "reference")
        if ids:
            items = dict(chunk)
            cos = gen @ emb.T
            j = cos.argmax(axis=1)
            for g in np.flatnonzero(cos[np.arange(len(j)), j] > best):
                best[g], which[g] = cos[g, j[g]], (ids[j[g]], items[ids[j[g]]])
        chunk.clear()

    for item in refs:
        chunk.append(item)
        if len(chunk) >= batch:
            flush()
    flush()
    return best, which


def _thumb(out: Path, name: str, item) -> str:
    im = _load(item)
    im.thumbnail((256, 256))
    path = out / "pairs" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return str(path)


def run(a, run_dir: Path | None) -> Path:
    from sonify.evaluation.config import EvalModelsConf
    from sonify.evaluation.features import ClipImageFeatures
    from sonify.studies.common import StudyError, figure_grid, finished, listing, study_dir, write_summary, write_table

    folder = Path(a.images)
    if not folder.is_dir():
        raise StudyError(f"--images {folder}: no such folder")
    if a.reference and not Path(a.reference).is_dir():
        raise StudyError(f"--reference {a.reference}: no such folder")
    if not folder_images(folder):
        raise StudyError(f"--images {folder}: no .png/.jpg images in it")
    if not a.reference and run_dir is None and not a.clips:
        raise StudyError("memorisation: give --reference DIR, run=<run dir> (its training images) or --clips DIR")
    name, tiny_dir = run_models(a, run_dir, EvalModelsConf())
    params = {"images": str(folder.resolve()), "clips": a.clips, "reference": a.reference, "threshold": a.threshold,
              "clip": name, "run": str(run_dir) if run_dir else None, "show": a.show,
              "inputs": listing(folder, a.clips, a.reference,
                                *([Path(run_dir) / "manifests" / t for t in ("images", "kept_images")] if run_dir and not a.reference else []))}
    out = study_dir(run_dir, NAME, a.out, params)
    if finished(out):
        return out
    clip = ClipImageFeatures(name, tiny_dir, a.device)
    errors: list[dict] = []
    gen_ids, gen = embed_all(clip, folder_images(folder), errors, "generated")
    if not gen_ids:
        raise StudyError(f"--images {folder}: no image that decodes")
    gen_paths = dict(folder_images(folder))
    lines, rows = [], []
    if a.clips:   # Fig. 14: each generated image beside its ground-truth frame
        from sonify.evaluation.benchmarks import read_clips

        try:
            clips, base = read_clips(a.clips)
        except Exception as e:
            raise StudyError(str(e)) from None
        truth = {r["id"]: str(base / r["image"]) for r in clips.to_pylist() if r["status"] == "ok" and r["image"]}
        paired = [i for i in gen_ids if i in truth]
        t_ids, t_emb = embed_all(clip, [(i, truth[i]) for i in paired], errors, "ground_truth")
        cos = {i: float(gen[gen_ids.index(i)] @ e) for i, e in zip(t_ids, t_emb)}
        rows += [{"kind": "ground_truth", "id": i, "match": i, "cosine": c} for i, c in cos.items()]
        show = sorted(cos, key=lambda i: -cos[i])[:a.show]
        if show:
            figure_grid(out / "ground_truth.png", [[gen_paths[i], truth[i]] for i in show],
                        [f"{i} ({cos[i]:.3f})" for i in show], ["generated", "ground truth"], "Generated vs ground truth (cf. Fig. 14)")
        lines += [f"- ground truth: {len(cos)} pairs, mean CLIP image cosine {np.mean(list(cos.values())):.3f}" if cos else
                  "- ground truth: no generated image has a clip of its id", "", "![ground truth](ground_truth.png)" if show else "", ""]
    refs = (((p.stem, str(p)) for p in sorted(Path(a.reference).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS)
            if a.reference else run_references(run_dir) if run_dir else None)
    if refs is not None:
        best, which = nearest(clip, gen, refs, a.batch, errors)
        found = [k for k in range(len(gen_ids)) if which[k] is not None]
        rows += [{"kind": "nearest", "id": gen_ids[k], "match": which[k][0], "cosine": float(best[k])} for k in found]
        copies = [k for k in found if best[k] >= a.threshold]
        share = len(copies) / len(gen_ids)
        show = sorted(found, key=lambda k: -best[k])[:a.show]
        if show:
            figure_grid(out / "figure.png", [[gen_paths[gen_ids[k]], _thumb(out, f"{gen_ids[k]}__{which[k][0]}", which[k][1])] for k in show],
                        [f"{gen_ids[k]} ({best[k]:.3f})" for k in show], ["generated", "nearest reference"],
                        "Closest generated/reference pairs by CLIP image cosine")
        lines += [f"- reference: {a.reference or 'the kept training images of ' + str(run_dir)}",
                  f"- {len(copies)} of {len(gen_ids)} generated images ({100 * share:.1f}%) have a reference at CLIP image cosine "
                  f">= {a.threshold}" + (f"; the closest at {max(best[k] for k in found):.4f}" if found else ""),
                  "", "![closest pairs](figure.png)" if show else "", ""]
    write_table(rows, out / "data.parquet")
    if errors:
        write_table(errors, out / "errors.parquet")
    write_summary(out / "summary.md", "Memorisation (A.6, Fig. 14)", [
        f"- generated: `{folder}` ({len(gen_ids)} images); CLIP `{name}`" + (f"; {len(errors)} unreadable (errors.parquet)" if errors else ""),
        *lines, "Data: `data.parquet` (kind ground_truth: each generated image and its benchmark frame; kind nearest: its closest reference)."])
    return out
