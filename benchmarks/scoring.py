"""FID cost: the old way (covariances + scipy sqrtm, torch-fidelity's) vs the exact eigenvalue path, and the
bootstrap over videos on precomputed Grams, on study-sized random features in the same run.

    .venv/bin/python benchmarks/scoring.py                        # 768 real vs 768 x 10 generated, 2048-d (~1 min)
    .venv/bin/python benchmarks/scoring.py --samples 100 --boot 20

The features are seeded random stand-ins for Melception '2048' outputs (non-negative, as after its ReLU, and
correlated across dimensions); the cost does not depend on their values. The last line is
`fid_speedup: <ratio>` (wall time of one FID the old way / the new way).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from i2a.evaluation.metrics import VideoFID, fid_per_video, frechet_distance, gaussian_stats


def features(videos: int, samples: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fake (V, K, D), real (V, D)): each video's samples share its real clip's direction plus their own noise."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(64, dim)) / 8.0  # a 64-d latent spread over all dimensions: correlated features
    real = np.maximum(rng.normal(size=(videos, 64)) @ mix + rng.normal(scale=0.5, size=(videos, dim)) + 0.5, 0)
    fake = np.maximum(0.8 * real[:, None] + rng.normal(size=(videos, samples, 64)) @ mix
                      + rng.normal(scale=0.5, size=(videos, samples, dim)) + 0.2, 0)
    return fake, real


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=768)
    parser.add_argument("--samples", type=int, default=10, help="generated samples per video")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--boot", type=int, default=100, help="bootstrap replicates to time on the new path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    fake, real = features(args.videos, args.samples, args.dim, args.seed)
    print(f"features: {args.videos} real vs {args.videos * args.samples} generated, {args.dim}-d")

    def old_way(fake, real):
        return frechet_distance(*gaussian_stats(fake.reshape(-1, fake.shape[-1])), *gaussian_stats(real))

    fid_old, t_old = timed(old_way, fake, real)
    fid_new, t_new = timed(fid_per_video, fake, real)
    print(f"FID scipy sqrtm (covariances + frechet_distance): {fid_old:.10g} in {t_old:.2f} s")
    print(f"FID eigenvalue path (melception_fid):             {fid_new:.10g} in {t_new:.2f} s")
    print(f"relative difference: {abs(fid_new - fid_old) / abs(fid_old):.2e}")

    scorer, t_pre = timed(VideoFID, fake, real)
    rng = np.random.default_rng(args.seed)
    counts = [np.bincount(rng.integers(0, args.videos, args.videos), minlength=args.videos) for _ in range(args.boot)]
    fid_all, t_point = timed(scorer.fid)
    _, t_boot = timed(lambda: [scorer.fid(w) for w in counts])
    print(f"bootstrap: Grams {t_pre:.2f} s once, point estimate {fid_all:.10g} in {t_point:.2f} s, "
          f"{args.boot} replicates in {t_boot:.2f} s ({1000 * t_boot / args.boot:.0f} ms each); "
          f"the old way would take ~{args.boot * t_old:.0f} s")
    print(f"fid_speedup: {t_old / t_new:.1f}")


if __name__ == "__main__":
    main()
