"""Decoding ahead of the model: a model stage's next batch decodes while the model runs this one.

A stage that splits its work (`decode_batch`: files to arrays, CPU only; `process_batch(batch,
decoded)`: the model) gets its batches here in order, each already decoded: one lead thread decodes
the next `ahead` batches (the bounded queue), fanning each batch's rows out over `workers` threads
(the stage's `num_cpus`, the cores Ray reserves for its actor). Decoders (Pillow, libsndfile, soxr,
numpy) release the GIL, so the threads use those cores while the model runs. The outputs do not
depend on this: the same functions decode the same rows; only when they run changes.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator


def decode_workers(num_cpus: float) -> int:
    return max(1, int(math.ceil(float(num_cpus))))


def decoded_batches(batches: list, decode: Callable[[Any, Callable], Any], workers: int, ahead: int = 1) -> Iterator[tuple[Any, Any]]:
    """(batch, decode(batch, pmap)) in order, with up to `ahead` batches decoding beyond the one yielded;
    `pmap(fn, items)` maps over a batch's rows on the row threads. A decode that raises re-raises here."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sonify-decode-row") as rows, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonify-decode-lead") as lead:
        pmap = lambda fn, items: list(rows.map(fn, items))
        pending: deque = deque()
        todo = iter(batches)
        for batch in todo:
            pending.append((batch, lead.submit(decode, batch, pmap)))
            if len(pending) > ahead:
                break
        while pending:
            batch, future = pending.popleft()
            nxt = next(todo, _END)
            if nxt is not _END:
                pending.append((nxt, lead.submit(decode, nxt, pmap)))
            yield batch, future.result()


_END = object()
