"""FID, MKL, ISc and KID on Melception outputs, as SpecVQGAN's `evaluation/metrics/*.py` (torch-fidelity style)
computes them (SPEC section 7), plus the uncertainty the published numbers lack: a bootstrap over videos and
the spread over sampling seeds.

Shapes: generated samples come per video, `[V, K, ...]` (V validation videos, K samples each); real clips
`[V, ...]` (one per video, same order). FID / KID / ISc pool the generated samples; MKL pairs each sample with
its own video's real clip. Everything is computed in float64 (SpecVQGAN mixes float32 and float64; the
difference is round-off).
"""
from __future__ import annotations

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
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)). If sqrtm of the product is not finite (singular
    product), retry with eps on both diagonals; a small imaginary part from round-off is dropped, a large one
    (on the diagonal, > 1e-3) is an error (torch-fidelity's rule)."""
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


def melception_fid(feats_fake: np.ndarray, feats_real: np.ndarray, eps: float = EPS) -> float:
    """FID between all generated '2048' features (N, D) and the real ones (M, D)."""
    feats_fake, feats_real = _as2d(feats_fake, "feats_fake"), _as2d(feats_real, "feats_real")
    if feats_fake.shape[1] != feats_real.shape[1]:
        raise ValueError(f"feature dims differ: {feats_fake.shape[1]} vs {feats_real.shape[1]}")
    return frechet_distance(*gaussian_stats(feats_fake), *gaussian_stats(feats_real), eps=eps)


# ----------------------------------------------------------------------------------------------------------------
# MKL


def melception_mkl(logits_fake: np.ndarray, logits_real: np.ndarray, eps: float = EPS) -> float:
    """sum_i KL(p_real(video_i) || p_fake_i) / N_fake over the V*K generated samples (natural log).

    logits_fake (V, K, C), logits_real (V, C): sample k of video v is compared with real clip v. As SpecVQGAN's
    kl.py (torch kl_div): sum p_r * (log p_r - log(p_f + eps)), with 0 * log 0 = 0."""
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
    return float(kl.sum() / (logits_fake.shape[0] * logits_fake.shape[1]))


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


def bootstrap_ci(per_video_fake: np.ndarray, per_video_real: np.ndarray,
                 metric: str | Callable[[np.ndarray, np.ndarray], float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, method: str = "centered") -> tuple[float, float, float]:
    """(point estimate, low, high) from a bootstrap over VIDEOS.

    Each replicate draws V videos with replacement; a drawn video brings its real clip and all its K samples.
    `metric` is 'fid', 'mkl' or a callable f(fake (V, K, ...), real (V, ...)) -> float.

    method 'percentile': the plain quantiles of the replicates. 'centered' (default): the replicates' spread
    around their own mean, placed on the point estimate (point + quantiles of (rep - mean rep)). The two agree
    for MKL (a mean over samples). They do not for FID: a resample holds only ~63% distinct videos, which
    raises FID's small-N bias, so with 2048-d features and hundreds of videos every replicate lies above the
    point estimate and the percentile interval excludes it; 'centered' keeps the spread without that shift.
    """
    fn = METRICS[metric] if isinstance(metric, str) else metric
    fake, real = np.asarray(per_video_fake), np.asarray(per_video_real)
    if len(fake) != len(real):
        raise ValueError(f"per-video arrays differ in length: {len(fake)} fake vs {len(real)} real videos")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if method not in ("centered", "percentile"):
        raise ValueError(f"method must be 'centered' or 'percentile', got {method!r}")
    point = fn(fake, real)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, len(fake), len(fake))
        boots[b] = fn(fake[idx], real[idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    shift = boots.mean() - point
    log.info("bootstrap over %d videos: point %.4g, replicate mean %.4g (shift %+.3g), %d%% percentile [%.4g, %.4g]",
             len(fake), point, boots.mean(), shift, round(100 * level), low, high)
    if method == "centered":
        low, high = low - shift, high - shift
    return float(point), float(low), float(high)


def mean_over_seeds(metric: str | Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    """The metric for fake (V, R, K, ...) holding R sampling seeds: its mean over the seeds, each seed scored
    with its own K samples per video as the paper's protocol does. Bootstrapping it resamples videos with
    all their seeds, so the interval covers the videos and the seeds together."""
    fn = METRICS[metric] if isinstance(metric, str) else metric

    def over_seeds(fake: np.ndarray, real: np.ndarray) -> float:
        return float(np.mean([fn(fake[:, r], real) for r in range(fake.shape[1])]))

    return over_seeds


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of one metric over sample sets drawn with different sampling seeds;
    the std is nan for a single set."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of metric values, got shape {v.shape}")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")
