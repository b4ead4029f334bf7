"""`python -m sonify.evaluate demo`: the whole Table 1 protocol offline in one command.

It writes small benchmark copies shaped like VGGSound (some of Sound2Scene's listed classes and one
unlisted), Greatest Hits (train and test lists) and Landscapes + Into The Wild, then prepares them with
the protocol's settings (`pipelines/eval_demo.yaml`: 5 s of audio, all splits, the class list),
generates with the demo checkpoint (`runs/demo/dit`, made by `make demo`), scores with the tiny feature
models, and composes one Table 1 beside the published rows. The numbers mean nothing; the shapes do.
"""

from __future__ import annotations

from pathlib import Path

from sonify.engine.errors import ConfigError
from sonify.engine.files import atomic_write

# VGGSound: four of Sound2Scene's 50 classes (one with fewer clips than `per_class`) and one class it does not list
VGGSOUND = {"dog barking": 3, "baby crying": 3, "railroad car, train wagon": 3, "hail": 2, "skateboarding": 3}
GREATESTHITS = {"2015-02-16-16-49-06": [(1.0, "wood"), (2.5, "metal"), (4.0, "None"), (4.5, "wood")],
                "2015-02-16-17-02-11": [(1.5, "water"), (3.5, "metal")],
                "2015-02-17-10-00-00": [(2.0, "wood"), (4.0, "water")]}
GREATESTHITS_SPLITS = {"2015-02-16-16-49-06": "train", "2015-02-16-17-02-11": "train", "2015-02-17-10-00-00": "test"}
LANDSCAPES = [("test", "raining", "r1"), ("train", "raining", "r2"), ("test", "thunder", "t1"), ("train", "waterfall burbling", "w1")]
INTOTHEWILD = [("", "city traffic", "c1"), ("", "fire crackling", "f1")]


def write_fake_benchmarks(data: Path) -> dict:
    """The fake corpora under `data/`; returns each benchmark's --root (a folder, or {part: folder})."""
    from sonify.evaluation.demo_data import class_folder_layout, greatesthits_layout, vggsound_layout

    marker = data / ".complete"
    if not marker.exists():
        vggsound_layout(data / "vggsound", VGGSOUND)
        greatesthits_layout(data / "greatesthits", GREATESTHITS, GREATESTHITS_SPLITS)
        class_folder_layout(data / "landscapes", LANDSCAPES)
        class_folder_layout(data / "intothewild", INTOTHEWILD)
        atomic_write(marker, "")
    return {"vggsound": data / "vggsound", "greatesthits": data / "greatesthits",
            "landscapes_itw": {"landscapes": data / "landscapes", "intothewild": data / "intothewild"}}


def _has_checkpoint(path: Path) -> bool:
    from sonify.training.sampling import resolve_checkpoint

    try:
        return path.is_dir() and bool(resolve_checkpoint(path))
    except FileNotFoundError:
        return False


def run_demo(out: str | Path, checkpoint: str | Path, overrides: list[str] = ()) -> str:
    """Prepare, generate and score every fake benchmark; prints progress; returns the path of the combined scores.md."""
    from sonify.evaluation.benchmarks import notes_of, prepare
    from sonify.evaluation.config import data_file, load_eval_config
    from sonify.evaluation.generation import generate_images
    from sonify.evaluation.scoring import jsonable, score
    from sonify.evaluation.table import compose, per_class_markdown

    out = Path(out)
    if not _has_checkpoint(Path(checkpoint)):   # checked before any benchmark is written
        raise ConfigError(f"no demo checkpoint at {checkpoint}; run `make demo` first (or give --checkpoint DIR)")
    cfg = load_eval_config(["config=eval_demo", f"generate.checkpoint={checkpoint}", *overrides])
    roots = write_fake_benchmarks(out / "data")
    results = []
    for bench, root in roots.items():
        clips = prepare(bench, root, out / bench, cfg)
        ok = sum(s == "ok" for s in clips.column("status").to_pylist())
        print(f"{bench}: {clips.num_rows} clips ({ok} ok); " + "; ".join(notes_of(clips)))
        generate_images(out / bench, out / bench / "demo", cfg)
        results.append(jsonable(score(out / bench, out / bench / "demo", out / bench / "demo", cfg, name="demo")))
    md = compose(results, data_file(cfg.published) if cfg.published else None)
    md += "".join("\n" + per_class_markdown(r) for r in results)
    atomic_write(out / "scores.md", md)
    return str(out / "scores.md")
