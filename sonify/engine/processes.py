"""The engine's process pool: work spread over local processes (tar listing, `sonify.mix`'s rebuild).

Workers are started with 'forkserver' (or 'spawn'), never by forking a driver that may hold Ray's,
Arrow's or torch's threads. Python-heavy work (tar headers parsed by `tarfile`, which holds the GIL)
overlaps in processes where threads barely do. A worker that dies (a crash in a C library, the OOM
killer) costs its task, never the run: `imap_bounded` gives that task an error and goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# below this many items a process pool costs more to start (about 0.3 s per process) than it saves
MIN_ITEMS_FOR_PROCESSES = 4
TASKS_PER_WORKER = 4      # items are sent in groups: few round trips, yet a slow group does not hold the others up


def start_context():
    """forkserver where the platform has it, else spawn: never fork."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def process_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=max(1, int(workers)), mp_context=start_context())


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
    with process_pool(workers) as pool:
        for pid, cpu, out in pool.map(_group, [fn] * len(groups), groups):
            cpu_by_pid[pid] = cpu_by_pid.get(pid, 0.0) + cpu
            results.extend(out)
    return results, cpu_by_pid


class WorkerDied(Exception):
    """The process running a task ended without an answer (killed, or crashed in native code)."""


def _alone(fn: Callable[[T], R], task: T) -> tuple[R | None, BaseException | None]:
    """Run one task in a pool of its own: the way to learn which of the tasks a dead worker held was its cause."""
    with process_pool(1) as pool:
        try:
            return pool.submit(fn, task).result(), None
        except BrokenProcessPool:
            return None, WorkerDied("its worker process died (killed, or crashed in native code)")
        except Exception as e:
            return None, e


class BoundedMap:
    """`fn` over `tasks` in processes, as the tasks are read, with at most `limit` in flight (the tasks and
    results held at a time do not grow with the input); `peak` is the most that were in flight at once.

    `__call__` yields `(task, result, error)` in the order tasks finish; exactly one of `result` and
    `error` is set. A task that raises gets its exception as `error`. When a worker dies, every task it
    may have held is run again alone, so only the task that kills its worker gets `WorkerDied`;
    the pool is replaced and the rest go on."""

    def __init__(self, fn: Callable[[T], R], workers: int, limit: int | None = None):
        self.fn, self.workers = fn, max(1, int(workers))
        self.limit = limit or 2 * self.workers
        self.peak = 0

    def __call__(self, tasks: Iterable[T]) -> Iterator[tuple[T, R | None, BaseException | None]]:
        tasks = iter(tasks)
        pool = process_pool(self.workers)
        running: dict[Future, T] = {}
        try:
            while True:
                orphans: deque = deque()
                for task in tasks:
                    try:
                        running[pool.submit(self.fn, task)] = task
                    except BrokenProcessPool:   # it broke since the last wait: this task never started
                        orphans.append(task)
                        break
                    self.peak = max(self.peak, len(running))
                    if len(running) >= self.limit:
                        break
                if not running and not orphans:
                    return
                done = wait(running, return_when=FIRST_COMPLETED)[0] if running else set()
                for f in done:
                    task = running.pop(f)
                    try:
                        yield task, f.result(), None
                    except BrokenProcessPool:
                        orphans.append(task)
                    except Exception as e:
                        yield task, None, e
                if orphans:   # the pool is gone with every task in it: each alone, then a fresh pool
                    orphans.extend(running.values())
                    running.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    for task in orphans:
                        result, error = _alone(self.fn, task)
                        yield task, result, error
                    pool = process_pool(self.workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
