"""The metrics, on features already extracted: FID, KID, IS, IIS, AIS, CS, R@K (text and image) and NDB.

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
    """FID of two feature sets at any n >= 2, as pytorch-fid and clean-fid compute it.

    With n <= dim samples a covariance is rank-deficient: the value is exact for those statistics
    but biased by n, so it is comparable only at equal n (`rank_deficient` says when; scores.md marks it).
    """
    if min(len(real), len(fake)) < 2:
        return Undefined(2)
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def rank_deficient(n: int, dim: int) -> bool:
    """A sample covariance of n points in `dim` dimensions has rank <= n - 1: singular when n <= dim."""
    return n <= dim


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, KID's kernel (Binkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 estimator: mean of k(x, x') and k(y, y') over distinct pairs, minus 2 mean k(x, y)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict | Undefined:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased polynomial-kernel MMD^2, averaged over subsets.

    As clean-fid and torchmetrics: `subsets` random subsets of m = min(subset_size, n_real, n_fake)
    samples of each set, drawn without replacement; mean and (population) std over subsets. When m
    is the whole of both sets every subset is the same, so one is computed. Unbiased, so it is stable at
    small n (and can be slightly negative); defined from 2 samples.
    """
    from sonify.engine.keys import keyed_rng

    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        return Undefined(2)
    if m == len(real) == len(fake):
        v = mmd2_unbiased(real, fake)
        return {"kid": v, "std": 0.0, "subsets": 1, "subset_size": m}
    rng = keyed_rng(seed, "kid")
    vals = [mmd2_unbiased(real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)])
            for _ in range(subsets)]
    return {"kid": float(np.mean(vals)), "std": float(np.std(vals)), "subsets": subsets, "subset_size": m}


def inception_score(logits: np.ndarray, splits: int = 10, min_per_split: int = 10) -> dict | Undefined:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` splits.

    p(y|x) is the softmax of the Inception's 1008-way logits; the splits are consecutive chunks (the
    original code and torch-fidelity; torchmetrics shuffles first). Fewer splits are used when a split
    would hold fewer than `min_per_split` images: the count used is returned and printed.
    """
    z = np.asarray(logits, np.float64)
    if len(z) < 2:
        return Undefined(2)
    k = max(1, min(splits, len(z) // min_per_split))
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(logp, k):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        scores.append(float(np.exp((p * (part - log_marginal)).sum(axis=1).mean())))
    return {"is": float(np.mean(scores)), "std": float(np.std(scores)), "splits": k}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def paired_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for each row pair: IIS (generated vs ground-truth CLIP image) and AIS (Wav2CLIP audio vs CLIP image)."""
    return (l2_normalise(a) * l2_normalise(b)).sum(axis=-1)


def clip_score(image: np.ndarray, audio: np.ndarray, clipped: bool = False) -> np.ndarray:
    """CS per pair as Visual Echoes defines it: 100 x cos(Wav2CLIP audio, CLIP image); its mean is the CS.

    `clipped` gives CLIPScore's variant (Hessel et al. 2021), 100 x max(cos, 0): another number
    whenever a cosine is negative, so it is only an option and labelled as such.
    """
    cos = paired_cosines(image, audio)
    return 100.0 * (np.maximum(cos, 0.0) if clipped else cos)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of gallery[i] among all of `gallery` for query i, by cosine; ties count against the query."""
    sims = l2_normalise(queries) @ l2_normalise(gallery).T
    own = np.diag(sims)[:, None]
    others = np.ones_like(sims, bool)
    np.fill_diagonal(others, False)
    return ((sims >= own) & others).sum(axis=1)


def text_ranks(images: np.ndarray, texts: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each image's own class text among all class texts, by cosine (Sound2Scene's R@K).

    Sound2Scene ranks the evaluated set's class names for each generated image with CLIP
    (image-to-text retrieval, after CLIP R-Precision). A class text scoring equal to the own one
    counts against the image, as in `retrieval_ranks`.
    """
    sims = l2_normalise(images) @ l2_normalise(texts).T
    own = sims[np.arange(len(sims)), classes][:, None]
    others = np.ones_like(sims, bool)
    others[np.arange(len(sims)), classes] = False
    return ((sims >= own) & others).sum(axis=1)


def text_recall_at_k(ranks: np.ndarray, ks, num_classes: int) -> dict[int, float | Undefined]:
    """R@K over class texts; undefined where the set has K classes or fewer (every image would be in the top K)."""
    return {k: (float(np.mean(np.asarray(ranks) < k)) if num_classes > k and len(ranks) else Undefined(k + 1, "classes"))
            for k in ks}


def recall_at_k(ranks: np.ndarray, ks=(1, 5, 10), pool: int | None = None) -> dict[int, float | Undefined]:
    """Share of queries whose own item is in the top K (`R@K (image)`, this project's addition); undefined when the pool is smaller than K.

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
