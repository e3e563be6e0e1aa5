"""Frame features of clips: padding/cropping, batching, files (design.md §3)."""
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from conftest import REPO, shared_path
from i2a.data.media import read_video_frames
from i2a.features.backbones import build_backbone
from i2a.features.extract import extract_clip_features, extract_features
from i2a.spec.backbones import weights_file
from i2a.spec.frames import pad_and_crop, pad_and_crop_indices


def write_video(path: Path, n_frames: int, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """A small H.264 clip at 21.5 fps: a bright square moving over noise, so frames differ."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(43, 2))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(n_frames):
            img = (rng.integers(0, 60, (h, w, 3))).astype(np.uint8)
            x = (3 * t) % (w - 16)
            img[16:32, x:x + 16] = (250, 200 - 5 * t % 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_backbone("resnet18", "none", image_size=64)




def test_clip_features_do_not_depend_on_batching(resnet18):
    frames = np.random.default_rng(1).integers(0, 256, (7, 40, 60, 3)).astype(np.uint8)
    a = extract_clip_features(resnet18, frames, batch_size=3)
    b = extract_clip_features(resnet18, frames, batch_size=64)
    assert a.shape == (7, 512) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # = the backbone's own forward pass (the fast path folds BatchNorm and uses channels_last)
    with torch.inference_mode():
        plain = resnet18.model(resnet18.transform(frames)).numpy()
    np.testing.assert_allclose(a, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).mean())
    # each row is its own frame's feature
    np.testing.assert_allclose(extract_clip_features(resnet18, frames[4:5]), a[4:5], rtol=1e-4, atol=1e-5)


def test_extract_features_of_small_videos(tmp_path, resnet18):
    short = write_video(tmp_path / "short.mp4", n_frames=12, seed=1)
    long = write_video(tmp_path / "long.mp4", n_frames=30, seed=2)
    out = tmp_path / "feats" / "shard0.npy"
    got = extract_features(resnet18, [short, long, short], out, total=20, crop=16, batch_size=8, num_workers=2,
                           fps=None)
    assert got.shape == (3, 16, 512) and got.dtype == np.float32
    assert np.array_equal(np.load(out), got)
    # = per-frame features of all decoded frames, then SpecVQGAN's tile/trim + centre crop
    for row, path in zip(got, [short, long, short]):
        frames = read_video_frames(path)
        np.testing.assert_allclose(row, pad_and_crop(extract_clip_features(resnet18, frames), 20, 16),
                                   rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0, 0], got[0, 1])  # moving content: frames differ
    # deterministic, and independent of the decode threads and the stored dtype's rounding
    again = extract_features(resnet18, [short, long, short], tmp_path / "again.npy", total=20, crop=16,
                             batch_size=5, num_workers=0, dtype="float16", fps=None)
    assert again.dtype == np.float16
    np.testing.assert_allclose(again.astype(np.float32), got, rtol=2e-3, atol=2e-3)
    third = extract_features(resnet18, [short, long, short], tmp_path / "third.npy", total=20, crop=16,
                             batch_size=8, num_workers=1, fps=None)
    assert np.array_equal(third, got)


def test_a_broken_clip_gets_a_nan_row_and_its_reason(tmp_path, resnet18):
    """One bad clip never fails its shard (issue 12; the shard's index and training: tests/workflow/test_faults.py)."""
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    good = write_video(tmp_path / "good.mp4", n_frames=4)
    failures = {}
    out = extract_features(resnet18, [good, bad], tmp_path / "out.npy", total=8, crop=6, num_workers=1,
                           failures=failures)
    assert out.shape == (2, 6, resnet18.feat_dim) and np.isfinite(out[0]).all() and np.isnan(out[1]).all()
    assert list(failures) == [1] and failures[1]


def test_golden_resnet50_features_match_the_authors(tmp_path):
    """ImageNet V1 ResNet50 on the 10 sample clips vs the authors' .pkl (215, 2048): cosine >= 0.99 per frame."""
    videos = shared_path("data", "vas-samples", "videos")
    weights = REPO / weights_file("resnet50", "imagenet_v1")
    if not weights.is_file():
        pytest.skip(f"ImageNet V1 ResNet50 weights not present at {weights} "
                    f"(fetch with: snakemake --cores 1 {weights_file('resnet50', 'imagenet_v1')})")
    from i2a.data.media import preprocess_clip

    clips = sorted(videos.glob("*/*.mp4"))
    assert len(clips) == 10
    cut = []
    for clip in clips:  # the authors' chain: loop and cut to 10 s; frames are then taken at 21.5 fps
        dst = tmp_path / clip.parent.name / clip.name
        preprocess_clip(clip, dst, dst.with_suffix(".wav"))
        cut.append(dst)
    bb = build_backbone("resnet50", "imagenet_v1", cache_dir=weights.parent)
    ours = extract_features(bb, cut, tmp_path / "ours.npy", total=215, crop=215, num_workers=1, fps=21.5)
    for clip, feats in zip(clips, ours):
        pkl = videos.parent / "features" / clip.parent.name / "feature_resnet50_dim2048_21.5fps" / f"{clip.stem}.pkl"
        with open(pkl, "rb") as fh:
            ref = np.asarray(pickle.load(fh), dtype=np.float32)
        assert ref.shape == feats.shape == (215, 2048)
        cos = (ref * feats).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(feats, axis=1))
        assert cos.min() >= 0.99, f"{clip}: per-frame cosine min {cos.min():.4f}, mean {cos.mean():.4f}"


def test_feature_statistics_and_clip_means_in_one_chunked_pass(tmp_path):
    """Statistics over the finite clips and every clip's mean over frames, read 256 clips at a time from memory
    maps, equal the same sums over the whole arrays; a failed extraction (NaN) stays out of the statistics."""
    from i2a.features.probe import clip_means, feature_statistics

    rng = np.random.default_rng(0)
    arrays = [rng.normal(3.0, 2.0, (300, 4, 6)).astype(np.float16), rng.normal(size=(5, 4, 6)).astype(np.float16)]
    arrays[0][7] = np.nan
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.npy")
        np.save(paths[-1], a)
    maps = [np.load(p, mmap_mode="r") for p in paths]
    mean, std, means = feature_statistics(maps)
    whole = np.concatenate(arrays).astype(np.float64)
    finite = whole[np.isfinite(whole).all(axis=(1, 2))].reshape(-1, 6)
    np.testing.assert_allclose(mean, finite.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, finite.std(0), rtol=1e-9)
    expected = np.concatenate([a.astype(np.float64).mean(axis=1) for a in arrays])
    np.testing.assert_array_equal(means, expected)  # NaN for the failed clip, in the same place
    np.testing.assert_array_equal(clip_means(maps), expected)
