"""Which frames a GPT reads (design.md §3): SpecVQGAN's padding and crop, the choice of S, and its bound."""
import numpy as np
import pytest

from i2a.spec.frames import check_sample_size, condition_rows, pad_and_crop, pad_and_crop_indices, sample_frame_indices


def test_pad_and_crop_small_cases():
    feats = np.arange(3)[:, None] * np.ones((1, 2))
    # tile 3 frames to 7: 0 1 2 0 1 2 0, then the centre 5: drop one frame on each side
    assert pad_and_crop(feats, total=7, crop=5)[:, 0].tolist() == [1, 2, 0, 1, 2]
    assert pad_and_crop_indices(1, total=4, crop=2).tolist() == [0, 0]
    assert pad_and_crop_indices(9, total=7, crop=5).tolist() == [1, 2, 3, 4, 5]  # trimmed, then cropped
    assert pad_and_crop_indices(7, total=7, crop=4).tolist() == [1, 2, 3, 4]  # (7 - 4) // 2 = 1 dropped first


def test_pad_and_crop_vas_sizes():
    # a 10 s clip at 21.5 fps: frames 1..212 of 215
    assert np.array_equal(pad_and_crop_indices(215), np.arange(1, 213))
    assert np.array_equal(pad_and_crop_indices(300), np.arange(1, 213))
    # a 100-frame clip: tiled 0..99, 0..99, 0..14 -> frames 1..99, 0..99, 0..12
    expected = np.concatenate([np.arange(1, 100), np.arange(100), np.arange(13)])
    assert np.array_equal(pad_and_crop_indices(100), expected)
    feats = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    assert np.array_equal(pad_and_crop(feats), feats[expected])
    with pytest.raises(ValueError):
        pad_and_crop_indices(0)
    with pytest.raises(ValueError):
        pad_and_crop_indices(10, total=5, crop=6)


def test_sample_frame_indices():
    assert sample_frame_indices(212, 1).tolist() == [106]
    assert sample_frame_indices(212, 5).tolist() == [35, 77, 119, 162, 204]
    assert sample_frame_indices(212, 212).tolist() == list(range(212))
    assert sample_frame_indices(40, 5).tolist() == [6, 14, 22, 30, 38]
    with pytest.raises(ValueError):
        sample_frame_indices(40, 41)


def test_condition_rows_follow_the_workflows_feature_padding_and_frame_choice():
    # a 2 s clip at 21.5 fps: 43 frames, crop 40, S = 5, as the demo's features and runs
    rows = condition_rows(43, 43, 40, 5)
    assert list(rows) == list(pad_and_crop_indices(43, 43, 40)[sample_frame_indices(40, 5)])
    # the study's S = 1 takes the middle of the 212 frames of a 10 s clip
    assert list(condition_rows(215, 215, 212, 1)) == [107]
    # a short clip is tiled, as the chain loops it; an image (one frame) shows that frame at every position
    assert set(condition_rows(3, 43, 40, 5)) <= {0, 1, 2}
    assert list(condition_rows(1, 215, 212, 212)) == [0] * 212


def test_s_is_bounded_by_the_crop_in_one_place():
    """The config check, the frame choice and i2a generate's model check all use check_sample_size."""
    check_sample_size(212, 212)
    for S in (0, 213):
        with pytest.raises(ValueError, match=r"feat_sample_size must be in \[1, 212\]"):
            check_sample_size(S, 212)
    with pytest.raises(ValueError, match=r"must be in \[1, 40\]"):
        sample_frame_indices(40, 41)
