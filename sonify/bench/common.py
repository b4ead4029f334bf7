"""Timing helpers shared by the benchmarks: best-of-N wall time and peak RSS."""

from __future__ import annotations

import resource
import statistics
import time
from typing import Callable


def best_of(fn: Callable[[], object], repeats: int = 3, setup: Callable[[], object] | None = None) -> tuple[float, float]:
    """(min, median) wall seconds over `repeats` runs; min is the least noisy estimate on shared machines.

    `setup` runs before each repeat, outside the timer (e.g. to remove the previous repeat's outputs).
    """
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def demo_config(root, *overrides: str):
    """The demo pipeline's config with its runs under `root`, on the local executor, plus `overrides`."""
    from sonify.engine.config import load_config
    from sonify.stages import stage_names

    return load_config(["pipeline=demo", f"run.root={root}", "run.executor=local", *overrides], stage_names())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def best_of_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3,
                        setup: Callable[[], object] | None = None) -> dict[str, float]:
    """Min wall seconds per function, the functions taking turns in each repeat, so drift on a
    shared machine hits the pipeline and its baseline alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}
