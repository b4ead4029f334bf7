"""`python -m sonify.bench retrieval --chunks 500000 --queries 5000 --dim 512`

Same random unit vectors, same run, same block size:
  sonify   BlockedRetriever.topk + Algorithm 1's choice per query (what the retrieve stage runs)
  bare     a blocked `matmul` + `topk` and nothing else (the floor)
  literal  the algorithm as written, one query at a time over the full score vector (numpy),
           timed on a sample of queries and scaled to all of them
Targets: sonify/bare <= 1.25, literal/sonify >= 15. Prints peak RSS and the projected time for
3M queries (the paper's scale: 1M images x up to 3 concepts) against this pool on this device.
"""

from __future__ import annotations

import time

import numpy as np

from sonify.bench.common import peak_rss_mib
from sonify.engine.cli import command_parser


def literal_query(q: np.ndarray, pool: np.ndarray, k: int, rng: np.random.Generator) -> int:
    """The algorithm as the paper writes it, on the full score vector of one query (the slow reference)."""
    t = (pool @ q).astype(np.float64)
    t = np.sign(t) * np.sqrt(np.abs(t))
    lb = np.partition(t, t.size - k)[t.size - k:].mean()   # top k by selection, not a full sort
    eligible = np.flatnonzero(t > lb)
    if eligible.size == 0:
        eligible = np.flatnonzero(t == t.max())
    return int(eligible[rng.integers(eligible.size)])


def main(argv=None) -> None:
    ap = command_parser("bench retrieval", __doc__, settings=False)
    ap.add_argument("--chunks", type=int, default=500_000)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--literal-sample", type=int, default=50)
    ap.add_argument("--block-mb", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)

    import torch

    from sonify.engine.keys import keyed_rng
    from sonify.retrieval.algorithm import BlockedRetriever, choose

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((a.chunks, a.dim), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = rng.standard_normal((a.queries, a.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    r = BlockedRetriever(pool, a.k, a.device, a.block_mb << 20)
    sync = torch.cuda.synchronize if r.device.startswith("cuda") else (lambda: None)

    def sonify_run():
        n = 0
        for j, (vals, idx, ties) in enumerate(r.topk(queries)):
            choose(vals, idx, "ssr", keyed_rng(0, str(j), "bench", 0), ties_at_max=ties)
            n += 1
        assert n == a.queries

    def bare_run():
        q_all = torch.from_numpy(queries)
        for s in range(0, a.queries, r.block):
            vals, idx = torch.topk(q_all[s:s + r.block].to(r.device) @ r.pool.T, r.k, dim=1)
            vals.cpu(), idx.cpu()
        sync()

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    t_sonify, t_bare = [], []
    for _ in range(a.repeats):  # interleaved, so drift on a noisy machine hits both alike
        t_bare.append(timed(bare_run))
        t_sonify.append(timed(sonify_run))
    sample = min(a.literal_sample, a.queries)
    t0 = time.perf_counter()
    for j in range(sample):
        literal_query(queries[j], pool, a.k, keyed_rng(0, str(j), "bench", 0))
    t_literal = (time.perf_counter() - t0) / sample * a.queries
    ts, tb = min(t_sonify), min(t_bare)
    print(f"pool {a.chunks} x {a.dim} float32, {a.queries} queries, k={a.k}, device {r.device}, "
          f"block {r.block} queries ({a.block_mb} MiB of scores), best of {a.repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'measurement':<58} {'seconds':>9} {'queries/s':>10} {'ratio':>7}")
    print(f"{'sonify: blocked matmul + top-k + SSR threshold + keyed choice':<58} {ts:>9.2f} {a.queries / ts:>10.0f} {ts / tb:>7.2f}")
    print(f"{'bare: blocked matmul + top-k':<58} {tb:>9.2f} {a.queries / tb:>10.0f} {1.0:>7.2f}")
    print(f"{f'literal: per-query full-vector numpy ({sample} timed, scaled)':<58} {t_literal:>9.2f} {a.queries / t_literal:>10.1f} {t_literal / tb:>7.2f}")
    print(f"sonify/bare = {ts / tb:.3f} (target <= 1.25); literal/sonify = {t_literal / ts:.1f} (target >= 15); "
          f"peak RSS {peak_rss_mib():.0f} MiB (pool {pool.nbytes / 2**20:.0f} MiB)")
    print(f"projected for 3M queries against this pool on {r.device}: {ts / a.queries * 3e6 / 3600:.2f} h")


if __name__ == "__main__":
    main()
