"""The metrics, on features already extracted: FID, IIS, AIS, CS, R@K and NDB.

Each is written from its definition (cited per function); all work in float64. A metric that the
sample size does not define is `Undefined(needs)`, printed `n/a (needs >= N)`, never a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Undefined:
    """A metric the sample size does not define; `needs` is the smallest sample size that would."""
    needs: int
    what: str = "samples"

    def __str__(self) -> str:
        return f"n/a (needs >= {self.needs} {self.what})"


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017; Dowson & Landau 1982).

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2),
    a symmetric PSD matrix with the same spectrum as S1 S2: exact for singular covariances too,
    with no offset added to the diagonal (pytorch-fid's fallback) and no complex parts to drop.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    r = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(r @ s2 @ r)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows are samples), as pytorch-fid and clean-fid compute them."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid(real: np.ndarray, fake: np.ndarray) -> float | Undefined:
    """FID of two feature sets; undefined below dim + 1 samples per set (the covariance is then rank-deficient)."""
    need = real.shape[1] + 1
    if min(len(real), len(fake)) < need:
        return Undefined(need)
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def paired_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for each row pair: IIS (generated vs ground-truth CLIP image) and AIS (Wav2CLIP audio vs CLIP image)."""
    return (l2_normalise(a) * l2_normalise(b)).sum(axis=-1)


def clip_score(image: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """CS per pair: 100 x max(cos, 0), CLIPScore's clipping (Hessel et al. 2021) with the x100 of Visual Echoes."""
    return 100.0 * np.maximum(paired_cosines(image, audio), 0.0)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of gallery[i] among all of `gallery` for query i, by cosine; ties count against the query."""
    sims = l2_normalise(queries) @ l2_normalise(gallery).T
    own = np.diag(sims)[:, None]
    others = np.ones_like(sims, bool)
    np.fill_diagonal(others, False)
    return ((sims >= own) & others).sum(axis=1)


def recall_at_k(ranks: np.ndarray, ks=(1, 5, 10), pool: int | None = None) -> dict[int, float | Undefined]:
    """Share of queries whose own item is in the top K (Sound2Scene's R@K); undefined when the pool is smaller than K.

    `pool` is the gallery size the ranks were taken in (default: as many as there are queries).
    """
    pool = len(ranks) if pool is None else pool
    return {k: (float(np.mean(np.asarray(ranks) < k)) if pool >= k and len(ranks) else Undefined(k, "images in the pool"))
            for k in ks}


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10, iters: int = 100) -> np.ndarray:
    """Lloyd's k-means, best of `n_init` k-means++ seedings by inertia (as the NDB authors' sklearn call); k x D centres."""
    x = np.asarray(x, np.float64)
    runs = [_lloyd(x, k, rng, iters) for _ in range(n_init)]
    return min(runs, key=lambda c: ((x - c[nearest(x, c)]) ** 2).sum())


def _lloyd(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        centres.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iters):
        assign = nearest(x, c)
        new = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
    return d.argmin(1)


def ndb(real: np.ndarray, fake: np.ndarray, k: int = 50, alpha: float = 0.05, min_per_bin: int = 5,
        seed: int = 0) -> dict | Undefined:
    """Number of statistically Different Bins (Richardson & Weiss 2018).

    The real samples are clustered into k bins (k-means); every sample of both sets goes to its
    nearest centre; a bin is different when a two-proportion z-test with the pooled proportion
    rejects equal shares at level `alpha`. Undefined below `min_per_bin` samples per bin on average.
    """
    from scipy.stats import norm

    from sonify.engine.keys import keyed_rng

    need = k * min_per_bin
    if min(len(real), len(fake)) < need:
        return Undefined(need)
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    centres = kmeans(real, k, keyed_rng(seed, "ndb"))
    n1, n2 = len(real), len(fake)
    c1 = np.bincount(nearest(real, centres), minlength=k)
    c2 = np.bincount(nearest(fake, centres), minlength=k)
    p1, p2 = c1 / n1, c2 / n2
    p = (c1 + c2) / (n1 + n2)
    se = np.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    z = np.where(se > 0, (p1 - p2) / np.where(se > 0, se, 1), 0.0)
    different = 2 * norm.sf(np.abs(z)) < alpha
    return {"ndb": int(different.sum()), "ndb_over_k": float(different.sum() / k), "k": k}
