"""Decode rate per worker for feature extraction: how many frames one decode thread hands the encoder per second.

What one decode thread of `extract_features` does per clip, timed: decode the clip at 21.5 fps (PyAV), resize and
centre-crop each frame to the model's input as it is decoded (ResNet's 256 -> 224, `frame_resizer`), pick the
frames the 215-pad / 212-crop uses. The clips: 10 s synthetic clips (the demo's generator, H.264 at 25 fps, as
VAS's sources are re-encoded) at each `--sizes`; VAS's sample clips are 298x224 to 480x360.

"per worker" is measured with this process pinned to one CPU core (FFmpeg then decodes with one thread, torch
resizes with one): the rate a GPU job gets from each of its `threads` (one decode thread per CPU). Then the same
clips with `--workers` threads on all this machine's cores, as extract_features runs them (ordered read-ahead),
for the rate several workers reach together. Also shown: what a clip in flight holds, decoded at the model's
size (now) or at the source's size (before: the whole clip decoded, then resized).

    .venv/bin/python benchmarks/decode_rate.py [--sizes 480x360,1280x720] [--clips 4]

To size `threads` for the GPU rule: threads >= (the GPU's frames/s) / (frames/s per worker). extract_features
logs both for a real job: "frames encoded in ... (N frames/s)", the decode rate per thread and how much of the
time the encoder waited for frames.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from i2a.data.media import read_video_frames
from i2a.data.synthetic import TOY_CLASSES, render_clip, write_mp4
from i2a.features.extract import _clip_crops, _prefetched, frame_reader
from i2a.spec.backbones import VIDEO_FEATURES_CNN

FPS, SECONDS, SOURCE_FPS, SAMPLE_RATE, TOTAL, CROP = 21.5, 10.0, 25.0, 22050, 215, 212


def make_clips(folder: Path, size: tuple[int, int], n: int) -> list[Path]:
    paths = []
    for k in range(n):
        frames, audio = render_clip(TOY_CLASSES[k % len(TOY_CLASSES)], np.random.default_rng(k), SECONDS, SOURCE_FPS,
                                    SAMPLE_RATE, size)
        path = folder / f"clip{size[1]}x{size[0]}_{k}.mp4"
        write_mp4(path, frames, audio, SOURCE_FPS, SAMPLE_RATE)
        paths.append(path)
    return paths


def decode_one(path: Path, reader) -> int:
    crops, inverse = _clip_crops(path, VIDEO_FEATURES_CNN, TOTAL, CROP, reader, cropped=True)
    if crops is None:
        raise RuntimeError(f"{path}: {inverse}")
    return len(crops)


def rate_one_core(paths: list[Path], reader, repeats: int) -> float:
    """frames/s of one decode thread on one pinned core (best of `repeats` passes over the clips)."""
    best = float("inf")
    frames = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = sum(decode_one(p, reader) for p in paths)
        best = min(best, time.perf_counter() - t0)
    return frames / best


def rate_workers(paths: list[Path], reader, workers: int, repeats: int) -> float:
    best, frames = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = sum(_prefetched(lambda p: decode_one(p, reader), paths, workers, ahead=2 * workers))
        best = min(best, time.perf_counter() - t0)
    return frames / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="480x360,1280x720", help="WxH of the synthetic clips, comma-separated")
    ap.add_argument("--clips", type=int, default=4, help="10 s clips per size")
    ap.add_argument("--workers", type=int, default=0, help="decode threads on all cores (0: one per core)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    workers = args.workers or len(cores)
    reader = frame_reader(VIDEO_FEATURES_CNN, FPS)
    print(f"decode + resize to 224 of 10 s clips at {FPS} fps ({TOTAL} frames -> {CROP} used); {len(cores)} cores")
    print(f"{'source':>10s} {'held/clip MB now':>16s} {'before':>7s} {'1 worker fps':>12s} {'s/clip':>7s} "
          f"{workers:>2d} {'workers fps':>11s}")
    results = []
    with tempfile.TemporaryDirectory(prefix="i2a-decode-rate-") as tmp:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            paths = make_clips(Path(tmp), (h, w), args.clips)
            held_now = read_video_frames(paths[0], fps=FPS, frame_transform=reader.keywords["frame_transform"]).nbytes
            held_before = read_video_frames(paths[0], fps=FPS).nbytes
            torch.set_num_threads(1)
            os.sched_setaffinity(0, {cores[-1]})  # one core: FFmpeg and torch each use one thread
            try:
                one = rate_one_core(paths, reader, args.repeats)
            finally:
                os.sched_setaffinity(0, set(cores))
            many = rate_workers(paths, reader, workers, args.repeats)
            results.append((size, one))
            print(f"{size:>10s} {held_now / 1e6:16.1f} {held_before / 1e6:7.1f} {one:12.1f} {CROP / one:7.2f} "
                  f"{'':>2s} {many:11.1f}", flush=True)
    print("decode_frames_per_s_per_worker: " + ", ".join(f"{s} {r:.0f}" for s, r in results))


if __name__ == "__main__":
    main()
