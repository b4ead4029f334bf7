"""How every stage's time grows with the data: the real stages through the Ray executor at several sizes.

    python -m sonify.bench scale [--sizes 1000,3000,10000] [--pool-chunks 50000] [--work DIR] [--quick]

Data is generated once and kept under --work (small JPEGs, two released concept variants per image,
a pool of 10-minute 16 kHz WAV files); models are the tiny random ones (`tiny:<kind>`). A local Ray
is started for the run and stopped after it. The pool stages (`audio`, `embed_audio`) run once; each
size is then a fresh run holding a copy of the pool's tables, running `stage=all` in order (the pool
stages find their partitions done). Per stage and size: rows, seconds, rows/s, the driver's peak RSS
and the Ray workers' (largest one, and all together). Each stage's growth exponent is the slope of
log seconds against log rows over the sizes (target <= 1.1); the paper's workload (1M images, 0.5M
chunks, pipelines/bench/paper_scale.yaml) on this machine is projected from it.

On the 2-core development machine the defaults take about 33 min the first time, half of it
`embed_audio` over the 50K-chunk pool (most of that is CLAP's feature extractor, numpy on the CPU);
later runs in the same --work reuse the pool and take about 16 min. `--quick` takes about 3 min.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from sonify.engine.cli import command_parser

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pipelines" / "bench" / "scale.yaml"
PAPER = REPO / "pipelines" / "bench" / "paper_scale.yaml"
POOL_STAGES = ("audio", "embed_audio")
IMPORTS = 2                 # released concept variants per image: the paper's two VLMs
TARGET = 1.1
QUICK = {"sizes": "20,40,80", "pool_chunks": 500}


def config(work: Path, name: str, images_dir: Path, imports: list[Path], pool_dir: Path):
    from sonify.engine.config import load_config
    from sonify.stages import stage_names

    from sonify.bench.scale_data import AUDIO_SOURCE, IMAGE_SOURCE

    imps = ",".join(f"{{name: bench-v{i}, path: '{p}'}}" for i, p in enumerate(imports))
    return load_config([f"pipeline={CONFIG}", f"run.root={work / 'runs'}", f"run.name={name}", f"models.tiny_dir={work / 'tiny'}",
                        f"sources.images=[{{name: {IMAGE_SOURCE}, kind: folder, path: '{images_dir}'}}]",
                        f"sources.audio=[{{name: {AUDIO_SOURCE}, kind: folder, path: '{pool_dir}'}}]",
                        f"stages.concepts.imports=[{imps}]"], stage_names())


def start_ray(cfg) -> str:
    """A new local Ray of our own (never one already running here), in its own temp dir; returns that dir."""
    import logging

    import ray

    from sonify.engine.cluster import quiet_ray_logs

    temp = tempfile.mkdtemp(prefix="rsb", dir="/tmp")   # short: Ray's socket paths have a length limit
    quiet_ray_logs()
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             _temp_dir=temp)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    return temp


def run_stages(cfg, names, peaks, label: str) -> list[dict]:
    """Each stage timed on its own, with its memory peaks; stops at the first failed stage."""
    from sonify.engine.executor import run_stage
    from sonify.stages import get_stage

    out = []
    for name in names:
        peaks.begin()
        t0 = time.perf_counter()
        run = run_stage(get_stage(name), cfg, progress_bar=False)
        seconds = time.perf_counter() - t0
        if run.failed:
            raise SystemExit(f"bench scale: stage {name} failed at {label}: {run.failed[0]}")
        out.append({"stage": name, "rows": run.rows_in, "computed": run.rows_computed, "partitions": run.partitions,
                    "seconds": seconds, **peaks.end()})
        print(f"  {label:>8} {name:<12} {run.rows_in:>8} rows {seconds:>8.1f} s", flush=True)
    return out


def pool_stages(cfg, peaks, fresh: bool) -> list[dict]:
    """The pool stages, measured once per work folder: a later invocation finds their partitions done (the
    engine's resume) and reports the figures stored when they were computed."""
    import json

    from sonify.engine.files import atomic_write

    saved = Path(cfg.run.dir) / "bench_pool.json"
    if fresh or not saved.exists():
        shutil.rmtree(cfg.run.dir, ignore_errors=True)
    rows = run_stages(cfg, POOL_STAGES, peaks, "pool")
    if all(r["computed"] == r["rows"] for r in rows):
        atomic_write(saved, json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M"), "stages": rows}))
        return rows
    if not any(r["computed"] for r in rows):
        stored = json.loads(saved.read_text())
        stored["stages"][0]["note"] = f", measured {stored['measured']} and reused (--fresh-pool measures again)"
        return stored["stages"]
    return pool_stages(cfg, peaks, fresh=True)   # partly recomputed (e.g. a stage's version changed): measure whole


def growth(rows: list[int], seconds: list[float]) -> tuple[float, float]:
    """(slope of log seconds on log rows over every size, the slope between the two largest sizes)."""
    x, y = np.log(np.asarray(rows, float)), np.log(np.asarray(seconds, float))
    fit = float(np.polyfit(x, y, 1)[0])
    last = float((y[-1] - y[-2]) / (x[-1] - x[-2]))
    return fit, last


def fixed_and_per_row(rows: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares seconds = fixed + per_row * rows; fixed kept within [0, the smallest time], per_row >= 0."""
    per_row, fixed = np.polyfit(np.asarray(rows, float), np.asarray(seconds, float), 1)
    fixed = min(max(float(fixed), 0.0), min(seconds))
    per_row = max(0.0, float(np.mean([(t - fixed) / r for r, t in zip(rows, seconds)]))) if per_row < 0 else float(per_row)
    return fixed, per_row


def project(fixed: float, per_row: float, rows: float, seconds: float, exponent: float, target: float, pool_factor: float) -> tuple[float, bool]:
    """Seconds at `target` rows: fixed + per_row * rows (per-row work scaled by `pool_factor`), or, when the
    exponent says the stage grows faster than linearly, the largest size extended by that power if larger.
    Returns (seconds, whether the power law gave them)."""
    linear = fixed + per_row * target * pool_factor
    if exponent > 1.0:
        power = seconds * (target / rows) ** exponent * pool_factor
        if power > linear:
            return power, True
    return linear, False


def summarise(pool: list[dict], sizes: dict[int, list[dict]], chunks: int, paper: dict) -> dict:
    """Exponents and projections per stage from the measured rows (pure: the test checks it)."""
    ns = sorted(sizes)
    out = []
    for i, name in enumerate(s["stage"] for s in sizes[ns[0]]):
        if name in POOL_STAGES:   # measured once per pool; projected linearly in the pool's chunks
            p = next(r for r in pool if r["stage"] == name)
            target = paper["audio_chunks"] * p["rows"] / chunks
            out.append({"stage": name, "pool": True, "exponent": None, "last": None, "fixed": None,
                        "per_row": p["seconds"] / p["rows"], "rows": target, "projected_s": p["seconds"] * target / p["rows"],
                        "power": False})
            continue
        rows, secs = [sizes[n][i]["rows"] for n in ns], [sizes[n][i]["seconds"] for n in ns]
        fit, last = growth(rows, secs) if len(set(rows)) == len(rows) and min(rows) > 0 else (float("nan"),) * 2
        fixed, per_row = fixed_and_per_row(rows, secs)
        target = rows[-1] * paper["images"] / ns[-1]
        pool_factor = paper["audio_chunks"] / chunks if name == "retrieve" else 1.0   # each query scores the whole pool
        projected, power = project(fixed, per_row, rows[-1], secs[-1], fit, target, pool_factor)
        out.append({"stage": name, "pool": False, "exponent": fit, "last": last, "fixed": fixed, "per_row": per_row,
                    "rows": target, "projected_s": projected, "power": power})
    return {"stages": out, "missed": [s["stage"] for s in out if not s["pool"] and not (s["exponent"] <= TARGET)]}


def _mib(v: float) -> str:
    return f"{v:,.0f}"


def report(pool: list[dict], sizes: dict[int, list[dict]], summary: dict, chunks: int, files: int, paper: dict) -> str:
    lines = [f"pool stages, once for the pool of {chunks:,} chunks ({files} files){pool[0].get('note', '')}:",
             f"{'stage':<12} {'rows':>8} {'seconds':>8} {'rows/s':>8} {'chunks/s':>9} {'driver MiB':>10} {'worker MiB':>10} {'workers MiB':>11}"]
    for r in pool:
        lines.append(f"{r['stage']:<12} {r['rows']:>8,} {r['seconds']:>8.1f} {r['rows'] / r['seconds']:>8.1f} "
                     f"{chunks / r['seconds']:>9.1f} {_mib(r['driver_mib']):>10} {_mib(r['worker_mib']):>10} {_mib(r['workers_mib']):>11}")
    lines += ["", "stage=all per size (the pool stages re-plan only: their partitions are done); driver MiB is its peak "
                  "(rise: over its RSS when the stage began), worker MiB the largest Ray worker, workers MiB all at once:",
              f"{'stage':<12} {'images':>7} {'rows':>8} {'computed':>8} {'seconds':>8} {'rows/s':>8} {'driver MiB':>10} "
              f"{'(rise)':>7} {'worker MiB':>10} {'workers MiB':>11}"]
    for n in sorted(sizes):
        for r in sizes[n]:
            rate = r["computed"] / r["seconds"] if r["computed"] else 0.0
            lines.append(f"{r['stage']:<12} {n:>7,} {r['rows']:>8,} {r['computed']:>8,} {r['seconds']:>8.1f} {rate:>8.1f} "
                         f"{_mib(r['driver_mib']):>10} {_mib(r.get('driver_rise_mib', 0)):>7} {_mib(r['worker_mib']):>10} "
                         f"{_mib(r['workers_mib']):>11}")
        lines.append(f"{'(total)':<12} {n:>7,} {'':>8} {'':>8} {sum(r['seconds'] for r in sizes[n]):>8.1f}")
    ns = sorted(sizes)
    lines += ["", f"growth over {', '.join(f'{n:,}' for n in ns)} images (exponent: slope of log seconds on log rows, "
                  f"target <= {TARGET}; last pair: the two largest sizes only) and PROJECTED time for the paper's "
                  f"{paper['images']:,} images and {paper['audio_chunks']:,} chunks on this machine:",
              f"{'stage':<12} {'exponent':>8} {'last pair':>9} {'fixed s':>8} {'ms/row':>8} {'rows (proj.)':>13} {'proj. s':>10} {'proj. h':>8}"]
    for s in summary["stages"]:
        exp, last = ("pool", "") if s["pool"] else (f"{s['exponent']:.2f}", f"{s['last']:.2f}")
        fixed = "" if s["fixed"] is None else f"{s['fixed']:.1f}"
        mark = "*" if s["power"] else ""
        lines.append(f"{s['stage']:<12} {exp:>8} {last:>9} {fixed:>8} {s['per_row'] * 1000:>8.2f} {s['rows']:>13,.0f} "
                     f"{s['projected_s']:>10,.0f} {s['projected_s'] / 3600:>7.1f}{mark or ' '}")
    total = sum(s["projected_s"] for s in summary["stages"])
    lines.append(f"{'(total)':<12} {'':>8} {'':>9} {'':>8} {'':>8} {'':>13} {total:>10,.0f} {total / 3600:>7.1f}")
    lines.append("projected, not measured: tiny models on this machine's 2 CPU cores; proj. s = fixed + ms/row x rows "
                 "(least squares over the sizes; retrieve's per-row part times the pool's growth, each query scores the whole "
                 "pool); * = the fitted power law, larger for a stage growing faster than linearly. Pool stages: linear "
                 "from the one pool size.")
    replanned = sorted({r["stage"] for n in sizes for r in sizes[n] if r["stage"] in POOL_STAGES and r["computed"]})
    if replanned:
        lines.append(f"NOTE: the per-size runs recomputed pool stage(s) {', '.join(replanned)} (their copied partitions were not kept)")
    lines.append("targets: " + ("met (every exponent <= 1.1)" if not summary["missed"]
                                else "MISSED: exponent > 1.1 for " + ", ".join(summary["missed"])))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = command_parser("bench scale", __doc__, settings=False)
    ap.add_argument("--sizes", default="1000,3000,10000", help="image counts, comma-separated (at least two)")
    ap.add_argument("--pool-chunks", type=int, default=50000)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_scale"), help="generated data and runs are kept here")
    ap.add_argument("--quick", action="store_true", help=f"smoke preset: --sizes {QUICK['sizes']} --pool-chunks {QUICK['pool_chunks']}")
    ap.add_argument("--fresh-pool", action="store_true", help="measure the pool stages again (else reused from --work)")
    ap.add_argument("--keep-runs", action="store_true", help="keep each size's run folder (mixtures, features, shards)")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.pool_chunks = QUICK["sizes"], QUICK["pool_chunks"]
    sizes = sorted({int(s) for s in a.sizes.split(",") if s.strip()})
    if len(sizes) < 2 or sizes[0] < 1:
        ap.error("--sizes needs at least two different positive image counts")

    from omegaconf import OmegaConf

    from sonify.bench import scale_data
    from sonify.bench.common import PeakRSS
    from sonify.stages import STAGES

    paper = OmegaConf.to_container(OmegaConf.load(PAPER))["workload"]
    work = Path(a.work).resolve()
    t0 = time.perf_counter()
    pool_dir, chunks = scale_data.audio_pool(work, a.pool_chunks)
    files = len(list(pool_dir.glob("*.wav")))
    data = {n: (scale_data.images(work, n), [scale_data.concepts_import(work, n, v) for v in range(IMPORTS)]) for n in sizes}
    print(f"data under {work} ({time.perf_counter() - t0:.0f}s): {', '.join(f'{n:,}' for n in sizes)} images, "
          f"a pool of {files} files = {chunks:,} chunks", flush=True)

    runs = work / "runs"
    pool_cfg = config(work, f"pool_c{a.pool_chunks}", *data[sizes[0]], pool_dir)
    temp = start_ray(pool_cfg)
    peaks = PeakRSS()
    import ray
    try:
        pool = pool_stages(pool_cfg, peaks, a.fresh_pool)
        measured = {}
        for n in sizes:
            cfg = config(work, f"n{n}", *data[n], pool_dir)
            shutil.rmtree(cfg.run.dir, ignore_errors=True)
            shutil.copytree(pool_cfg.run.dir, cfg.run.dir)
            measured[n] = run_stages(cfg, list(STAGES), peaks, f"{n:,}")
            if not a.keep_runs:
                shutil.rmtree(cfg.run.dir, ignore_errors=True)
    finally:
        peaks.close()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    summary = summarise(pool, measured, chunks, paper)
    print()
    print(report(pool, measured, summary, chunks, files, paper))
    print(f"\nwall time {time.perf_counter() - t0:.0f}s; runs under {runs}")
    return {"pool": pool, "sizes": measured, "summary": summary}
