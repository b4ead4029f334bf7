"""Algorithm 1: the blocked top-k path equals the literal full-vector algorithm, ties included."""

import numpy as np
import pytest

from sonify.engine.keys import keyed_rng
from sonify.retrieval.algorithm import BlockedRetriever, choose, eligible_set


def _integer_data(seed=0, n=2000, d=16, q=150):
    """Integer-valued vectors: dot products are exact, so ties are real and plentiful."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    pool[50:70] = pool[3]                     # duplicate chunks: ties inside the top-k
    queries = rng.integers(-1, 2, size=(q, d)).astype(np.float32)
    queries[:4] = 0                           # all scores 0: everything tied (fallback)
    queries[4] = pool[3]                      # the duplicated chunk is the best match, 21 times over
    return pool, queries


@pytest.mark.parametrize("k", [1, 2, 7, 32, 5000])
@pytest.mark.parametrize("block_bytes", [2000 * 4 * 1, 2000 * 4 * 13, 1 << 30])
def test_eligible_sets_and_choices_equal_the_literal_algorithm(k, block_bytes, paper_algorithm1):
    pool, queries = _integer_data()
    r = BlockedRetriever(pool, k, "cpu", block_bytes)
    for j, (vals, idx, ties) in enumerate(r.topk(queries)):
        eligible, lb, fallback = eligible_set(vals, idx, "ssr", ties)
        lit_eligible, lit_choice = paper_algorithm1(queries[j], pool, k, keyed_rng(0, str(j), "v", 0))
        assert np.array_equal(eligible, lit_eligible), (k, j)
        m = choose(vals, idx, "ssr", keyed_rng(0, str(j), "v", 0), ties_at_max=ties)
        assert m.chunk == lit_choice and m.n_eligible == lit_eligible.size


def test_ties_and_fallback_are_visible():
    pool, queries = _integer_data()
    r = BlockedRetriever(pool, 32, "cpu")
    results = list(r.topk(queries[:5]))
    for vals, idx, ties in results[:4]:  # all-zero queries: nothing strictly above the threshold
        el, _, fallback = eligible_set(vals, idx, "ssr", ties)
        assert fallback == "ties_at_max" and el.size == len(pool)
    vals, idx, ties = results[4]
    el, _, fallback = eligible_set(vals, idx, "ssr", ties)
    assert fallback is None and {3, *range(50, 70)} <= set(el.tolist())


def test_pool_smaller_than_k_uses_the_whole_pool():
    pool = np.eye(4, dtype=np.float32)
    r = BlockedRetriever(pool, 32, "cpu")
    assert r.k == 4
    (vals, idx, ties), = r.topk(np.array([[1, 0.5, 0, 0]], np.float32))
    assert sorted(idx.tolist()) == [0, 1, 2, 3]


def test_k_equal_one_is_argmax():
    rng = np.random.default_rng(1)
    pool = rng.standard_normal((500, 8)).astype(np.float32)
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    for j, (vals, idx, ties) in enumerate(BlockedRetriever(pool, 1, "cpu").topk(queries)):
        m = choose(vals, idx, "ssr", keyed_rng(0, str(j), "v", 0), ties_at_max=ties)
        assert m.chunk == int(np.argmax(pool @ queries[j])) and m.fallback == "ties_at_max"


def test_empty_pool_is_a_clear_error():
    with pytest.raises(ValueError, match="audio pool is empty"):
        BlockedRetriever(np.zeros((0, 8), np.float32), 4, "cpu")


def test_choice_depends_on_ids_not_order():
    a = keyed_rng(7, "img", "llava", 2).integers(1000, size=5)
    b = keyed_rng(7, "img", "llava", 2).integers(1000, size=5)
    c = keyed_rng(7, "img", "llava", 1).integers(1000, size=5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("mode", ["raw", "argmax", "softmax"])
def test_ablation_modes(mode):
    rng = np.random.default_rng(2)
    pool = rng.standard_normal((300, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    q = pool[:10] + 0.01
    for j, (vals, idx, ties) in enumerate(BlockedRetriever(pool, 16, "cpu").topk(q)):
        m = choose(vals, idx, mode, keyed_rng(0, str(j), "v", 0), temperature=0.05, ties_at_max=ties)
        assert m.chunk in idx.tolist()
        if mode == "argmax":
            assert m.chunk == idx[0] and m.rank == 0
        if mode == "raw":
            assert m.cosine > vals.mean() and np.isfinite(m.threshold)


@pytest.mark.parametrize("mode", ["ssr", "raw", "argmax", "softmax"])
def test_distinct_within_a_variant_never_repeats_while_the_set_allows(mode):
    from sonify.retrieval.algorithm import choose_distinct

    rng = np.random.default_rng(3)
    pool = rng.normal(size=(400, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    pool[10:16] = pool[0]                          # six identical best chunks for the shared query
    r = BlockedRetriever(pool, 8, "cpu")
    q = pool[:1].repeat(3, axis=0)                 # three concepts of one variant asking the same thing
    topk = list(r.topk(q))
    default_repeats = 0
    for v in range(300):
        taken, plain, chosen = set(), [], []
        for i, (vals, idx, ties) in enumerate(topk):
            plain.append(choose(vals, idx, mode, keyed_rng(0, f"img{v}", "vlm", i), 0.05, ties).chunk)
            m = choose_distinct(vals, idx, mode, keyed_rng(0, f"img{v}", "vlm", i), taken, 0.05, ties)
            if i == 0 or plain[i] not in chosen:
                assert m.chunk == plain[i] and not (m.fallback or "").count("distinct")   # no collision: the paper's draw
            else:
                assert "distinct_redraw" in m.fallback
            if mode in ("ssr", "raw", "argmax"):
                eligible = eligible_set(vals, idx, mode, ties)[0] if mode != "argmax" else np.sort(ties if ties is not None else idx[vals == vals[0]])
                assert m.chunk in set(eligible.tolist())                                   # from the same set
            taken.add(m.chunk)
            chosen.append(m.chunk)
        default_repeats += len(set(plain)) < len(plain)
        assert len(set(chosen)) == len(chosen)
    assert default_repeats > 0                       # the paper's rule does repeat here: the test can fail


def test_distinct_keeps_the_repeat_when_the_set_is_exhausted():
    from sonify.retrieval.algorithm import choose_distinct

    vals, idx = np.array([0.9, 0.1, 0.05]), np.array([7, 3, 4])
    m = choose_distinct(vals, idx, "ssr", keyed_rng(0, "i", "v", 1), {7})
    assert m.chunk == 7 and m.fallback == "distinct_exhausted"     # only chunk 7 is above the threshold


ALPHA = 0.001   # significance level of the distribution tests: a correct rule fails with probability 0.1%


def _chi_square_passes(counts: np.ndarray, expected_p: np.ndarray, alpha: float = ALPHA) -> tuple[bool, float, float]:
    """Pearson's chi-square goodness of fit; cells expecting under 5 draws are pooled into one."""
    from scipy.stats import chi2

    n = counts.sum()
    exp = expected_p * n
    small = exp < 5
    obs_cells = np.append(counts[~small], counts[small].sum())
    exp_cells = np.append(exp[~small], exp[small].sum())
    keep = exp_cells > 0
    stat = float(((obs_cells[keep] - exp_cells[keep]) ** 2 / exp_cells[keep]).sum())
    critical = float(chi2.ppf(1 - alpha, keep.sum() - 1))
    return stat <= critical, stat, critical


def _draws(mode: str, n_draws: int, k: int = 16, temperature: float = 0.05):
    """One query against a fixed pool, chosen n_draws times with fixed keys (one key per imaginary image)."""
    rng = np.random.default_rng(20)   # a pool where the raw and SSR thresholds leave different sets
    pool = rng.standard_normal((400, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    q = pool[0] + 0.3 * rng.standard_normal(8).astype(np.float32)
    q /= np.linalg.norm(q)
    (vals, idx, ties), = BlockedRetriever(pool, k, "cpu").topk(q[None])
    counts = np.zeros(len(pool), np.int64)
    for n in range(n_draws):
        m = choose(vals, idx, mode, keyed_rng(11, f"image-{n}", "v", 0), temperature=temperature, ties_at_max=ties)
        counts[m.chunk] += 1
    return pool @ q, counts


def test_raw_mode_is_uniform_over_the_chunks_above_the_mean_of_the_top_k():
    """raw: Algorithm 1 without the signed square root. From the definition: I = {i : cos_i > mean(top-k cos)}, P(i) = 1/|I|."""
    k, n_draws = 16, 6000
    cos, counts = _draws("raw", n_draws, k)
    cos = cos.astype(np.float64)
    lb = np.sort(cos)[::-1][:k].mean()
    expected = (cos > lb).astype(np.float64)
    assert 3 <= expected.sum() < k, "the fixture must leave a real choice that is not the whole top k"
    ssr = np.sign(cos) * np.sqrt(np.abs(cos))
    assert (ssr > np.sort(ssr)[::-1][:k].mean()).sum() != expected.sum(), "the fixture must tell raw from SSR"
    assert set(np.flatnonzero(counts)) == set(np.flatnonzero(expected))      # exactly the eligible chunks, every one drawn
    ok, stat, critical = _chi_square_passes(counts, expected / expected.sum())
    assert ok, f"chi-square {stat:.1f} > {critical:.1f} (alpha {ALPHA}): raw draws are not uniform over I"


def test_softmax_mode_draws_in_proportion_to_exp_cos_over_t_among_the_top_k():
    """softmax: P(i) = exp(cos_i / T) / sum over the top k of exp(cos_j / T), zero outside the top k."""
    k, n_draws, temperature = 16, 6000, 0.05
    cos, counts = _draws("softmax", n_draws, k, temperature)
    cos = cos.astype(np.float64)
    top = np.argsort(-cos)[:k]
    expected = np.zeros_like(cos)
    expected[top] = np.exp((cos[top] - cos[top].max()) / temperature)
    expected /= expected.sum()
    assert expected.max() < 0.8 and (expected * n_draws >= 5).sum() >= 4, "the fixture must spread the mass"
    assert not counts[expected == 0].any()                                 # never outside the top k
    ok, stat, critical = _chi_square_passes(counts, expected)
    assert ok, f"chi-square {stat:.1f} > {critical:.1f} (alpha {ALPHA}): softmax draws do not follow exp(cos/T)"
