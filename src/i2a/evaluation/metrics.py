"""FID, MKL, ISc and KID on Melception outputs, as SpecVQGAN's `evaluation/metrics/*.py` (torch-fidelity style)
computes them (design.md §7), plus the uncertainty the published numbers lack: a bootstrap over videos and
the spread over sampling seeds.

Shapes: generated samples come per video, `[V, K, ...]` (V validation videos, K samples each); real clips
`[V, ...]` (one per video, same order). FID / KID / ISc pool the generated samples; MKL pairs each sample with
its own video's real clip. Everything is computed in float64 (SpecVQGAN mixes float32 and float64; the
difference is round-off).

FID is computed exactly without scipy's sqrtm of a D x D product: tr sqrtm(S1 S2) is the sum of the square roots
of the eigenvalues of a small Gram matrix (melception_fid), and bootstrap replicates are video weights on Grams
computed once (VideoFID), so 1,000 replicates cost minutes instead of hours. paired_bootstrap compares two runs
on the same videos.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable, Sequence

import numpy as np
import scipy.linalg
from scipy.special import log_softmax, softmax, xlogy

log = logging.getLogger(__name__)

EPS = 1e-6  # sqrtm diagonal offset (FID) and probability floor inside MKL's log, as SpecVQGAN


def _as2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------------------------------------------
# FID


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = EPS) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) from means and covariances with scipy's sqrtm: the reference
    implementation (torch-fidelity's), ~12 s at D = 2048; the metrics use the exact eigenvalue path below. If sqrtm
    of the product is not finite (singular product), retry with eps on both diagonals; a small imaginary part from
    round-off is dropped, a large one (on the diagonal, > 1e-3) is an error (torch-fidelity's rule)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances {sigma1.shape}, {sigma2.shape} do not match the mean length {mu1.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has a large imaginary component ({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (N - 1) covariance, as np.cov(rowvar=False)."""
    feats = _as2d(feats, "features")
    if len(feats) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, found once (None without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController  # installed with scikit-learn, which librosa requires
    except ImportError:
        return None
    return ThreadpoolController()


def _one_blas_thread():
    """A context running LAPACK single-threaded. Symmetric eigensolvers on matrices of a few hundred rows are
    mostly BLAS-2 steps that synchronise OpenBLAS's threads after each one: on a busy 2-core machine 2 threads
    took 3-5 s for a 768 x 768 eigvalsh that 1 thread does in 0.05 s (matrix products keep their threads)."""
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def _sum_sqrt_eigenvalues(gram: np.ndarray) -> float:
    """tr sqrtm(gram) = sum of the square roots of the eigenvalues of a symmetric PSD matrix.

    Eigenvalues below len * machine-eps * the largest are round-off around zero (a Gram of m centred rows that
    span fewer than m dimensions has exact zeros); they count as 0, not as sqrt(noise) ~ 1e-8 * sqrt(largest)
    each, which over hundreds of them would cost FID ~1e-7 relative."""
    with _one_blas_thread():
        ev = np.linalg.eigvalsh(gram)
    tol = len(ev) * np.finfo(np.float64).eps * max(float(ev[-1]), 0.0)
    return float(np.sqrt(ev[ev > tol]).sum())


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrtm(S_a S_b) for S_a = a^T a, S_b = b^T b (a (m, D), b (n, D), m <= n): S_a S_b has the nonzero
    eigenvalues of a S_b a^T = (a b^T)(a b^T)^T, an m x m symmetric PSD matrix, so neither D x D covariance
    nor sqrtm is needed. With more rows than dimensions a is first replaced by a D x D factor of S_a."""
    if len(a) > a.shape[1]:
        with _one_blas_thread():
            ev, vec = np.linalg.eigh(a.T @ a)
        a = np.sqrt(np.clip(ev, 0.0, None))[:, None] * vec.T  # a^T a unchanged, D rows
    p = a @ b.T
    return _sum_sqrt_eigenvalues(p @ p.T)  # p @ p.T runs as a symmetric rank-k update


def melception_fid(feats_fake: np.ndarray, feats_real: np.ndarray) -> float:
    """FID between all generated '2048' features (N, D) and the real ones (M, D), exactly (no eps offset): the
    trace term from the eigenvalues of a min(N, M, D)-sized Gram matrix (_trace_sqrt_product) instead of sqrtm of
    a D x D product, >10x faster for 7,680 vs 768 2048-d features (benchmarks/scoring.py). Agrees with
    frechet_distance on the covariances to round-off (1e-7 relative or better: scipy's sqrtm of a singular
    product is the less accurate one) where sqrtm needs no eps offset; it needs none here."""
    feats_fake, feats_real = _as2d(feats_fake, "feats_fake"), _as2d(feats_real, "feats_real")
    if feats_fake.shape[1] != feats_real.shape[1]:
        raise ValueError(f"feature dims differ: {feats_fake.shape[1]} vs {feats_real.shape[1]}")
    if min(len(feats_fake), len(feats_real)) < 2:
        raise ValueError("FID needs at least 2 feature vectors on each side for a covariance")
    mu_fake, mu_real = feats_fake.mean(axis=0), feats_real.mean(axis=0)
    # centred, scaled rows: S = rows^T rows is the unbiased covariance
    fake = (feats_fake - mu_fake) / np.sqrt(len(feats_fake) - 1)
    real = (feats_real - mu_real) / np.sqrt(len(feats_real) - 1)
    small, large = sorted((fake, real), key=len)
    diff = mu_fake - mu_real
    return float(diff @ diff + np.sum(fake * fake) + np.sum(real * real) - 2.0 * _trace_sqrt_product(small, large))


class VideoFID:
    """FID of generated per-video features (V, K, D) against the real ones (V, D) for any multiset of the videos,
    given as integer weights w (V,) (w_v copies of video v: its K samples and its real clip), exactly as FID on
    those rows duplicated. For the bootstrap: the Gram matrices between all feature vectors are computed once,
    and a replicate drawing u distinct videos costs O(u^2 * uK) instead of a FID on 2048-d features.

    With r_v the real clip, x_vk the samples, s_v = sum_k x_vk and N = K * sum(w) fake rows, M = sum(w) real:
    mu_f = sum_v w_v s_v / N, mu_r = sum_v w_v r_v / M; the mean and covariance traces follow from the Grams
    s.s, r.r, r.s and sum_k |x_vk|^2; tr sqrtm(S_f S_r) from the u x u matrix P P^T where
    P[u, (v, k)] = sqrt(w_u w_v) (r_u - mu_r).(x_vk - mu_f) / sqrt((M - 1)(N - 1)), built from G = r.x with the
    weighted centring applied to the Gram entries. Memory: G is V x V x K float64 (470 MB at V=768, K=100)."""

    def __init__(self, feats_fake: np.ndarray, feats_real: np.ndarray):
        fake, real = np.array(feats_fake, np.float64), np.array(feats_real, np.float64)  # copies, shifted below
        if fake.ndim != 3 or real.ndim != 2 or fake.shape[0] != real.shape[0] or fake.shape[2] != real.shape[1]:
            raise ValueError(f"expected fake (V, K, D) and real (V, D), got {fake.shape} and {real.shape}")
        # FID is translation invariant: shifting both sets by the real mean keeps the Gram entries small, so the
        # centring done on them below loses no precision to large common means (features after a ReLU)
        shift = real.mean(axis=0)
        fake -= shift
        real -= shift
        self.n_videos, self.k = fake.shape[:2]
        sums = fake.sum(axis=1)                                    # s_v (V, D)
        self.sq_fake = np.einsum("vkd,vkd->v", fake, fake)        # sum_k |x_vk|^2
        self.sq_real = np.einsum("vd,vd->v", real, real)          # |r_v|^2
        self.ss, self.rr, self.rs = sums @ sums.T, real @ real.T, real @ sums.T
        self.g = (real @ fake.reshape(-1, fake.shape[2]).T).reshape(self.n_videos, self.n_videos, self.k)

    def fid(self, weights: np.ndarray | None = None) -> float:
        """FID of the multiset of videos with these counts (all videos once when None)."""
        w = np.ones(self.n_videos) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (self.n_videos,) or (w < 0).any():
            raise ValueError(f"weights must be {self.n_videos} non-negative counts, got shape {w.shape}")
        d = np.flatnonzero(w)
        w = w[d]
        m = w.sum()                                                # real rows
        n = self.k * m                                             # fake rows
        if m < 2:
            raise ValueError("FID needs at least 2 videos (with repeats) for a covariance")
        a, b = w / n, w / m                                        # mu_f = a.s[d], mu_r = b.r[d]
        rs = self.rs[np.ix_(d, d)]
        rs_a = rs @ a                                              # r_u . mu_f
        ff, rr, rf = a @ self.ss[np.ix_(d, d)] @ a, b @ self.rr[np.ix_(d, d)] @ b, b @ rs_a
        tr_fake = (w @ self.sq_fake[d] - n * ff) / (n - 1)
        tr_real = (w @ self.sq_real[d] - m * rr) / (m - 1)
        g = self.g[np.ix_(d, d)]                                   # (u, u, K): r_u . x_vk
        centred = g - rs_a[:, None, None] - np.tensordot(b, g, axes=1)[None] + rf
        root = np.sqrt(w)
        p = (root[:, None, None] * centred * root[None, :, None]).reshape(len(d), -1) / np.sqrt((m - 1) * (n - 1))
        return float(ff + rr - 2.0 * rf + tr_fake + tr_real - 2.0 * _sum_sqrt_eigenvalues(p @ p.T))


# ----------------------------------------------------------------------------------------------------------------
# MKL


def _kl_per_video(logits_fake: np.ndarray, logits_real: np.ndarray, eps: float = EPS) -> np.ndarray:
    """(V,): sum over video v's K samples of KL(p_real(v) || p_fake), the per-video pieces MKL averages (so a
    resample of videos is a weighted sum of them)."""
    logits_fake = np.asarray(logits_fake, dtype=np.float64)
    logits_real = np.asarray(logits_real, dtype=np.float64)
    if logits_fake.ndim != 3 or logits_real.ndim != 2:
        raise ValueError(f"expected logits_fake (V, K, C) and logits_real (V, C), got {logits_fake.shape} and "
                         f"{logits_real.shape}")
    if logits_fake.shape[0] != logits_real.shape[0] or logits_fake.shape[2] != logits_real.shape[1]:
        raise ValueError(f"videos or classes differ: fake {logits_fake.shape} vs real {logits_real.shape}")
    p_fake = softmax(logits_fake, axis=-1)
    p_real = softmax(logits_real, axis=-1)[:, None, :]  # broadcast each real clip over its K samples
    kl = xlogy(p_real, p_real) - p_real * np.log(p_fake + eps)
    return kl.sum(axis=(1, 2))


def melception_mkl(logits_fake: np.ndarray, logits_real: np.ndarray, eps: float = EPS) -> float:
    """sum_i KL(p_real(video_i) || p_fake_i) / N_fake over the V*K generated samples (natural log).

    logits_fake (V, K, C), logits_real (V, C): sample k of video v is compared with real clip v. As SpecVQGAN's
    kl.py (torch kl_div): sum p_r * (log p_r - log(p_f + eps)), with 0 * log 0 = 0."""
    kl = _kl_per_video(logits_fake, logits_real, eps)
    return float(kl.sum() / (np.shape(logits_fake)[0] * np.shape(logits_fake)[1]))


class VideoMKL:
    """MKL for any multiset of the videos, given as counts w (V,): sum_v w_v KL_v / (K sum(w)), with the
    per-video KL sums computed once (VideoFID's counterpart for the bootstrap)."""

    def __init__(self, logits_fake: np.ndarray, logits_real: np.ndarray, eps: float = EPS):
        self.kl = _kl_per_video(logits_fake, logits_real, eps)
        self.k = np.shape(logits_fake)[1]

    def mkl(self, weights: np.ndarray | None = None) -> float:
        """MKL of the multiset of videos with these counts (all videos once when None)."""
        w = np.ones(len(self.kl)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != self.kl.shape or (w < 0).any() or w.sum() == 0:
            raise ValueError(f"weights must be {len(self.kl)} non-negative counts, not all 0, got shape {w.shape}")
        return float(w @ self.kl / (self.k * w.sum()))


# ----------------------------------------------------------------------------------------------------------------
# Inception score


def inception_score(logits_unbiased: np.ndarray, splits: int = 10, shuffle: bool = True,
                    seed: int = 2020) -> tuple[float, float]:
    """(mean, std over splits) of exp(E_x KL(p(y|x) || p(y))) on 'logits_unbiased'. SpecVQGAN shuffles the
    samples with np.random.RandomState(2020) first and splits at i * N // splits."""
    logits = _as2d(logits_unbiased, "logits_unbiased")
    n = len(logits)
    if n < splits:
        raise ValueError(f"{n} samples cannot fill {splits} splits")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    p, log_p = softmax(logits, axis=1), log_softmax(logits, axis=1)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        q = p[sl].mean(axis=0, keepdims=True)
        scores.append(np.exp((p[sl] * (log_p[sl] - np.log(q))).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------------------------
# KID


def polynomial_mmd(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                   coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel (gamma <x, y> + coef0)^degree, gamma = 1/D by default (equal sizes)."""
    if len(x) != len(y):
        raise ValueError(f"subsets must have equal size, got {len(x)} and {len(y)}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    m = len(x)
    return float((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                 - 2.0 * k_xy.sum() / (m * m))


def kid(feats_fake: np.ndarray, feats_real: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of polynomial MMD^2 over `subsets` random subsets drawn without replacement; the subset
    size shrinks to the smaller set when needed (SpecVQGAN's rule; its seed 2020, fake drawn before real)."""
    feats_fake, feats_real = _as2d(feats_fake, "feats_fake"), _as2d(feats_real, "feats_real")
    if feats_fake.shape[1] != feats_real.shape[1]:
        raise ValueError(f"feature dims differ: {feats_fake.shape[1]} vs {feats_real.shape[1]}")
    size = min(subset_size, len(feats_fake), len(feats_real))
    if size < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    if size < subset_size:
        log.info("KID: subset size %d > available samples; using %d", subset_size, size)
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        f = feats_fake[rng.choice(len(feats_fake), size, replace=False)]
        r = feats_real[rng.choice(len(feats_real), size, replace=False)]
        mmds[i] = polynomial_mmd(f, r, degree, gamma, coef0)
    return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------------------------------------------
# uncertainty


def fid_per_video(feats_fake: np.ndarray, feats_real: np.ndarray) -> float:
    """FID for per-video arrays: feats_fake (V, K, D) pooled over samples, feats_real (V, D)."""
    feats_fake = np.asarray(feats_fake)
    return melception_fid(feats_fake.reshape(-1, feats_fake.shape[-1]), feats_real)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"fid": fid_per_video, "mkl": melception_mkl}


class _MeanOverSeeds:
    """mean_over_seeds(metric); a class so that the bootstrap can recognise 'fid' / 'mkl' and use their
    precomputed, weighted forms per seed."""

    def __init__(self, metric: str | Callable[[np.ndarray, np.ndarray], float]):
        self.name = metric if isinstance(metric, str) else None
        self.fn = METRICS[metric] if isinstance(metric, str) else metric

    def __call__(self, fake: np.ndarray, real: np.ndarray) -> float:
        return float(np.mean([self.fn(fake[:, r], real) for r in range(fake.shape[1])]))


def mean_over_seeds(metric: str | Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    """The metric for fake (V, R, K, ...) holding R sampling seeds: its mean over the seeds, each seed scored
    with its own K samples per video as the paper's protocol does. Bootstrapping it resamples videos with
    all their seeds, so the interval covers the videos and the seeds together."""
    return _MeanOverSeeds(metric)


def _weighted_scorer(metric, fake: np.ndarray, real: np.ndarray) -> Callable[[np.ndarray], float] | None:
    """For 'fid', 'mkl' or mean_over_seeds of either: a function of per-video counts w (V,) giving the metric on
    that resample of videos, everything independent of w computed once (per seed). None for other metrics,
    which the bootstrap calls on indexed copies."""
    if isinstance(metric, _MeanOverSeeds) and metric.name is not None:
        per_seed = [_weighted_scorer(metric.name, fake[:, r], real) for r in range(fake.shape[1])]
        return lambda w: float(np.mean([score(w) for score in per_seed]))
    if isinstance(metric, str) and metric == "fid":
        return VideoFID(fake.reshape(len(fake), -1, fake.shape[-1]), real).fid  # all samples pooled, as fid_per_video
    if isinstance(metric, str) and metric == "mkl":
        return VideoMKL(fake, real).mkl
    return None


def _resample_counts(rng: np.random.Generator, n_videos: int) -> np.ndarray:
    """How often each video occurs in one draw of n_videos with replacement (the same draw as indexing with
    rng.integers(0, n_videos, n_videos))."""
    return np.bincount(rng.integers(0, n_videos, n_videos), minlength=n_videos)


def _replicates(score: Callable[[np.ndarray], float], n_videos: int, n_boot: int, seed: int) -> np.ndarray:
    """`score` of n_boot resamples of the videos, each given as per-video counts; the same draws for a seed."""
    rng = np.random.default_rng(seed)
    return np.array([score(_resample_counts(rng, n_videos)) for _ in range(n_boot)], dtype=np.float64)


# How each metric's interval is placed (see bootstrap_ci): MKL is a mean over samples, so its replicates centre on
# it; FID is a positive, skewed statistic whose replicates lie above it, so its interval is centred on the log scale
# and cannot reach 0 or below.
INTERVAL_METHODS = {"fid": "log-centered", "mkl": "centered"}


def _interval(point: float, boots: np.ndarray, level: float, method: str, what: str) -> tuple[float, float]:
    """(low, high) from bootstrap replicates, 'percentile', 'centered' or 'log-centered' (see bootstrap_ci)."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    shift = boots.mean() - point
    log.info("%s: point %.4g, replicate mean %.4g (shift %+.3g), %d%% percentile [%.4g, %.4g]",
             what, point, boots.mean(), shift, round(100 * level), low, high)
    if method == "log-centered" and (point <= 0 or boots.min() <= 0):
        # a FID of 0 up to round-off (identical sets) has no log: its replicates' own range is the interval
        log.info("%s: values <= 0, no log scale; percentile interval", what)
    elif method == "log-centered":
        logs = np.log(boots)
        low, high = point * np.exp(np.quantile(logs, [alpha, 1.0 - alpha]) - logs.mean())
    elif method == "centered":
        low, high = low - shift, high - shift
    return float(low), float(high)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def bootstrap_ci(per_video_fake: np.ndarray, per_video_real: np.ndarray,
                 metric: str | Callable[[np.ndarray, np.ndarray], float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, method: str | None = None) -> tuple[float, float, float]:
    """(point estimate, low, high) from a bootstrap over VIDEOS.

    Each replicate draws V videos with replacement; a drawn video brings its real clip and all its K samples.
    `metric` is 'fid', 'mkl', mean_over_seeds('fid' / 'mkl') or a callable f(fake (V, K, ...), real (V, ...))
    -> float. FID and MKL score a replicate as per-video counts on Grams / KL sums computed once (VideoFID,
    VideoMKL), the point estimate being the same computation with every video once; a plain callable is
    called on each resampled copy.

    method 'percentile': the plain quantiles of the replicates. 'centered': the replicates' spread around their own
    mean, placed on the point estimate (point + quantiles of (rep - mean rep)). 'log-centered': the same on the
    log scale (point x exp(quantiles of (log rep - mean log rep))), for a positive metric: the interval stays above
    0. The default (None) is the metric's INTERVAL_METHODS entry ('centered' for a plain callable). The three agree
    for MKL (a mean over samples). They do not for FID: a resample holds only ~63% distinct videos, which raises
    FID's small-N bias, so with 2048-d features and hundreds of videos every replicate lies above the point
    estimate and the percentile interval excludes it; 'centered' keeps the spread without that shift, but at a few
    dozen videos the replicates are skewed far upwards and subtracting their shift crossed 0 (the demo's 24 videos:
    FID 28.66 [-0.31, 90.83]); 'log-centered' removes the shift as a ratio and keeps the skew.
    """
    if isinstance(metric, str) and metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)} or a callable")
    fake, real = np.asarray(per_video_fake), np.asarray(per_video_real)
    if len(fake) != len(real):
        raise ValueError(f"per-video arrays differ in length: {len(fake)} fake vs {len(real)} real videos")
    _check_level(level)
    name = metric if isinstance(metric, str) else getattr(metric, "name", None)
    method = INTERVAL_METHODS.get(name, "centered") if method is None else method
    if method not in ("centered", "log-centered", "percentile"):
        raise ValueError(f"method must be 'centered', 'log-centered' or 'percentile', got {method!r}")
    n = len(fake)
    score = _weighted_scorer(metric, fake, real)
    if score is not None:
        point = score(np.ones(n))
        boots = _replicates(score, n, n_boot, seed)
    else:
        point = metric(fake, real)
        rng = np.random.default_rng(seed)
        boots = np.empty(n_boot)
        for b in range(n_boot):
            idx = rng.integers(0, n, n)
            boots[b] = metric(fake[idx], real[idx])
    low, high = _interval(point, boots, level, method, f"bootstrap over {n} videos")
    return float(point), low, high


def paired_bootstrap(fake_a: np.ndarray, fake_b: np.ndarray, real: np.ndarray, metric: str = "fid",
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(metric(a) - metric(b), low, high): the difference between two runs scored on the same validation videos,
    with a 'centered' bootstrap interval (see bootstrap_ci) whose replicates draw ONE set of videos for both runs
    and the real reference. Per-video difficulty then cancels in the difference, so the interval is the one to
    read for "is a better than b", much narrower than the two runs' own intervals suggest.

    metric 'fid' or 'mkl'; real (V, D) or (V, C); each fake (V, K, ...) as bootstrap_ci's metric takes it, or
    (V, R, K, ...) with R sampling seeds, scored as mean_over_seeds(metric). The two runs may differ in R or K."""
    if metric not in METRICS:
        raise ValueError(f"paired_bootstrap scores 'fid' or 'mkl', got {metric!r}")
    _check_level(level)
    real = np.asarray(real)
    n = len(real)
    scorers = []
    for name, fake in (("a", fake_a), ("b", fake_b)):
        fake = np.asarray(fake)
        if len(fake) != n:
            raise ValueError(f"run {name} has {len(fake)} videos, the real reference {n}")
        if fake.ndim == real.ndim + 1:
            scorers.append(_weighted_scorer(metric, fake, real))
        elif fake.ndim == real.ndim + 2:
            scorers.append(_weighted_scorer(mean_over_seeds(metric), fake, real))
        else:
            raise ValueError(f"run {name}: expected (V, K, ...) or (V, R, K, ...) for real {real.shape}, "
                             f"got {fake.shape}")
    score_a, score_b = scorers
    point = score_a(np.ones(n)) - score_b(np.ones(n))
    boots = _replicates(lambda w: score_a(w) - score_b(w), n, n_boot, seed)
    low, high = _interval(point, boots, level, "centered", f"paired bootstrap over {n} videos ({metric}, a - b)")
    return float(point), low, high


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of one metric over sample sets drawn with different sampling seeds;
    the std is nan for a single set."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of metric values, got shape {v.shape}")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def score_with_uncertainty(fake: np.ndarray, real: np.ndarray, metric: str, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> dict[str, float | list[float]]:
    """The table's numbers for one metric of fake (V, R, K, ...) with R sampling seeds: the mean over seeds of the
    paper's protocol (`value`) with its bootstrap interval over videos (`low`, `high`; INTERVAL_METHODS: MKL
    'centered', FID 'log-centered', so a FID interval stays above 0), each seed's value (`per_seed`) and their
    spread (`seed_sd`), all from one weighted scorer per seed (nothing computed twice)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    _check_level(level)
    fake, real = np.asarray(fake), np.asarray(real)
    n = len(real)
    scorers = [_weighted_scorer(metric, fake[:, r], real) for r in range(fake.shape[1])]
    per_seed = [score(np.ones(n)) for score in scorers]
    point = float(np.mean(per_seed))
    boots = _replicates(lambda w: np.mean([score(w) for score in scorers]), n, n_boot, seed)
    low, high = _interval(point, boots, level, INTERVAL_METHODS[metric], f"bootstrap over {n} videos ({metric})")
    _, seed_sd = seed_spread(per_seed)
    return {"value": point, "low": low, "high": high, "per_seed": per_seed, "seed_sd": seed_sd}
