"""Listing work spread over processes: tar headers are parsed in Python (`tarfile`), which holds the
GIL, so threads barely overlap; processes do. Workers are started with 'forkserver' (or 'spawn'),
never by forking a driver that may hold Ray's, Arrow's or torch's threads.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# below this many items a process pool costs more to start (about 0.3 s per process) than it saves
MIN_ITEMS_FOR_PROCESSES = 4
TASKS_PER_WORKER = 4      # items are sent in groups: few round trips, yet a slow group does not hold the others up


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _group(fn: Callable[[T], R], items: Sequence[T]) -> tuple[int, float, list[R]]:
    cpu = time.process_time()
    out = [fn(x) for x in items]
    return os.getpid(), time.process_time() - cpu, out


def process_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> tuple[list[R], dict[int, float]]:
    """`[fn(x) for x in items]` in order, over up to `workers` processes (0: one per core); `fn` must be
    picklable (a module-level function or a partial of one). Serial here for one worker or few items.

    Returns the results and, per process that computed them, the CPU seconds it spent on them.
    """
    items = list(items)
    workers = min(int(workers) or os.cpu_count() or 1, len(items))
    if workers <= 1 or len(items) < MIN_ITEMS_FOR_PROCESSES:
        pid, cpu, out = _group(fn, items)
        return out, {pid: cpu}
    size = max(1, -(-len(items) // (workers * TASKS_PER_WORKER)))
    groups = [items[i:i + size] for i in range(0, len(items), size)]
    results, cpu_by_pid = [], {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        for pid, cpu, out in pool.map(_group, [fn] * len(groups), groups):
            cpu_by_pid[pid] = cpu_by_pid.get(pid, 0.0) + cpu
            results.extend(out)
    return results, cpu_by_pid
