"""FID / MKL / ISc / KID against independent computations and hand-worked cases; bootstrap (plain and paired over
the same videos) and seed spread."""
import logging
import math

import numpy as np
import pytest

from i2a.evaluation.metrics import (VideoFID, VideoMKL, bootstrap_ci, fid_per_video, frechet_distance, gaussian_stats,
                                    inception_score, kid, mean_over_seeds, melception_fid, melception_mkl,
                                    paired_bootstrap, polynomial_mmd, score_with_uncertainty, seed_spread)


def _fid_by_eigh(x: np.ndarray, y: np.ndarray) -> float:
    """FID via symmetric eigendecompositions: tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1 = (x - mu1).T @ (x - mu1) / (len(x) - 1)
    s2 = (y - mu2).T @ (y - mu2) / (len(y) - 1)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_fid_matches_independent_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24))
    y = rng.normal(size=(250, 24)) @ rng.normal(size=(24, 24)) * 0.7 + 0.3
    expected = _fid_by_eigh(x, y)
    assert expected > 1.0
    assert melception_fid(x, y) == pytest.approx(expected, rel=1e-8)
    assert melception_fid(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(
        _fid_by_eigh(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)), rel=1e-8)


def test_fid_of_identical_sets_is_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16))
    assert abs(melception_fid(x, x)) < 1e-8
    # fewer samples than dimensions (VAS: 768 clips, 2048-d): rank-deficient covariances, still ~0
    x = rng.normal(size=(40, 64))
    assert abs(melception_fid(x, x)) < 1e-4 * np.trace(np.cov(x, rowvar=False))


def test_frechet_distance_pure_mean_shift():
    sigma = np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(np.zeros(3), sigma, np.array([1.0, 2.0, 2.0]), sigma) == pytest.approx(9.0)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(0.0, 4.0, 1.0, 9.0) == pytest.approx(1.0 + (2.0 - 3.0) ** 2)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_mkl_hand_computed_and_paired_per_video():
    real_p = np.array([[0.5, 0.5], [0.9, 0.1]])
    fake_p = np.array([[[0.5, 0.5], [0.25, 0.75]],
                       [[0.9, 0.1], [0.5, 0.5]]])
    eps = 1e-6

    def kl(p, q):
        return sum(pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, q))

    expected = (kl([0.5, 0.5], [0.5, 0.5]) + kl([0.5, 0.5], [0.25, 0.75])
                + kl([0.9, 0.1], [0.9, 0.1]) + kl([0.9, 0.1], [0.5, 0.5])) / 4
    # by hand, without eps: (0 + 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) + 0 + 0.9 ln 1.8 + 0.1 ln 0.2) / 4
    assert expected == pytest.approx((0.5 * math.log(2) + 0.5 * math.log(2 / 3) + 0.9 * math.log(1.8)
                                      + 0.1 * math.log(0.2)) / 4, abs=1e-5)
    # softmax is shift-invariant: log-probabilities plus any per-row constant are valid logits
    assert melception_mkl(np.log(fake_p) + 3.0, np.log(real_p) - 1.0) == pytest.approx(expected, rel=1e-9)

    swapped = fake_p.copy()
    swapped[0, 1], swapped[1, 1] = fake_p[1, 1], fake_p[0, 1]  # trade one sample between the videos
    assert abs(melception_mkl(np.log(swapped), np.log(real_p)) - expected) > 0.05


def test_mkl_zero_for_perfect_samples_and_checks_shapes():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(5, 309))
    fake = np.repeat(real[:, None], 3, axis=1)
    assert melception_mkl(fake, real) == pytest.approx(0.0, abs=1e-3)  # only the +1e-6 inside the log remains
    with pytest.raises(ValueError):
        melception_mkl(fake.reshape(15, 309), real)  # samples must be grouped per video
    with pytest.raises(ValueError):
        melception_mkl(fake[:4], real)


def test_inception_score_uniform_and_confident():
    mean, std = inception_score(np.zeros((100, 7)))
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    # confident, balanced predictions over C classes: exp(entropy of the marginal) = C
    logits = 100.0 * np.eye(5)[np.arange(100) % 5]
    assert inception_score(logits, splits=1)[0] == pytest.approx(5.0, rel=1e-9)
    assert inception_score(logits, splits=10)[0] <= 5.0 + 1e-9
    with pytest.raises(ValueError):
        inception_score(np.zeros((5, 3)), splits=10)


def _mmd_by_loops(x, y, degree=3, coef0=1.0):
    gamma, m = 1.0 / x.shape[1], len(x)
    k = lambda a, b: (gamma * float(a @ b) + coef0) ** degree  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)) + 0.5
    assert polynomial_mmd(x, y) == pytest.approx(_mmd_by_loops(x, y), rel=1e-10)

    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same_mean, same_std = kid(a, b, subsets=20, subset_size=200)
    assert abs(same_mean) < 0.02 and same_std > 0
    shifted_mean, _ = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert shifted_mean > 0.5
    # subset size shrinks to the smaller set; a fixed seed repeats exactly
    assert kid(a[:50], b, subsets=5) == kid(a[:50], b, subsets=5)


def test_bootstrap_resamples_whole_videos():
    V, K = 12, 3
    fake = np.arange(V)[:, None, None] + np.zeros((V, K, 2))  # every sample carries its video id
    real = np.arange(V)[:, None] + np.zeros((V, 2))
    seen = []

    def metric(f, r):
        assert f.shape == (V, K, 2) and r.shape == (V, 2)
        assert (f == r[:, None, :]).all()  # each drawn video came with its own samples
        seen.append(len(np.unique(r[:, 0])))
        return float(r[:, 0].mean())

    point, low, high = bootstrap_ci(fake, real, metric, n_boot=50)
    assert point == pytest.approx((V - 1) / 2) and low <= point <= high
    assert min(seen[1:]) < V  # draws are with replacement


def test_bootstrap_interval_contains_point_and_narrows():
    rng = np.random.default_rng(4)

    def per_video(n):
        real = rng.normal(size=(n, 10)) * 2
        return real[:, None, :] + rng.normal(size=(n, 4, 10)), real

    widths = []
    for n in (20, 320):
        fake, real = per_video(n)
        point, low, high = bootstrap_ci(fake, real, "mkl", n_boot=300, seed=0)
        assert point == pytest.approx(melception_mkl(fake, real))
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]


def test_bootstrap_fid_interval_is_centred_on_the_point():
    # many dimensions for the number of videos, as on VAS (768 clips, 2048-d): duplicated videos in a resample
    # raise FID's bias, so the plain percentile interval lies above the point estimate; the centred one holds it
    rng = np.random.default_rng(5)
    real = rng.normal(size=(100, 48)) * 2
    fake = real[:, None, :] + rng.normal(size=(100, 3, 48))
    point, low, high = bootstrap_ci(fake, real, "fid", n_boot=60, seed=1, method="centered")
    assert point == pytest.approx(fid_per_video(fake, real))
    assert low < point < high
    _, p_low, p_high = bootstrap_ci(fake, real, "fid", n_boot=60, seed=1, method="percentile")
    assert p_low > point
    assert p_high - p_low == pytest.approx(high - low)
    _, l_low, l_high = bootstrap_ci(fake, real, "fid", n_boot=60, seed=1)  # FID's default: log-centered
    assert l_low < point < l_high


def test_seed_spread():
    assert seed_spread([25.0, 27.0, 29.0]) == pytest.approx((27.0, 2.0))
    mean, std = seed_spread([6.1])
    assert mean == 6.1 and math.isnan(std)
    with pytest.raises(ValueError):
        seed_spread([])


def test_mean_over_seeds_scores_each_seed_with_its_own_samples():
    rng = np.random.default_rng(0)
    real = rng.dirichlet(np.ones(5), size=6)
    fake = rng.dirichlet(np.ones(5), size=(6, 3, 2))  # 6 videos, 3 seeds, 2 samples each
    # log-probabilities as logits: softmax gives the probabilities back
    per_seed = [melception_mkl(np.log(fake[:, r]), np.log(real)) for r in range(3)]
    assert mean_over_seeds("mkl")(np.log(fake), np.log(real)) == pytest.approx(np.mean(per_seed))
    point, low, high = bootstrap_ci(np.log(fake), np.log(real), mean_over_seeds("mkl"), n_boot=50, seed=0)
    assert point == pytest.approx(np.mean(per_seed)) and low <= point <= high


# ----------------------------------------------------------------------------------------------------------------
# exact FID without sqrtm, FID / MKL on video weights, paired bootstrap


def _scipy_fid(fake, real):
    """The reference: covariances and scipy's sqrtm (frechet_distance)."""
    return frechet_distance(*gaussian_stats(fake), *gaussian_stats(real))


@pytest.mark.parametrize("n_fake, n_real, dim", [(500, 200, 32),    # well-conditioned: more vectors than dims
                                                 (300, 100, 128),   # fewer real vectors than dims
                                                 (400, 40, 64)])    # rank-deficient as in the brief
def test_fid_eigenvalue_path_matches_scipy_sqrtm(n_fake, n_real, dim, caplog):
    rng = np.random.default_rng(dim)
    real = rng.normal(size=(n_real, dim)) * 2 + 1
    fake = rng.normal(size=(n_fake, dim)) @ rng.normal(size=(dim, dim)) * 0.3 + 1.2
    with caplog.at_level(logging.WARNING, logger="i2a.evaluation.metrics"):
        expected = _scipy_fid(fake, real)
    # scipy's sqrtm needed no eps offset even where S1 S2 is singular: the plain scipy FID is the reference
    assert "singular" not in caplog.text
    assert expected > 10
    assert melception_fid(fake, real) == pytest.approx(expected, rel=1e-6)
    assert melception_fid(real, fake) == pytest.approx(expected, rel=1e-6)  # tr sqrt(S1 S2) = tr sqrt(S2 S1)


def _per_video(rng, videos, samples, dim):
    real = rng.normal(size=(videos, dim)) + 3.0  # a large common mean, as features after a ReLU
    return 0.8 * real[:, None] + rng.normal(size=(videos, samples, dim)) + 3.5, real


@pytest.mark.parametrize("dim", [8, 40])  # fewer dimensions than drawn videos, and more
def test_video_fid_weights_equal_duplicated_rows(dim):
    rng = np.random.default_rng(dim)
    V, K = 30, 4
    fake, real = _per_video(rng, V, K, dim)
    scorer = VideoFID(fake, real)
    assert scorer.fid() == pytest.approx(fid_per_video(fake, real), rel=1e-9)
    assert scorer.fid(np.ones(V)) == scorer.fid()
    for _ in range(3):
        idx = rng.integers(0, V, V)
        w = np.bincount(idx, minlength=V)
        assert (w == 0).any() and (w > 1).any()
        duplicated = fake[idx].reshape(-1, dim), real[idx]
        assert scorer.fid(w) == pytest.approx(melception_fid(*duplicated), rel=1e-9)
        assert scorer.fid(w) == pytest.approx(_scipy_fid(*duplicated), rel=1e-6)
    w = np.zeros(V, dtype=int)
    w[[3, 7, 11]] = [2, 1, 3]  # a few videos, repeated
    rows = np.repeat(np.arange(V), w)
    assert scorer.fid(w) == pytest.approx(melception_fid(fake[rows].reshape(-1, dim), real[rows]), rel=1e-9)
    with pytest.raises(ValueError):
        scorer.fid(np.eye(V)[0])  # one real clip: no covariance
    with pytest.raises(ValueError):
        scorer.fid(np.ones(V - 1))


def test_video_mkl_weights_equal_duplicated_rows():
    rng = np.random.default_rng(7)
    fake, real = rng.normal(size=(20, 3, 6)), rng.normal(size=(20, 6))
    scorer = VideoMKL(fake, real)
    assert scorer.mkl() == pytest.approx(melception_mkl(fake, real), rel=1e-12)
    idx = rng.integers(0, 20, 20)
    assert scorer.mkl(np.bincount(idx, minlength=20)) == pytest.approx(melception_mkl(fake[idx], real[idx]), rel=1e-12)


def test_bootstrap_on_weights_matches_resampled_copies():
    # 'fid' / 'mkl' / mean_over_seeds of them score replicates as video counts; a plain callable is called on
    # indexed copies: the same draws must give the same interval
    rng = np.random.default_rng(6)
    V, R, K, D = 40, 2, 3, 24
    real = rng.normal(size=(V, D)) * 2 + 1
    fake = real[:, None, None] + rng.normal(size=(V, R, K, D))
    pairs = [(fake[:, 0], "fid", fid_per_video), (fake[:, 0], "mkl", melception_mkl),
             (fake, mean_over_seeds("fid"), mean_over_seeds(fid_per_video)),
             (fake, mean_over_seeds("mkl"), mean_over_seeds(melception_mkl))]
    for f, fast, plain in pairs:
        for method in ("centered", "percentile"):
            expected = bootstrap_ci(f, real, lambda a, b: plain(a, b), n_boot=25, seed=2, method=method)
            assert bootstrap_ci(f, real, fast, n_boot=25, seed=2, method=method) == pytest.approx(expected, rel=1e-9)
    per_seed = [fid_per_video(fake[:, r], real) for r in range(R)]
    assert bootstrap_ci(fake, real, mean_over_seeds("fid"), n_boot=5)[0] == pytest.approx(np.mean(per_seed), rel=1e-9)


def _two_runs(rng, V=60, R=2, K=3, D=16, shared=1.5):
    """Real (V, D) and two runs (V, R, K, D) sharing a per-video error of scale `shared` (the video's difficulty),
    each with its own sample noise; run b also carries a fixed offset that makes it clearly worse."""
    real = rng.normal(size=(V, D)) * 2
    hard = rng.normal(size=(V, 1, 1, D)) * shared
    a = real[:, None, None] + hard + rng.normal(size=(V, R, K, D)) * 0.5
    offset = rng.normal(size=D)  # not a constant, which softmax would ignore in logits
    b = real[:, None, None] + hard + rng.normal(size=(V, R, K, D)) * 0.5 + offset
    return a, b, real


@pytest.mark.parametrize("metric", ["fid", "mkl"])
def test_paired_bootstrap_of_a_run_with_itself_is_exactly_zero(metric):
    a, _, real = _two_runs(np.random.default_rng(8))
    assert paired_bootstrap(a, a.copy(), real, metric, n_boot=50, seed=0) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(a[:, 0], a[:, 0].copy(), real, metric, n_boot=50, seed=0) == (0.0, 0.0, 0.0)


METRIC_ON_ONE_SEED = {"fid": fid_per_video, "mkl": melception_mkl}


@pytest.mark.parametrize("metric", ["fid", "mkl"])
def test_paired_bootstrap_finds_the_better_run(metric):
    a, b, real = _two_runs(np.random.default_rng(9))
    diff, low, high = paired_bootstrap(a, b, real, metric, n_boot=200, seed=0)
    score = mean_over_seeds(metric)
    assert diff == pytest.approx(score(a, real) - score(b, real), rel=1e-9)
    assert low <= diff <= high < 0  # a is better: its whole interval lies below 0
    assert paired_bootstrap(b, a, real, metric, n_boot=200, seed=0) == pytest.approx((-diff, -high, -low), rel=1e-9)
    # one seed of K samples, (V, K, D): as bootstrap_ci's 'fid' / 'mkl' take it
    diff1, _, high1 = paired_bootstrap(a[:, 0], b[:, 0], real, metric, n_boot=200, seed=0)
    assert diff1 == pytest.approx(METRIC_ON_ONE_SEED[metric](a[:, 0], real) - METRIC_ON_ONE_SEED[metric](b[:, 0], real))
    assert high1 < 0
    with pytest.raises(ValueError):
        paired_bootstrap(a[:10], b, real, metric)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, real, "isc")


def test_paired_interval_is_narrower_than_the_unpaired_one():
    # the runs share per-video structure: drawing the same videos for both cancels it in the difference;
    # drawing them independently (what comparing two separate intervals amounts to) does not
    rng = np.random.default_rng(10)
    a, b, real = _two_runs(rng, V=80, shared=3.0)
    n_boot = 200
    diff, low, high = paired_bootstrap(a, b, real, "fid", n_boot=n_boot, seed=0)
    scorers = [[VideoFID(run[:, r], real) for r in range(run.shape[1])] for run in (a, b)]

    def fid(run, w):
        return np.mean([s.fid(w) for s in scorers[run]])

    draws = np.random.default_rng(1)
    unpaired = []
    for _ in range(n_boot):
        wa, wb = (np.bincount(draws.integers(0, 80, 80), minlength=80) for _ in range(2))
        unpaired.append(fid(0, wa) - fid(1, wb))
    u_low, u_high = np.quantile(unpaired, [0.025, 0.975])
    assert diff == pytest.approx(fid(0, np.ones(80)) - fid(1, np.ones(80)), rel=1e-9)
    assert high - low < 0.75 * (u_high - u_low)  # ~0.35-0.5 over other data seeds


def _demo_sized_control(seed=0, D=16):
    """24 videos of 4 classes (the demo's validation split), 2 seeds x 4 samples per video drawn from any class:
    a control whose samples ignore their video. Resampled FIDs then lie far above the point estimate."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, D)) * 3
    real = centres[np.repeat(np.arange(4), 6)] + rng.normal(size=(24, D))
    fake = centres[rng.integers(0, 4, (24, 2, 4))] + rng.normal(size=(24, 2, 4, D))
    return fake, real


def test_fid_interval_cannot_leave_the_metric_range():
    # the demo's table showed resnet18-s5+shuffled FID 28.66 [-0.31, 90.83]: the 'centered' interval subtracted
    # the replicates' upward shift from a skewed distribution and crossed 0, where no FID can be
    fake, real = _demo_sized_control()
    _, centred_low, _ = bootstrap_ci(fake, real, mean_over_seeds("fid"), n_boot=200, seed=0, method="centered")
    assert centred_low < 0  # the failure, as the demo met it
    fid = score_with_uncertainty(fake, real, "fid", n_boot=200, seed=0)
    assert 0 < fid["low"] < fid["value"] < fid["high"]
    assert bootstrap_ci(fake, real, mean_over_seeds("fid"), n_boot=200, seed=0)[1:] == \
        pytest.approx((fid["low"], fid["high"]))  # the table's interval is bootstrap_ci's default for FID
    # on the log scale: the replicates' spread around their geometric mean, placed on the point estimate
    scorer = [VideoFID(fake[:, r], real) for r in range(2)]
    draws = np.random.default_rng(0)
    weights = [np.bincount(draws.integers(0, 24, 24), minlength=24) for _ in range(200)]
    logs = np.log([np.mean([s.fid(w) for s in scorer]) for w in weights])
    expected = fid["value"] * np.exp(np.quantile(logs, [0.025, 0.975]) - logs.mean())
    assert (fid["low"], fid["high"]) == pytest.approx(tuple(expected), rel=1e-9)
