"""How much the feature extraction's numerical choices move the features: bf16 autocast vs fp32 (`features.precision`)
and float16 vs float32 storage (`features.dtype`), on the real VAS sample clips of ../shared.

    .venv/bin/python benchmarks/feature_precision.py                        # ResNet50, random weights, CPU
    .venv/bin/python benchmarks/feature_precision.py --weights imagenet_v1  # with the authors' weights (fetched)
    .venv/bin/python benchmarks/feature_precision.py --device cuda --frames 0

Frames are decoded at 21.5 fps as the workflow decodes them; `--frames N` takes N evenly spaced frames per clip
(0: all). Prints per clip and over all clips the max and mean absolute difference of the bf16 features from the
fp32 ones, relative to the mean absolute fp32 feature, and the same for fp32 features stored as float16; with the
authors' ImageNet weights also the distance of the fp32 features from the authors' own (their .pkl files).
"""
from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from i2a.data.media import read_video_frames
from i2a.features.backbones import build_backbone
from i2a.features.extract import extract_clip_features

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "vas-samples"


def summary(diff: np.ndarray, scale: float) -> str:
    largest, mean = float(np.abs(diff).max()), float(np.abs(diff).mean())
    return (f"max |d| {largest:.4g}  mean |d| {mean:.4g}  "
            f"(mean |feature| {scale:.4g}: max {largest / scale:.2%}, mean {mean / scale:.3%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none", help="none (random init), imagenet_v1, or a path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=48, help="evenly spaced frames per clip (0: all)")
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="the vas-samples folder of ../shared")
    args = parser.parse_args()

    torch.manual_seed(0)  # random weights: the same ones every time
    encoder = build_backbone(args.backbone, weights=args.weights)
    clips = sorted(args.samples.glob("videos/*/*.mp4"))
    if not clips:
        raise SystemExit(f"no clips under {args.samples}/videos")
    all_fp32, all_bf16, authors = [], [], []
    start = time.perf_counter()
    for path in clips:
        frames = read_video_frames(path, fps=21.5)
        if args.frames:
            frames = frames[np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).round().astype(int)]
        fp32 = extract_clip_features(encoder, frames, device=args.device, precision="fp32")
        bf16 = extract_clip_features(encoder, frames, device=args.device, precision="bf16")
        all_fp32.append(fp32)
        all_bf16.append(bf16)
        print(f"{path.parent.name}/{path.stem}: {len(frames)} frames  bf16 - fp32: "
              f"{summary(bf16 - fp32, float(np.abs(fp32).mean()))}")
        golden = args.samples / "features" / path.parent.name / "feature_resnet50_dim2048_21.5fps" / f"{path.stem}.pkl"
        if args.weights != "none" and args.backbone == "resnet50" and golden.exists() and not args.frames:
            with open(golden, "rb") as fh:
                theirs = pickle.load(fh)
            n = min(len(theirs), len(fp32))
            authors.append(fp32[:n] - theirs[:n])
    fp32, bf16 = np.concatenate(all_fp32), np.concatenate(all_bf16)
    scale = float(np.abs(fp32).mean())
    print(f"\n{args.backbone} ({args.weights} weights, {args.device}), {len(clips)} clips, {len(fp32)} frames, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"bf16 autocast - fp32:        {summary(bf16 - fp32, scale)}")
    print(f"fp32 stored as float16:      {summary(fp32.astype(np.float16).astype(np.float32) - fp32, scale)}")
    cos = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    print(f"cosine(bf16, fp32) per frame: min {cos.min():.6f}  mean {cos.mean():.6f}")
    if authors:
        print(f"fp32 - the authors' features: {summary(np.concatenate(authors), scale)}")
    print(f"bf16_cosine_min: {cos.min():.6f}")


if __name__ == "__main__":
    main()
