"""Timing helpers shared by the benchmarks: best-of-N wall time and peak RSS."""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Callable

from sonify.engine.cli import command_parser


def bench_args(name: str, doc: str, argv, **flags) -> argparse.Namespace:
    """`python -m sonify.bench <name>`'s arguments: each keyword is a flag (`batch_size` -> `--batch-size`)
    whose default's type is the flag's type (False: a switch); `(default, help)` adds a help line."""
    ap = command_parser(f"bench {name}", doc, settings=False)   # the commands' parser (one-line bad arguments)
    for key, value in flags.items():
        default, help_ = value if isinstance(value, tuple) else (value, None)
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            ap.add_argument(flag, action="store_true", help=help_)
        else:
            ap.add_argument(flag, type=type(default), default=default, help=help_)
    return ap.parse_args(argv)


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


def _hwm_kib(pid: int | str) -> int:
    """The kernel's resident high-water mark (VmHWM) of a process, in KiB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def _reset_hwm(pid: int | str) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so a span's peak is its own."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class PeakRSS:
    """Peak resident memory of this process (the driver) and of the Ray workers it started, per span.

    Workers are this process's descendants whose command line Ray set to `ray::...` (task and actor
    workers; not the raylet or GCS). The kernel's per-process high-water mark is exact; a background
    thread reads it every `interval` s so workers that exit within the span are counted too, and sums
    the workers' current RSS for the peak of all of them together.
    """

    def __init__(self, interval: float = 0.2):
        import threading

        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.worker_peaks: dict[int, int] = {}
        self.total_peak = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _workers(self) -> list:
        import psutil

        out = []
        for p in self.me.children(recursive=True):
            try:
                if (p.cmdline() or [""])[0].startswith("ray::"):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def _sample(self) -> None:
        import psutil

        total = 0
        for p in self._workers():
            hwm = _hwm_kib(p.pid)
            try:
                total += p.memory_info().rss >> 10
            except psutil.Error:
                continue
            with self.lock:
                self.worker_peaks[p.pid] = max(self.worker_peaks.get(p.pid, 0), hwm)
        with self.lock:
            self.total_peak = max(self.total_peak, total)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def begin(self) -> None:
        """Start a span: every high-water mark set back to the current RSS."""
        _reset_hwm("self")
        self.driver_start = _hwm_kib("self")   # just reset: the current RSS
        for p in self._workers():
            _reset_hwm(p.pid)
        with self.lock:
            self.worker_peaks, self.total_peak = {}, 0

    def end(self) -> dict:
        """The span's peaks in MiB: driver (and its rise over its RSS at the start), the largest worker, all
        workers together; and workers seen."""
        self._sample()
        with self.lock:
            peaks, total = dict(self.worker_peaks), self.total_peak
        driver = _hwm_kib("self")
        return {"driver_mib": driver / 1024, "driver_rise_mib": (driver - self.driver_start) / 1024,
                "worker_mib": max(peaks.values(), default=0) / 1024,
                "workers_mib": total / 1024, "workers": len(peaks)}

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
