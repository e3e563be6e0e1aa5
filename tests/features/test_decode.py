"""Feature extraction's decoder: frames resized and cropped to the model's input as they are decoded give exactly the
pixels of resizing the whole decoded clip, and a clip in flight is held at the model's size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from i2a.data.media import read_video_frames
from i2a.features.extract import _clip_crops, frame_reader, frame_resizer
from i2a.spec.backbones import CLIP_PREPROCESS, VIDEO_FEATURES_CNN
from media_files import toy_clip, write_streams


@pytest.mark.parametrize("transform", [VIDEO_FEATURES_CNN, CLIP_PREPROCESS, VIDEO_FEATURES_CNN.scaled(64)],
                         ids=["resnet", "clip-bicubic", "demo-size"])
def test_frames_resized_while_decoding_equal_the_whole_clip_resized(tmp_path, transform):
    frames, audio = toy_clip(1.0, seed=3)
    big = np.repeat(np.repeat(frames, 8, axis=1), 8, axis=2)  # 512 x 640: larger than the model's input
    path = tmp_path / "clip.mp4"
    write_streams(path, big, audio)
    # the clip decoded whole (frames over 4x the model's resize are scaled down by the decoder either way)
    whole = read_video_frames(path, fps=21.5, max_short_side=4 * transform.resize)
    per_frame = frame_reader(transform, fps=21.5)(path)
    assert per_frame.shape == (len(whole), transform.crop, transform.crop, 3) and per_frame.dtype == np.uint8
    expected = transform.resize_crop(torch.from_numpy(whole))  # (T, 3, crop, crop)
    assert torch.equal(torch.from_numpy(per_frame).permute(0, 3, 1, 2), expected)
    assert per_frame.nbytes < whole.nbytes / 2
    # the extraction's crops (only the frames the 215-pad / 212-crop uses) are the same either way
    crops, inverse = _clip_crops(path, transform, 30, 24, frame_reader(transform, fps=21.5), cropped=True)
    old_crops, old_inverse = _clip_crops(path, transform, 30, 24,
                                         lambda p: read_video_frames(p, fps=21.5, max_short_side=4 * transform.resize))
    assert torch.equal(crops, old_crops) and np.array_equal(inverse, old_inverse)


def test_frame_resizer_keeps_no_view_of_the_full_frame():
    frame = np.random.default_rng(0).integers(0, 255, (360, 480, 3), dtype=np.uint8)
    out = frame_resizer(VIDEO_FEATURES_CNN)(frame)
    assert out.shape == (224, 224, 3) and out.flags["C_CONTIGUOUS"] and out.base is None
