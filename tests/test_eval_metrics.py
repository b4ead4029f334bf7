"""The evaluation metrics against their definitions and independent implementations: FID (closed form,
torchmetrics, pytorch-fid's scipy sqrtm at small n), KID and IS (torchmetrics), NDB (one mode dropped),
R@K image-to-image and Sound2Scene's image-to-text (known ranks, ties), IIS/AIS/CS (cosines of fixed vectors)."""

import numpy as np
import pytest

from sonify.evaluation.metrics import (Undefined, clip_score, fid, frechet_distance, gaussian_stats, inception_score, kid, ndb,
                                       paired_cosines, rank_deficient, recall_at_k, retrieval_ranks, text_ranks, text_recall_at_k)


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


def test_fid_of_features_is_defined_from_two_samples():
    rng = np.random.default_rng(3)
    assert str(fid(rng.standard_normal((1, 16)), rng.standard_normal((30, 16)))) == "n/a (needs >= 2 samples)"
    small = fid(rng.standard_normal((8, 16)), rng.standard_normal((30, 16)))
    assert np.isfinite(small) and rank_deficient(8, 16) and not rank_deficient(17, 16)
    x, y = rng.standard_normal((200, 4)), rng.standard_normal((200, 4)) + 1
    assert _rel(fid(x, y), frechet_distance(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))) < 1e-12
    assert fid(x, x) == pytest.approx(0, abs=1e-9)


def _pytorch_fid_reference(x, y, eps=1e-6):
    """pytorch-fid's `calculate_frechet_distance`, written out: scipy's sqrtm of S1 S2, an eps offset only
    when that is not finite, the real part kept."""
    from scipy import linalg

    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(rng, n, d, shift=0.0):
    """Inception-like features: non-negative, correlated (a random mixing of a few factors plus noise)."""
    mix = rng.standard_normal((8, d))
    return np.abs(rng.standard_normal((n, 8)) @ mix + 0.3 * rng.standard_normal((n, d)) + shift)


def test_fid_at_small_n_matches_pytorch_fids_sqrtm():
    """d = 64, n = 40: both covariances rank-deficient (rank 39), as in Table 1's small benchmarks."""
    rng = np.random.default_rng(5)
    x, y = _features(rng, 40, 64), _features(rng, 40, 64, shift=0.4)
    assert _rel(fid(x, y), _pytorch_fid_reference(x, y)) < 1e-4


@pytest.mark.slow
def test_fid_2048d_at_small_n_matches_pytorch_fids_sqrtm():
    rng = np.random.default_rng(6)
    x, y = _features(rng, 1000, 2048), _features(rng, 1000, 2048, shift=0.2)
    assert _rel(fid(x, y), _pytorch_fid_reference(x, y)) < 1e-4


def test_frechet_distance_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(7)
    for d in (8, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
        ref = tm_fid._compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))).item()
        assert _rel(frechet_distance(mu1, s1, mu2, s2), ref) < 1e-6


def test_kid_matches_torchmetrics_with_one_subset_of_all_samples():
    torch = pytest.importorskip("torch")
    tm_kid = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(8)
    x, y = _features(rng, 30, 64), _features(rng, 30, 64, shift=0.3)
    out = kid(x, y)
    assert out["subsets"] == 1 and out["subset_size"] == 30
    ref = tm_kid.poly_mmd(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert _rel(out["kid"], ref) < 1e-9
    a, b, c = (rng.standard_normal((30, 64)) for _ in range(3))
    assert abs(kid(a, b)["kid"]) < 0.1 * kid(a, c + 1)["kid"]   # two draws of one distribution: near zero (unbiased)
    sub = kid(_features(rng, 50, 16), _features(rng, 40, 16), subsets=5, subset_size=20, seed=1)
    assert sub["subsets"] == 5 and sub["subset_size"] == 20 and sub["std"] > 0
    assert str(kid(x[:1], y)) == "n/a (needs >= 2 samples)"


def test_kid_over_subsets_estimates_the_full_sample_value():
    """Subsets drawn without replacement (clean-fid, torchmetrics): each subset's unbiased MMD^2 has the full
    sample's as its expectation, so the mean over subsets is close to it; drawn with replacement, repeated
    samples put k(x, x) into the off-diagonal sums and the mean is biased (about +30% here)."""
    rng = np.random.default_rng(10)
    x, y = _features(rng, 40, 16), _features(rng, 40, 16, shift=0.3)
    full = kid(x, y)["kid"]
    sub = kid(x, y, subsets=200, subset_size=30, seed=0)
    assert sub["subsets"] == 200 and sub["subset_size"] == 30
    assert _rel(sub["kid"], full) < 0.05, (sub, full)


@pytest.mark.filterwarnings("ignore::UserWarning")   # torchmetrics: its feature buffer, and the std of one split
def test_inception_score_matches_torchmetrics_from_logits():
    torch = pytest.importorskip("torch")
    tm_is = pytest.importorskip("torchmetrics.image.inception")
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((200, 1008)) * 3

    def torchmetrics_is(z, splits):
        metric = tm_is.InceptionScore(feature=torch.nn.Identity(), splits=splits)
        metric.update(torch.from_numpy(z))
        return metric.compute()[0].item()

    one = inception_score(logits, splits=1)
    assert one["splits"] == 1 and _rel(one["is"], torchmetrics_is(logits, 1)) < 1e-9
    torch.manual_seed(0)
    perm = torch.randperm(200).numpy()   # the shuffle torchmetrics draws first, under the same seed
    torch.manual_seed(0)
    ten = torchmetrics_is(logits, 10)
    ours = inception_score(logits[perm], splits=10)
    assert ours["splits"] == 10 and _rel(ours["is"], ten) < 1e-9
    assert inception_score(logits[:35], splits=10)["splits"] == 3   # fewer splits when n is small (10 per split)
    assert inception_score(np.zeros((20, 5)))["is"] == pytest.approx(1.0)   # a uniform prediction scores 1


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


def test_text_recall_at_k_on_embeddings_with_known_ranks_and_ties():
    """Class texts = basis vectors; each image beats its own class with a known number of others, some tied."""
    c = 12
    texts = np.eye(c)
    classes = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 3])
    wanted = np.array([0, 2, 4, 6, 9, 11, 0, 1, 5, 3, 10, 0, 7])
    images = np.zeros((len(classes), c))
    for i, (own, r) in enumerate(zip(classes, wanted)):
        images[i, own] = 1.0
        others = [j for j in range(c) if j != own][:r]
        images[i, others] = 1.0 if i % 2 else 1.5   # odd rows: ties with the own class, counted against it
    ranks = text_ranks(images, texts, classes)
    assert ranks.tolist() == wanted.tolist()
    r = text_recall_at_k(ranks, (1, 5, 10), num_classes=c)
    assert r[1] == pytest.approx(3 / 13) and r[5] == pytest.approx(7 / 13) and r[10] == pytest.approx(11 / 13)
    nine = text_recall_at_k(ranks, (1, 5, 10), num_classes=9)   # Landscapes: 9 classes, R@10 says nothing
    assert str(nine[10]) == "n/a (needs >= 11 classes)" and nine[5] == pytest.approx(7 / 13)
    assert str(text_recall_at_k(ranks, (5,), num_classes=5)[5]) == "n/a (needs >= 6 classes)"


def test_iis_ais_cs_are_cosines_of_fixed_vectors():
    a = np.array([[1.0, 0, 0], [1, 1, 0], [0, 2, 0]])
    b = np.array([[2.0, 0, 0], [1, 0, 0], [0, -1, 0]])
    cos = paired_cosines(a, b)
    assert cos == pytest.approx([1.0, 1 / np.sqrt(2), -1.0])
    assert clip_score(a, b) == pytest.approx([100.0, 100 / np.sqrt(2), -100.0])   # Visual Echoes: 100 x cos
    assert clip_score(a, b).mean() == pytest.approx(100 * cos.mean())            # CS = 100 x AIS for the same pair
    assert clip_score(a, b, clipped=True) == pytest.approx([100.0, 100 / np.sqrt(2), 0.0])
