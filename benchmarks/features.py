"""Frame-feature throughput: i2a.features.extract vs the video_features way, on the same clips in the same run.

video_features way: re-encode each clip to 21.5 fps with ffmpeg into a temporary file, decode it, per-frame PIL
transforms, then batches of frames of one clip at a time through the model (fp32, no_grad).
Ours: decode the clip once (PyAV, background threads) and keep the 21.5 fps frames, batched tensor transforms,
inference_mode + channels_last, decoding overlapped with inference.

    .venv/bin/python benchmarks/features.py                  # ResNet50, first 5 s of 2 clips (minutes on 2 cores)
    .venv/bin/python benchmarks/features.py --backbones all --clips 10 --seconds 0   # everything, whole clips

Weights are random ('none'): speed does not depend on them. The last line is `features_speedup: <ratio>` for
ResNet50 on CPU (wall time of the video_features way / ours).
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torchvision.transforms as T

from i2a.data.media import ffmpeg_exe, read_video_frames
from i2a.features.backbones import FrameEncoder, build_backbone
from i2a.features.extract import extract_features
from i2a.spec.backbones import BACKBONES

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vas-samples" / "videos"
FPS = 21.5


def read_frames_at_fps(path: str | Path, seconds: float | None = None) -> np.ndarray:
    """The 21.5 fps frames (ffmpeg fps-filter selection, no re-encode), optionally the first `seconds` only."""
    frames = read_video_frames(path, fps=FPS)
    return frames if seconds is None else frames[: int(np.ceil(seconds * FPS))]


def video_features_way(backbone: FrameEncoder, paths: list[Path], batch_size: int, seconds: float | None) -> int:
    """What video_features does per clip; returns the number of frames encoded."""
    tf = backbone.transform
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[tf.interpolation]
    per_frame = T.Compose([T.ToPILImage(), T.Resize(tf.resize, interpolation=interp), T.CenterCrop(tf.crop),
                           T.ToTensor(), T.Normalize(tf.mean, tf.std)])
    model = backbone.model  # as built: contiguous (NCHW) weights, BatchNorm separate
    ffmpeg, n = ffmpeg_exe(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            new = Path(tmp) / f"{path.stem}_new_fps.mp4"
            cut = ["-t", str(seconds)] if seconds is not None else []
            subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "panic", "-y", "-i", str(path), *cut, "-an",
                            "-filter:v", f"fps=fps={FPS}", str(new)], check=True)
            feats, batch = [], []
            with av.open(str(new)) as container, torch.no_grad():
                for frame in container.decode(video=0):
                    batch.append(per_frame(frame.to_ndarray(format="rgb24")).unsqueeze(0))
                    if len(batch) == batch_size:
                        feats.extend(model(torch.cat(batch)).tolist())
                        batch = []
                if batch:
                    feats.extend(model(torch.cat(batch)).tolist())
            n += len(feats)
            new.unlink()
    return n


def our_way(backbone: FrameEncoder, paths: list[Path], batch_size: int, seconds: float | None, workers: int) -> int:
    reader = functools.partial(read_frames_at_fps, seconds=seconds)
    n_frames = [0]

    def counting_reader(path):
        frames = reader(path)
        n_frames[0] += min(len(frames), 215)  # frames beyond 215 are trimmed, never encoded
        return frames

    with tempfile.TemporaryDirectory() as tmp:
        # total = crop = 215: every frame of a clip of <= 10 s is encoded once, like the other way
        extract_features(backbone, paths, Path(tmp) / "f.npy", total=215, crop=215, batch_size=batch_size,
                         num_workers=workers, read_frames=counting_reader)
    return n_frames[0]


def build(name: str, image_size: int | None) -> FrameEncoder:
    torch.manual_seed(0)
    backbone = build_backbone(name, "none", image_size=image_size)
    with torch.inference_mode():  # warm both memory formats up (oneDNN primitive caches)
        x = torch.zeros(2, 3, backbone.transform.crop, backbone.transform.crop)
        backbone.model(x)
        backbone.model(x.contiguous(memory_format=torch.channels_last))
    return backbone


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (ffmpeg): robust on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="resnet50", help="comma-separated names, or 'all'")
    parser.add_argument("--clips", type=int, default=2, help="how many of the 10 sample clips")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="only the first S seconds of each clip (0: whole clips)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decode threads for our way")
    args = parser.parse_args()
    seconds = args.seconds or None

    paths = sorted(SAMPLES.glob("*/*.mp4"))[: args.clips]
    if not paths:
        print(f"skipped: no sample clips under {SAMPLES}")
        return
    names = list(BACKBONES) if args.backbones == "all" else args.backbones.split(",")
    print(f"{len(paths)} clips, torch threads {torch.get_num_threads()}, image_size {args.image_size or 'default'}")
    # all video_features runs first: ours tunes the process's allocator (keep_freed_memory), which would
    # otherwise speed up the video_features runs that follow it
    theirs = {}
    for name in names:
        backbone = build(name, args.image_size)
        t0, c0 = time.perf_counter(), cpu_seconds()
        n = video_features_way(backbone, paths, args.batch_size, seconds)
        theirs[name] = (n, time.perf_counter() - t0, cpu_seconds() - c0)
    speedup = None
    for name in names:
        backbone = build(name, args.image_size)
        t0, c0 = time.perf_counter(), cpu_seconds()
        n_ours = our_way(backbone, paths, args.batch_size, seconds, args.workers)
        ours, c_ours = time.perf_counter() - t0, cpu_seconds() - c0
        n_theirs, wall, c_theirs = theirs[name]
        print(f"{name:18s} video_features way {n_theirs:5d} frames {wall:7.1f} s {n_theirs / wall:6.1f} frames/s"
              f" (cpu {c_theirs:6.1f} s) | ours {n_ours:5d} frames {ours:7.1f} s {n_ours / ours:6.1f} frames/s"
              f" (cpu {c_ours:6.1f} s) | speedup {wall / ours:.2f}x (cpu time {c_theirs / c_ours:.2f}x)",
              flush=True)
        if name == "resnet50":
            speedup = wall / ours
    if speedup is not None:
        print(f"features_speedup: {speedup:.2f}")
    else:
        print("features_speedup: n/a (resnet50 not benchmarked)", file=sys.stderr)


if __name__ == "__main__":
    main()
