"""The evaluation metrics against their definitions: FID (closed form, an independent reference,
a singular case), NDB (one mode dropped), R@K (known ranks), IIS/AIS/CS (cosines of fixed vectors)."""

import numpy as np
import pytest

from sonify.evaluation.metrics import (Undefined, clip_score, fid, frechet_distance, gaussian_stats, ndb, paired_cosines,
                                       recall_at_k, retrieval_ranks)


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def _reference_fid(mu1, s1, mu2, s2):
    """Written from the definition with a general (non-symmetric) eigensolver: tr (S1 S2)^(1/2) = sum sqrt(eig(S1 S2))."""
    eig = np.linalg.eigvals(s1 @ s2)
    tr = np.sum(np.sqrt(np.clip(eig.real, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_fid_closed_form_for_gaussians_with_a_shared_eigenbasis():
    """S1 = U diag(a) U^T, S2 = U diag(b) U^T: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(0)
    d = 16
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, u @ np.diag(a) @ u.T, mu2, u @ np.diag(b) @ u.T)
    assert _rel(got, expected) < 1e-6
    # one-dimensional: (m1 - m2)^2 + (s1 - s2)^2
    assert _rel(frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]), 4.0 + 1.0) < 1e-12


def test_fid_matches_an_eigendecomposition_reference_on_general_covariances():
    rng = np.random.default_rng(1)
    for d in (3, 20, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
        assert _rel(frechet_distance(mu1, s1, mu2, s2), _reference_fid(mu1, s1, mu2, s2)) < 1e-6


def test_fid_singular_case_fewer_samples_than_dimensions():
    """Rank-deficient covariances from n < d samples: still exact against the closed form and the reference."""
    rng = np.random.default_rng(2)
    d = 32
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.r_[rng.uniform(0.5, 2, 10), np.zeros(d - 10)]
    b = np.r_[rng.uniform(0.5, 2, 6), np.zeros(d - 6)]
    mu = rng.standard_normal(d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert _rel(frechet_distance(mu, u @ np.diag(a) @ u.T, mu, u @ np.diag(b) @ u.T), expected) < 1e-6
    x, y = rng.standard_normal((12, d)), rng.standard_normal((9, d)) + 0.5   # 12 and 9 samples in 32 dimensions
    m1, s1 = gaussian_stats(x)
    m2, s2 = gaussian_stats(y)
    assert np.linalg.matrix_rank(s1) == 11 and np.linalg.matrix_rank(s2) == 8
    assert _rel(frechet_distance(m1, s1, m2, s2), _reference_fid(m1, s1, m2, s2)) < 1e-6


def test_fid_of_features_is_undefined_below_dim_plus_one_samples():
    rng = np.random.default_rng(3)
    out = fid(rng.standard_normal((8, 16)), rng.standard_normal((30, 16)))
    assert isinstance(out, Undefined) and str(out) == "n/a (needs >= 17 samples)"
    x, y = rng.standard_normal((200, 4)), rng.standard_normal((200, 4)) + 1
    assert _rel(fid(x, y), frechet_distance(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))) < 1e-12
    assert fid(x, x) == pytest.approx(0, abs=1e-9)


def _z_test_different(c1, n1, c2, n2, alpha=0.05):
    """The NDB bin test from its definition: pooled two-proportion z-test, two-sided."""
    from math import erfc, sqrt
    p1, p2, p = c1 / n1, c2 / n2, (c1 + c2) / (n1 + n2)
    z = (p1 - p2) / sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return erfc(abs(z) / sqrt(2)) < alpha


def test_ndb_counts_one_different_bin_when_one_mode_is_dropped():
    rng = np.random.default_rng(4)
    k, per_mode, d = 50, 40, 8
    modes = rng.standard_normal((k, d)) * 100   # far apart: each mode is one bin
    real = np.concatenate([m + rng.standard_normal((per_mode, d)) for m in modes])
    fake = np.concatenate([m + rng.standard_normal((per_mode, d)) for m in modes[1:]])   # mode 0 dropped
    out = ndb(real, fake, k=k)
    n1, n2 = len(real), len(fake)
    expected = sum(_z_test_different(per_mode, n1, 0 if j == 0 else per_mode, n2) for j in range(k))
    assert expected == 1
    assert out["ndb"] == expected and out["ndb_over_k"] == pytest.approx(1 / k)
    same = np.concatenate([m + rng.standard_normal((per_mode, d)) for m in modes])
    assert ndb(real, same, k=k)["ndb"] == 0
    assert str(ndb(real[:100], fake, k=k)) == "n/a (needs >= 250 samples)"


def test_recall_at_k_on_embeddings_with_known_ranks():
    """Gallery = basis vectors; query i is built so that exactly r_i other items score above its own."""
    n = 12
    gallery = np.eye(n)
    wanted = np.array([0, 0, 1, 3, 4, 5, 7, 9, 11, 2, 0, 6])
    queries = np.zeros((n, n))
    for i, r in enumerate(wanted):
        queries[i, i] = 1.0
        others = [j for j in range(n) if j != i][:r]
        queries[i, others] = 2.0   # these r items beat the query's own
    ranks = retrieval_ranks(queries, gallery)
    assert ranks.tolist() == wanted.tolist()
    r = recall_at_k(ranks, (1, 5, 10))
    assert r[1] == pytest.approx(3 / 12) and r[5] == pytest.approx(7 / 12) and r[10] == pytest.approx(11 / 12)
    assert str(recall_at_k(ranks[:4], (1, 5))[5]) == "n/a (needs >= 5 images in the pool)"
    assert recall_at_k(ranks[4:8], (1, 5), pool=12)[5] == pytest.approx(1 / 4)   # a subset of queries ranked in the full pool


def test_iis_ais_cs_are_cosines_of_fixed_vectors():
    a = np.array([[1.0, 0, 0], [1, 1, 0], [0, 2, 0]])
    b = np.array([[2.0, 0, 0], [1, 0, 0], [0, -1, 0]])
    cos = paired_cosines(a, b)
    assert cos == pytest.approx([1.0, 1 / np.sqrt(2), -1.0])
    assert clip_score(a, b) == pytest.approx([100.0, 100 / np.sqrt(2), 0.0])
