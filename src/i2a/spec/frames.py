"""Which frames a GPT reads (design.md §3): numpy only, so the config check, feature extraction, the authors'
features, training, sampling and `i2a generate` all choose them here.

A clip's per-frame features are tiled (or trimmed) to `total` frames and centre-cropped to `crop` (SpecVQGAN's
padding: 215 -> 212 at 21.5 fps for 10 s), and the transformer reads S of those `crop` frames, evenly spaced as
SpecVQGAN's `ResampleFrames` picks them.
"""
from __future__ import annotations

import numpy as np


def check_sample_size(S: int, crop: int) -> None:
    """S, the frames a transformer reads, must be 1..crop: the one place the bound is stated."""
    if not 1 <= S <= crop:
        raise ValueError(f"S = {S} feature frames do not fit: feat_sample_size must be in [1, {crop}] (the feature "
                         "crop length, video.feat_crop)")


def pad_and_crop_indices(n_frames: int, total: int = 215, crop: int = 212) -> np.ndarray:
    """Which source frame each output row takes: tile (or trim) to `total`, then centre crop to `crop`."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if not 1 <= crop <= total:
        raise ValueError(f"crop ({crop}) must be in 1..total ({total})")
    reps = 1 + total // n_frames
    idx = np.tile(np.arange(n_frames), reps)[:total]
    start = (total - crop) // 2  # 215 -> 212 keeps frames 1..212
    return idx[start:start + crop]


def pad_and_crop(feats: np.ndarray, total: int = 215, crop: int = 212) -> np.ndarray:
    """SpecVQGAN's feature padding: `tile(feats, 1 + total // T)[:total]`, then the centre `crop` frames."""
    return feats[pad_and_crop_indices(len(feats), total, crop)]


def sample_frame_indices(crop: int, S: int) -> np.ndarray:
    """Pick S (the config's feat_sample_size) of `crop` feature frames the way SpecVQGAN's `ResampleFrames` does.

    Evenly spaced, then shifted by `crop // (S + 1)` so that S=1 takes the middle frame:
    (212, 1) -> [106]; (212, 5) -> [35, 77, 119, 162, 204]; (212, 212) -> all.
    """
    check_sample_size(S, crop)
    idx = np.linspace(0, crop, S, endpoint=False, dtype=np.int32)
    return (idx + crop // (S + 1)).astype(np.int64)


def condition_rows(n_frames: int, total: int, crop: int, S: int) -> np.ndarray:
    """Which of a clip's n frames each of the transformer's S condition positions shows: the padding above, then
    the choice of S of the crop (what `i2a generate` encodes for a picture or a video it was given)."""
    return pad_and_crop_indices(n_frames, total, crop)[sample_frame_indices(crop, S)]
