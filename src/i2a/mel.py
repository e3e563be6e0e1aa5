"""SpecVQGAN's mel spectrogram (SPEC section 2): the model's audio representation."""
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
    stft = librosa.stft(np.asarray(wav, dtype=np.float32), n_fft=spec.n_fft, hop_length=spec.hop_length,
                        win_length=spec.n_fft, window="hann", center=True, pad_mode="reflect")
    mel = _mel_basis(spec) @ np.abs(stft)
    db = 20.0 * np.log10(np.maximum(mel, 1e-5)) - 20.0
    out = np.clip((db + 100.0) / 100.0, 0.0, 1.0)[:, : spec.keep_frames]
    if out.shape[1] < spec.keep_frames:
        raise ValueError(f"waveform too short: {out.shape[1]} mel frames < keep_frames={spec.keep_frames}")
    return out.astype(np.float32)


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
