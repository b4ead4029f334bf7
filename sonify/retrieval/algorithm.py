"""Algorithm 1 (retrieval of one audio chunk per concept), exact and blocked.

For a concept embedding q and the pool P (N x D, L2-normalised):
    t = P q;  t = sign(t) sqrt(|t|)  (SSR);  lb = mean(topk(t, k));  I = {i : t_i > lb};  i ~ U(I)
SSR is monotonic and any score above the mean of the top k is itself in the top k (with the mean
computed as in `topk_mean`, this holds in floating point too), so
I is a subset of the top k: a blocked matrix product + top-k over the raw cosines, then SSR and
the threshold on k values per query, is the exact algorithm. Never more than one block of
queries x N scores exists at a time.

When nothing is strictly above the threshold (k = 1, or all top-k scores equal), the choice is
uniform among the chunks tied at the maximum score, and the match records `fallback=ties_at_max`.
Randomness comes from a counter-based generator keyed by (seed, image, variant, concept index), so a
match does not depend on block size, worker count or order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("ssr", "raw", "argmax", "softmax")


def ssr(x: np.ndarray) -> np.ndarray:
    """Signed square root."""
    return np.sign(x) * np.sqrt(np.abs(x))


@dataclass
class Match:
    chunk: int            # row in the pool
    cosine: float
    score: float          # the score the rule used (SSR score in mode ssr, cosine otherwise)
    threshold: float      # lb; NaN for argmax and softmax
    n_eligible: int
    rank: int             # position of the chunk in the sorted top-k (0 = best)
    fallback: str | None = None


def topk_mean(s: np.ndarray) -> float:
    """The mean of the top-k scores, computed as min + mean(s - min).

    Equal to the plain mean in exact arithmetic, but never below the smallest of the k scores and
    exactly equal to it when all k are equal (a plain float mean can round below), so the eligible
    set provably stays inside the top-k.
    """
    low = s.min()
    return float(low + (s - low).mean())


def eligible_set(cos_topk: np.ndarray, idx_topk: np.ndarray, mode: str = "ssr",
                 ties_at_max: np.ndarray | None = None) -> tuple[np.ndarray, float, str | None]:
    """Algorithm 1's eligible pool indices (sorted by pool row), the threshold, and the fallback used."""
    cos_topk = cos_topk.astype(np.float64)
    s = ssr(cos_topk) if mode == "ssr" else cos_topk
    lb = topk_mean(s)
    eligible, fallback = idx_topk[s > lb], None
    if eligible.size == 0:
        eligible = ties_at_max if ties_at_max is not None else idx_topk[cos_topk == cos_topk[0]]
        fallback = "ties_at_max"
    return np.sort(eligible), lb, fallback  # by pool row, not top-k order: deterministic under ties


def choose(cos_topk: np.ndarray, idx_topk: np.ndarray, mode: str, rng: np.random.Generator,
           temperature: float = 0.1, ties_at_max: np.ndarray | None = None) -> Match:
    """Apply the rule of `mode` to one query's top-k (cosines sorted descending, pool indices).

    `ties_at_max`: pool indices of every chunk whose cosine equals the maximum (may exceed k);
    only needed when nothing is strictly above the threshold.
    """
    cos_topk = cos_topk.astype(np.float64)
    if mode in ("ssr", "raw"):
        eligible, lb, fallback = eligible_set(cos_topk, idx_topk, mode, ties_at_max)
        chunk = int(eligible[rng.integers(eligible.size)])
        pos = np.flatnonzero(idx_topk == chunk)
        rank = int(pos[0]) if pos.size else 0
        c = float(cos_topk[rank]) if pos.size else float(cos_topk[0])
        return Match(chunk, c, float(ssr(np.float64(c))) if mode == "ssr" else c, lb, int(eligible.size), rank, fallback)
    if mode == "argmax":
        ties = np.sort(ties_at_max if ties_at_max is not None else idx_topk[cos_topk == cos_topk[0]])
        chunk = int(ties[rng.integers(ties.size)])
        pos = np.flatnonzero(idx_topk == chunk)
        rank = int(pos[0]) if pos.size else 0
        return Match(chunk, float(cos_topk[0]), float(cos_topk[0]), float("nan"), int(ties.size), rank)
    if mode == "softmax":
        logits = cos_topk / max(temperature, 1e-8)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        rank = int(min(np.searchsorted(np.cumsum(p), rng.random(), side="right"), p.size - 1))
        return Match(int(idx_topk[rank]), float(cos_topk[rank]), float(cos_topk[rank]), float("nan"), int(p.size), rank)
    raise ValueError(f"unknown retrieval mode {mode!r}; valid choices: {', '.join(MODES)}")


def choose_distinct(cos_topk: np.ndarray, idx_topk: np.ndarray, mode: str, rng: np.random.Generator,
                    taken: set[int], temperature: float = 0.1, ties_at_max: np.ndarray | None = None) -> Match:
    """`choose`, then, when its chunk is already taken in this image variant, the generator's next
    draw from the same candidate set (the eligible set; the ties for argmax; the top k, renormalised,
    for softmax) without the taken chunks. The first draw is `choose`'s, so a variant without
    collisions gets exactly the paper's matches. With no candidate left, the repeat stands
    (`fallback` says `distinct_exhausted`)."""
    m = choose(cos_topk, idx_topk, mode, rng, temperature, ties_at_max)
    if m.chunk not in taken:
        return m
    cos_topk = cos_topk.astype(np.float64)
    tag = lambda what: ",".join(f for f in (m.fallback, what) if f)
    if mode == "softmax":
        keep = ~np.isin(idx_topk, list(taken))
        if not keep.any():
            m.fallback = tag("distinct_exhausted")
            return m
        logits = np.where(keep, cos_topk / max(temperature, 1e-8), -np.inf)
        p = np.exp(logits - logits[keep].max())
        p /= p.sum()
        rank = int(min(np.searchsorted(np.cumsum(p), rng.random(), side="right"), p.size - 1))
        while not keep[rank]:      # rounding at the edge of a dropped bin: the next kept one
            rank = (rank + 1) % p.size
        return Match(int(idx_topk[rank]), float(cos_topk[rank]), float(cos_topk[rank]), float("nan"),
                     int(keep.sum()), rank, tag("distinct_redraw"))
    if mode in ("ssr", "raw"):
        candidates = eligible_set(cos_topk, idx_topk, mode, ties_at_max)[0]
    else:
        candidates = np.sort(ties_at_max if ties_at_max is not None else idx_topk[cos_topk == cos_topk[0]])
    rest = candidates[~np.isin(candidates, list(taken))]
    if rest.size == 0:
        m.fallback = tag("distinct_exhausted")
        return m
    chunk = int(rest[rng.integers(rest.size)])
    pos = np.flatnonzero(idx_topk == chunk)
    rank = int(pos[0]) if pos.size else 0
    c = float(cos_topk[rank]) if pos.size else float(cos_topk[0])
    return Match(chunk, c, float(ssr(np.float64(c))) if mode == "ssr" else c, m.threshold, int(rest.size), rank,
                 tag("distinct_redraw"))


class BlockedRetriever:
    """The pool in memory once (torch, on GPU when present); queries in blocks through matmul + top-k.

    A float32, C-ordered pool (e.g. a read-only memory map) is used in place on CPU, never copied, so
    processes that map the same file share its pages; the pool is only ever read.
    """

    def __init__(self, pool: np.ndarray, k: int, device: str = "auto", block_bytes: int = 256 << 20):
        import warnings

        import torch

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if pool.ndim != 2 or pool.shape[0] == 0:
            raise ValueError(f"the audio pool is empty or not a matrix (shape {pool.shape})")
        with warnings.catch_warnings():   # torch warns that a read-only array must not be written: it never is
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.pool = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32)).to(self.device)
        self.n = self.pool.shape[0]
        self.k = max(1, min(int(k), self.n))
        self.block = max(1, int(block_bytes // (self.n * 4)))  # queries per block: bounds the B x N score matrix

    def topk(self, queries: np.ndarray, need_ties: bool = True):
        """Yield per query (cosines of the top-k sorted desc, their pool indices, all indices tied at the max)."""
        torch = self.torch
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        for start in range(0, q_all.shape[0], self.block):
            q = q_all[start:start + self.block].to(self.device)
            scores = q @ self.pool.T
            vals, idx = torch.topk(scores, self.k, dim=1)
            # ties at the maximum can reach beyond the top-k only when all k scores equal the maximum;
            # only then is the whole row scanned (the fallback and argmax rules need every tied chunk)
            all_tied = (vals[:, -1] == vals[:, 0]).cpu().numpy() if need_ties and self.n > self.k else None
            vals_np, idx_np = vals.cpu().numpy(), idx.cpu().numpy()
            for j in range(q.shape[0]):
                ties = None
                if all_tied is not None and all_tied[j]:
                    ties = torch.nonzero(scores[j] >= vals[j, 0]).flatten().cpu().numpy()
                yield vals_np[j], idx_np[j], ties
            del scores
