"""Golden test of the whole audio chain: our preprocess_clip + mel_spectrogram against the authors' mels.

The remaining difference is the AAC encoder, not the chain: ffmpeg's encoder is chaotic (bit reservoir and
rate loop), so a last-bit float difference between ffmpeg builds changes every later frame. With the static
ffmpeg 4.2.2 the project pins (imageio-ffmpeg 0.4.9) we measured per clip 0.0000 (two clips bit-exact) to
0.0106, mean 0.0037; ffmpeg 9 gave 0.0002..0.0138, mean 0.0063 (see media.py).
"""
import logging
from concurrent.futures import ThreadPoolExecutor

import librosa
import numpy as np
import pytest
from conftest import shared_path

from i2a.data.media import preprocess_clip, read_wav
from i2a.data.mel import MelSpec, center_crop, fit_length, from_model_range, mel_spectrogram, to_model_range

log = logging.getLogger(__name__)

CLIPS = ["baby/video_01951", "cough/video_00331", "dog/video_02677", "dog/video_02754", "drum/video_02480",
         "drum/video_02542", "fireworks/video_02997", "fireworks/video_03051", "gun/video_00819",
         "hammer/video_00323"]
PER_CLIP_LIMIT = 0.03  # design.md §2's bound for every clip
PER_CLIP_MEASURED = 0.015  # worst measured 0.0106 (hammer/video_00323)
MEAN_LIMIT = 0.005  # measured 0.0037


def test_full_chain_matches_authors_mels(tmp_path):
    root = shared_path("data", "vas-samples")

    def one(clip):
        cls, name = clip.split("/")
        wav_path = tmp_path / f"{cls}_{name}.wav"
        info = preprocess_clip(root / "videos" / cls / f"{name}.mp4", None, wav_path)
        wav, rate = read_wav(wav_path)
        assert rate == 22050 and wav.shape == (220500,) and info["n_samples"] == 220500
        ours = mel_spectrogram(wav)
        golden = np.load(root / "features" / cls / "melspec_10s_22050hz" / f"{name}_mel.npy")
        assert ours.shape == golden.shape == (80, 860) and ours.dtype == np.float32
        return float(np.abs(ours - golden).mean()), float((ours - golden).mean())

    with ThreadPoolExecutor(2) as pool:
        diffs = dict(zip(CLIPS, pool.map(one, CLIPS)))
    report = "\n".join(f"{c:24s} mean|d| {m:.5f}  bias {b:+.5f}" for c, (m, b) in diffs.items())
    mean = np.mean([m for m, _ in diffs.values()])
    print(f"\n{report}\nmean over clips {mean:.5f}")
    assert all(m < PER_CLIP_LIMIT for m, _ in diffs.values()), report
    assert all(m < PER_CLIP_MEASURED for m, _ in diffs.values()), report
    assert mean <= MEAN_LIMIT, report
    # no level offset: the wrong AAC coder (ffmpeg >= 7's twoloop) shows up as a +0.004..0.011 bias
    assert all(abs(b) < 0.002 for _, b in diffs.values()), report


def test_mel_matches_independent_numpy_stft():
    """Reflect-padded centred STFT, periodic Hann, Slaney mels, design.md §2's dB mapping; 862 -> 860 frames."""
    rng = np.random.default_rng(0)
    t = np.arange(220500) / 22050
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.5) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
    spec = MelSpec()
    padded = np.pad(wav.astype(np.float64), 512, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 1024)[::256]
    assert len(frames) == 862
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    mag = np.abs(np.fft.rfft(frames * window, axis=1)).T
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=125, fmax=7600, norm="slaney")
    ref = np.clip((20 * np.log10(np.maximum(basis @ mag, 1e-5)) - 20 + 100) / 100, 0, 1)[:, :860]
    ours = mel_spectrogram(wav, spec)
    assert ours.shape == (80, 860)
    assert np.abs(ours - ref).max() < 1e-4
    # constant (zero) padding, librosa >= 0.10's default, would differ at the edges
    zero_padded = np.abs(librosa.stft(wav, n_fft=1024, hop_length=256, pad_mode="constant"))
    assert np.abs(np.abs(librosa.stft(wav, n_fft=1024, hop_length=256, pad_mode="reflect")) - zero_padded)[:, 0].max() > 1e-3


def test_crop_range_and_length_helpers():
    mel = np.arange(80 * 860, dtype=np.float32).reshape(80, 860)
    crop = center_crop(mel, 848)
    assert crop.shape == (80, 848) and crop[0, 0] == mel[0, 6] and crop[0, -1] == mel[0, 853]
    x = np.array([0.0, 0.25, 1.0])
    assert np.allclose(to_model_range(x), [-1, -0.5, 1]) and np.allclose(from_model_range(to_model_range(x)), x)
    assert fit_length(np.ones(5), 8).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert fit_length(np.arange(10), 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="too short"):
        mel_spectrogram(np.zeros(22050, np.float32))
