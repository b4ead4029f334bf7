"""Tab "Search the pool": the chunks closest to a text by CLAP cosine, paged, with players.

The query is embedded as the embed stage embeds concepts (CLAP text, L2-normalised, float16-rounded)
and scored against every row of the mapped pool in one matrix-vector product (the pool is unit rows,
so the dot product is the cosine). Ties are broken by pool row, so pages never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sonify.webapp.runtime import AppError, AppRun


@dataclass
class SearchPage:
    query: str
    page: int          # 0-based
    pages: int
    rows: list[dict]   # rank, chunk_id, source, uri, cosine, audio


def top_rows(scores: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ranked start..stop-1 by score (descending, ties by row), without sorting the whole pool."""
    n = scores.shape[0]
    stop = min(stop, n)
    if start >= stop:
        return np.zeros(0, np.int64)
    if stop < n:
        # every row scoring at least the stop-th best (ties included), then an exact order on those only
        cut = np.partition(scores, n - stop)[n - stop]
        cand = np.flatnonzero(scores >= cut)
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -scores[cand].astype(np.float64)))
    return cand[order][start:stop]


def search(app: AppRun, query: str, page: int = 0, players: bool = True) -> SearchPage:
    query = (query or "").strip()
    if not query:
        raise AppError("type a text to search the pool for (e.g. 'rain on a tin roof')")
    size = max(1, int(app.conf.page_size))
    n = app.pool.shape[0]
    pages = (n + size - 1) // size
    page = max(0, min(int(page), pages - 1))
    q = app.text_queries([query])[0]
    scores = app.pool @ q
    rows = top_rows(scores, page * size, (page + 1) * size)
    out = []
    for rank, (row, info) in enumerate(zip(rows, app.chunk_rows(rows.tolist())), start=page * size + 1):
        out.append({"rank": rank, "row": int(row), **info, "cosine": float(scores[row]),
                    "audio": app.chunk_wav(info) if players else None})
    return SearchPage(query, page, pages, out)

