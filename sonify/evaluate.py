"""Evaluate an audio-to-image model the paper's way (Table 1) and its peers': `python -m sonify.evaluate <command>`.

  prepare <benchmark> --root DIR --out DIR   a benchmark's clips: clips.parquet + frames/<id>.jpg + audio/<id>.wav
                                             (vggsound, greatesthits, landscapes, intothewild, vegas; landscapes_itw
                                             takes --root landscapes=DIR --root intothewild=DIR)
  generate --clips DIR --out DIR [generate.checkpoint=CKPT | --images DIR]
                                             images for the clips (batched, resumable, seeded) or another model's folder
  score --clips DIR --images DIR --out DIR   FID, IIS, AIS, KID, IS, CS, R@1/5/10, NDB, per class: scores.md + scores.json,
                                             shaped like the paper's Table 1 with its published rows
  table <scored folder>... [--out FILE]      one Table 1 from several scored models (and benchmarks)
  demo [--out DIR]                           the whole protocol offline: fake benchmarks, the demo checkpoint, tiny models
  pairs run=runs/<pipeline> [--out DIR]      pair-quality audit of a built dataset, every retrieval mode: plots + table

Settings are `pipelines/eval_<config>.yaml` (`config=eval_demo` for tiny offline models) with `key=value`
overrides, e.g. `score.ndb_k=50 models.inception=/weights/pt_inception-2015-12-05-6726825d.pth`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sonify.engine.cli import command, command_parser, parse_command, run_of, settings_list
from sonify.engine.errors import SonifyError
from sonify.engine.runs import RUN_KEYS


def _parser() -> argparse.ArgumentParser:
    p = command_parser("evaluate", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    settings = ("settings: key=value overrides of pipelines/eval_<config>.yaml, e.g. config=eval_demo "
                "score.kid_subsets=50 published=FILE (see `python -m sonify.evaluate --help`)")
    pr = sub.add_parser("prepare", help="a benchmark's clip list, frames and audio", epilog=settings)
    from sonify.evaluation.config import BENCHMARKS

    pr.add_argument("benchmark", help=", ".join(BENCHMARKS))
    pr.add_argument("--root", required=True, action="append",
                    help="the local copy of the benchmark; for landscapes_itw one per part: --root landscapes=DIR --root intothewild=DIR")
    pr.add_argument("--out", help="default: runs/eval/<benchmark>")
    ge = sub.add_parser("generate", help="images for a clip list", epilog=settings)
    ge.add_argument("--clips", required=True, help="a prepared folder (or its clips.parquet)")
    ge.add_argument("--out", required=True, help="where images/ and index.parquet go")
    ge.add_argument("--images", help="score another model: a folder of <id>.png|jpg instead of generating")
    sc = sub.add_parser("score", help="metrics of generated images against a clip list", epilog=settings)
    sc.add_argument("--clips", required=True, help="the prepared folder (or its clips.parquet)")
    sc.add_argument("--images", required=True, help="the generate output folder (or its index.parquet)")
    sc.add_argument("--out", help="default: the --images folder")
    sc.add_argument("--name", default="model", help="the method's name in the table")
    tb = sub.add_parser("table", help="one Table 1 from several scored folders", epilog=settings)
    tb.add_argument("scored", nargs="+", help="folders holding scores.json (or the files)")
    tb.add_argument("--out", help="also write the table here (Markdown)")
    de = sub.add_parser("demo", help="the whole protocol on small fake benchmarks with the demo checkpoint", epilog=settings)
    de.add_argument("--out", default="runs/eval_demo", help="where the fake benchmarks, images and scores go")
    de.add_argument("--checkpoint", default="runs/demo/dit", help="the demo model (made by `make demo`)")
    pa = sub.add_parser("pairs", help="pair-quality audit of a built dataset (run=runs/<pipeline>)",
                        epilog="say which run: run=runs/<pipeline> (a key=value argument, after the flags)")
    pa.add_argument("--out", help="default: <run>/audit")
    return p


def _root(values: list[str]):
    """One `--root DIR`, or `--root part=DIR` per part of a union benchmark."""
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    parts = dict(v.split("=", 1) for v in values if "=" in v)
    if len(parts) != len(values):
        raise ValueError("give one --root DIR, or one --root part=DIR per part of a union benchmark")
    return parts


@command
def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a, settings = parse_command(p, argv, keys=None)    # config overrides, and run= for pairs
    overrides = settings_list(settings, skip=RUN_KEYS)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.command == "pairs":
            from sonify.evaluation.pairs import audit

            if "run" not in settings:
                print("sonify.evaluate pairs: say which run: run=runs/<pipeline>", file=sys.stderr)
                return 2
            report = audit(run_of(p, settings), a.out)
            print(report["markdown"])
            print(f"plots and tables in {report['out']}")
            return 0
        if a.command == "table":
            from sonify.evaluation.config import data_file, load_eval_config
            from sonify.evaluation.table import compose, read_result

            cfg = load_eval_config(overrides)
            md = compose([read_result(p) for p in a.scored], data_file(cfg.published) if cfg.published else None)
            if a.out:
                from sonify.engine.files import atomic_write
                atomic_write(a.out, md)
            print(md + (f"\nwritten to {a.out}" if a.out else ""))
            return 0
        if a.command == "demo":
            from sonify.evaluation.demo import run_demo

            print(run_demo(a.out, a.checkpoint, overrides))
            return 0
        from sonify.evaluation.config import load_eval_config

        cfg = load_eval_config(overrides)
        if a.command == "prepare":
            from sonify.evaluation.benchmarks import notes_of, prepare

            out = a.out or f"runs/eval/{a.benchmark}"
            t = prepare(a.benchmark, _root(a.root), out, cfg)
            errors = [r["error"] for r in t.select(["status", "error"]).to_pylist() if r["status"] != "ok"]
            for note in notes_of(t):
                print(note)
            print(f"{t.num_rows} clips, {t.num_rows - len(errors)} ok, {len(errors)} errors"
                  + (f" (first: {errors[0]})" if errors else "") + f"; {out}/clips.parquet")
        elif a.command == "generate":
            from sonify.evaluation.generation import generate_images, index_folder

            t = index_folder(a.clips, a.images, a.out) if a.images else generate_images(a.clips, a.out, cfg)
            ok = sum(s == "ok" for s in t.column("status").to_pylist())
            print(f"{ok} of {t.num_rows} clips have an image; index in {a.out}/index.parquet")
        else:
            from sonify.evaluation.scoring import score

            out = a.out or a.images
            print(open(f"{out}/scores.md").read() if score(a.clips, a.images, out, cfg, a.name) else "")
    except (SonifyError, OSError, ValueError) as e:
        print(f"sonify.evaluate {a.command}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
