"""SpecVQGAN's mel spectrogram (design.md §2): the model's audio representation.

Matches `feature_extraction/extract_mel_spectrogram.py` of SpecVQGAN to float32 rounding: max abs diff
1.6e-7 from the authors' mel of a clip whose wav an ffmpeg 4.2 run of their chain reproduced bit for bit.
|STFT| with librosa's centred framing and *reflect* padding (the default of the librosa 0.8.0 they pinned;
librosa >= 0.10 pads with zeros, which moves the first two frames by up to 0.06), Slaney mel basis,
20*log10 - 20 dB, +100, /100, clipped to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np


@dataclass(frozen=True)
class MelSpec:
    """Parameters of the mel transform; the defaults are the published 10 s VAS setting."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 125.0
    fmax: float = 7600.0
    keep_frames: int = 860  # frames kept after the STFT (862 for 10 s)
    crop_frames: int = 848  # the model's centre crop; a multiple of 16 (the codebook's downsampling)


@lru_cache(maxsize=8)
def _mel_basis(spec: MelSpec) -> np.ndarray:
    return librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax)


def mel_spectrogram(wav: np.ndarray, spec: MelSpec = MelSpec()) -> np.ndarray:
    """(n_mels, keep_frames) float32 in [0, 1] from a mono waveform at spec.sample_rate."""
    # pad_mode="reflect": librosa 0.8's default, which the authors' mels were made with
    stft = librosa.stft(np.asarray(wav, dtype=np.float32), n_fft=spec.n_fft, hop_length=spec.hop_length,
                        win_length=spec.n_fft, window="hann", center=True, pad_mode="reflect")
    mel = _mel_basis(spec) @ np.abs(stft)
    db = 20.0 * np.log10(np.maximum(mel, 1e-5)) - 20.0
    out = np.clip((db + 100.0) / 100.0, 0.0, 1.0)[:, : spec.keep_frames]
    if out.shape[1] < spec.keep_frames:
        raise ValueError(f"waveform too short: {out.shape[1]} mel frames < keep_frames={spec.keep_frames}")
    return out.astype(np.float32)


def fit_length(wav: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad or trim to `length` samples, as their mel script did when loading a wav."""
    wav = np.asarray(wav)
    if len(wav) >= length:
        return wav[:length]
    return np.pad(wav, (0, length - len(wav)))


def center_crop(mel: np.ndarray, crop_frames: int) -> np.ndarray:
    """Centre crop along the last (time) axis: columns 6..853 for 860 -> 848."""
    total = mel.shape[-1]
    if total < crop_frames:
        raise ValueError(f"cannot crop {total} frames to {crop_frames}")
    start = (total - crop_frames) // 2
    return mel[..., start : start + crop_frames]


def to_model_range(mel01):
    """[0, 1] -> [-1, 1], the codebook's input range."""
    return mel01 * 2.0 - 1.0


def from_model_range(x):
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0) / 2.0
