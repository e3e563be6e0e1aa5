"""A toy audio-visual dataset for the laptop demo, where what is seen decides what is heard.

Each class is a coloured shape on a dark background and a tone of its own pitch (a few harmonics plus a
little noise, humming quietly between events). In every clip the shape flashes at a few random times, and each flash is a sound onset
with the same decay, so the class is separable both in the mel spectrogram and in the average colour, and
timing is visible in both. Position, size, pitch, loudness and event times are jittered per clip.

Clips are real mp4 files (H.264 + AAC, through PyAV) like the VAS sources, so the demo runs the same
preprocessing chain as the real data. Everything is drawn from numpy's generator seeded by
(seed, class, clip): the same seed gives the same frames and samples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from i2a.infra.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyClass:
    name: str
    rgb: tuple[int, int, int]
    shape: str
    pitch_hz: float  # fundamental; class_set() spreads the classes in use over the mel range


TOY_CLASSES = (
    ToyClass("red_circle", (230, 40, 40), "circle", 150.0),
    ToyClass("green_square", (40, 220, 60), "square", 240.0),
    ToyClass("blue_diamond", (50, 80, 240), "diamond", 384.0),
    ToyClass("yellow_bar", (235, 220, 40), "hbar", 614.0),
    ToyClass("magenta_ring", (220, 50, 220), "ring", 983.0),
    ToyClass("cyan_cross", (40, 220, 220), "cross", 1573.0),
    ToyClass("pink_vbar", (250, 120, 170), "vbar", 2516.0),
    ToyClass("white_triangle", (235, 235, 235), "triangle", 4026.0),
)

DECAY_S = 0.12  # flash and sound decay time constant
BASE_LEVEL = 0.7  # the shape's brightness between flashes, so the class is visible in every frame


def _shape_mask(shape: str, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = (y - cy) / r, (x - cx) / r
    if shape == "circle":
        m = dy**2 + dx**2 <= 1
    elif shape == "square":
        m = (np.abs(dy) <= 0.85) & (np.abs(dx) <= 0.85)
    elif shape == "diamond":
        m = np.abs(dy) + np.abs(dx) <= 1.1
    elif shape == "hbar":
        m = (np.abs(dy) <= 0.5) & (np.abs(dx) <= 1.4)
    elif shape == "ring":
        d = dy**2 + dx**2
        m = (d <= 1.0) & (d >= 0.3)
    elif shape == "cross":
        m = ((np.abs(dy) <= 0.4) & (np.abs(dx) <= 1.1)) | ((np.abs(dx) <= 0.4) & (np.abs(dy) <= 1.1))
    elif shape == "vbar":
        m = (np.abs(dx) <= 0.5) & (np.abs(dy) <= 1.4)
    elif shape == "triangle":
        m = (dy <= 0.8) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) * 0.6)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.astype(np.float32)


def _envelope(t: np.ndarray, onsets: np.ndarray, decay: float) -> np.ndarray:
    """Sum of exponential decays starting at each onset (0 before it)."""
    dt = t[None, :] - onsets[:, None]
    return np.where(dt >= 0, np.exp(-np.clip(dt, 0, None) / decay), 0.0).sum(0)


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, centre_hz: float, bins: float = 4.0) -> np.ndarray:
    """Unit-RMS noise whose spectrum is a Gaussian around centre_hz on the mel scale, `bins` of the 80 mel bins
    (125-7600 Hz) wide (one std): the same height in the spectrogram for every class, and wide enough at low
    pitches that its loudness is steady over a video frame."""
    import librosa

    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    mel = librosa.hz_to_mel(np.fft.rfftfreq(n, 1 / sample_rate))
    step = (librosa.hz_to_mel(7600.0) - librosa.hz_to_mel(125.0)) / 80
    distance = (mel - librosa.hz_to_mel(centre_hz)) / (bins * step)
    shaped = np.fft.irfft(spectrum * np.exp(-0.5 * distance**2), n)
    return shaped / max(float(np.sqrt(np.mean(shaped**2))), 1e-9)


def render_clip(cls: ToyClass, rng: np.random.Generator, seconds: float, fps: float, sample_rate: int,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8, mono float32 audio) of one clip."""
    h, w = size
    n_frames = int(round(seconds * fps))
    n_samples = int(round(seconds * sample_rate))
    n_events = int(rng.integers(2, 5))
    # onsets spread over the clip, at least 0.25 s apart, and not in the last 0.1 s
    onsets = np.sort(rng.uniform(0.05, max(0.1, seconds - 0.1), n_events))
    onsets = onsets[np.concatenate([[True], np.diff(onsets) >= 0.25])]

    # video: the class shape, jittered in place and size, flashing with the event envelope
    r = min(h, w) * rng.uniform(0.31, 0.35)
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    cx = w / 2 + rng.uniform(-0.2, 0.2) * w
    mask = _shape_mask(cls.shape, h, w, cy, cx, r)
    colour = np.clip(np.array(cls.rgb, np.float32) * rng.uniform(0.85, 1.0), 0, 255)
    background = (rng.uniform(8, 16) + rng.uniform(-2, 2, 3)).astype(np.float32)  # dark grey, no class cue
    texture = rng.normal(0, 3, (h, w, 1)).astype(np.float32)  # fixed grain so frames are not flat
    t_frames = np.arange(n_frames) / fps
    level = BASE_LEVEL + (1 - BASE_LEVEL) * np.clip(_envelope(t_frames, onsets, DECAY_S), 0, 1)
    frames = background + texture + (level[:, None, None, None] * mask[None, :, :, None]) * (colour - background)
    frames = np.clip(frames, 0, 255).astype(np.uint8)

    # audio: bursts of the class's own sound, same envelope: its pitch (harmonics 1..3) inside a band of noise
    # around it, about ten mel bins wide. The band is what a small codebook keeps (a 50-token grid of 32 codes blurs
    # away thin harmonic lines and noise texture), so the class survives into the reconstructions the evaluator
    # judges. The broadband floor is faint, so that silence is close to the spectrogram's floor: a noise texture
    # there would be most of what a codebook of a few dozen codes is asked to reconstruct, and it cannot.
    t = np.arange(n_samples) / sample_rate
    f0 = cls.pitch_hz * rng.uniform(0.97, 1.03)
    phases = rng.uniform(0, 2 * np.pi, 3)
    tone = sum(a * np.sin(2 * np.pi * k * f0 * t + p) for k, a, p in zip((1, 2, 3), (1.0, 0.5, 0.25), phases))
    band = _band_noise(rng, n_samples, sample_rate, f0)
    env = _envelope(t, onsets, DECAY_S * rng.uniform(0.8, 1.2))
    noise = rng.normal(0, 1, n_samples)
    hum = 0.04 * rng.uniform(0.7, 1.0)  # the class sound never stops, so every stretch of a clip has its pitch
    audio = 0.35 * rng.uniform(0.7, 1.0) * env * (0.8 * tone + 0.3 * band) + hum * tone + 0.0003 * noise
    return frames, np.clip(audio, -1, 1).astype(np.float32)


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> None:
    """H.264 (yuv420p) + AAC mp4 through PyAV, written to a temp name and renamed into place."""
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
        v = out.add_stream("libx264", rate=Fraction(str(fps)).limit_denominator(1001))
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        v.options = {"preset": "veryfast", "crf": "20", "threads": "1"}
        a = out.add_stream("aac", rate=sample_rate, layout="mono")
        a.bit_rate = 96_000
        a.options = {"aac_coder": "fast"}  # several times faster than twoloop; quality is irrelevant here
        for image in frames:
            for packet in v.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        chunk = 1024
        for start in range(0, len(audio), chunk):
            block = audio[None, start:start + chunk]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            for packet in a.encode(frame):
                out.mux(packet)
        for packet in a.encode():
            out.mux(packet)


PITCH_RANGE_HZ = (200.0, 5000.0)


def class_set(n_classes: int) -> list[ToyClass]:
    """The first n classes, their pitches spread evenly (in log frequency) over PITCH_RANGE_HZ.

    The codebook's 5 token rows each cover 16 of the 80 mel bins; classes whose tones all sat in the lowest
    row (as 150-614 Hz would) differ only in detail the small demo codebook does not keep.
    """
    if n_classes == 1:
        return [replace(TOY_CLASSES[0], pitch_hz=float(np.sqrt(np.prod(PITCH_RANGE_HZ))))]
    pitches = np.geomspace(*PITCH_RANGE_HZ, n_classes)
    return [replace(cls, pitch_hz=float(p)) for cls, p in zip(TOY_CLASSES[:n_classes], pitches)]


def make_synthetic_dataset(out_dir: str | Path, n_classes: int = 4, clips_per_class: int = 16, seconds: float = 2.0,
                           fps: float = 25.0, sample_rate: int = 44100, size: tuple[int, int] = (96, 128),
                           seed: int = 0) -> list[Path]:
    """Write <out_dir>/<class>/<class>_NNN.mp4 for n_classes x clips_per_class clips; returns their paths.

    `fps` other than the chain's 21.5 (default 25) shows that the preprocessing re-times the video.
    """
    if not 1 <= n_classes <= len(TOY_CLASSES):
        raise ValueError(f"n_classes must be 1..{len(TOY_CLASSES)}, got {n_classes}")
    h, w = size
    if h % 2 or w % 2 or h < 16 or w < 16:
        raise ValueError(f"size {size} must be even and at least 16x16 (H.264 yuv420p)")
    out_dir = Path(out_dir)
    paths = []
    for ci, cls in enumerate(class_set(n_classes)):
        for k in range(clips_per_class):
            rng = np.random.default_rng([seed, ci, k])
            frames, audio = render_clip(cls, rng, seconds, fps, sample_rate, size)
            path = out_dir / cls.name / f"{cls.name}_{k:03d}.mp4"
            write_mp4(path, frames, audio, fps, sample_rate)
            paths.append(path)
        log.info("synthetic class %s: %d clips", cls.name, clips_per_class)
    return paths
