"""What a GPT is conditioned on (design.md §3): a video's S feature frames, or seeded noise for the no-feats
baseline, standardised with the training split's statistics when the run says `feature_norm: standard`.
Which frames are read is decided in `i2a.spec.frames`."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from i2a.spec.frames import sample_frame_indices


def random_features(n: int, feat_dim: int, S: int, seed: int) -> torch.Tensor:
    """The "no feats" condition: U[0, 1) noise of the features' shape (n, D, S), as SpecVQGAN's
    `replace_feats_with_random` draws it (`np.random.rand`); here seeded so a run can be repeated."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n, feat_dim, S), dtype=np.float32))


def condition(features: str, feats: np.ndarray | None, seeds: np.ndarray, S: int, feat_dim: int) -> torch.Tensor:
    """(rows, D, S) conditioning for one batch: S of each video's (crop, D) frames, or seeded noise (one draw per
    seed) for the no-feats baseline."""
    if features == "none":
        return torch.cat([random_features(1, feat_dim, S, int(s)) for s in seeds])
    idx = sample_frame_indices(feats.shape[1], S)
    return torch.from_numpy(np.ascontiguousarray(feats[:, idx].transpose(0, 2, 1), dtype=np.float32))


def check_feature_stats(feature_norm: str, stats: Mapping[str, object] | None, what: str) -> None:
    """Statistics exist exactly when the features are standardised: the rule for training and sampling alike."""
    if (stats is not None) != (feature_norm == "standard"):
        raise ValueError(f"{what}: feature_norm {feature_norm!r} needs feature statistics exactly when it is "
                         f"'standard', and {'there are some' if stats is not None else 'there are none'}")


def standardize(feats: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, D, S) features standardised per dimension with (D,) statistics: in training and in sampling alike."""
    return (feats - mean[:, None]) / std[:, None]
