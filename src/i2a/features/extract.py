"""Per-frame features of clips (SPEC section 3): decode in background workers, encode in batches.

Differences from video_features that change no result (beyond float rounding): no temporary re-encode (the
frames come straight from the decoder), transforms on whole uint8 clips instead of per-frame PIL calls (same
pixels), only the frames that survive the 215-pad / 212-crop are encoded, decoding of the next clips overlaps
inference of the current one, BatchNorm folded into the convolutions, channels_last, inference_mode, and bf16
autocast on CUDA.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import sys
import time
import warnings
import weakref
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from i2a.data import media
from i2a.features.backbones import FrameEncoder
from i2a.parallel import prefetched
from i2a.data.store import NpyRowWriter

log = logging.getLogger(__name__)


def pad_and_crop_indices(n_frames: int, total: int = 215, crop: int = 212) -> np.ndarray:
    """Which source frame each output row takes: tile (or trim) to `total`, then centre crop to `crop`."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if not 1 <= crop <= total:
        raise ValueError(f"crop ({crop}) must be in 1..total ({total})")
    reps = 1 + total // n_frames
    idx = np.tile(np.arange(n_frames), reps)[:total]
    start = (total - crop) // 2  # 215 -> 212 keeps frames 1..212
    return idx[start:start + crop]


def pad_and_crop(feats: np.ndarray, total: int = 215, crop: int = 212) -> np.ndarray:
    """SpecVQGAN's feature padding: `tile(feats, 1 + total // T)[:total]`, then the centre `crop` frames."""
    return feats[pad_and_crop_indices(len(feats), total, crop)]


_FUSED: "weakref.WeakKeyDictionary[nn.Module, nn.Module | None]" = weakref.WeakKeyDictionary()


def _inference_model(backbone: FrameEncoder, device: torch.device) -> nn.Module:
    """The backbone's model on `device` in channels_last, with BatchNorm folded into the convolutions (CNNs).

    Folding changes features by ~1e-6 relative; it and channels_last put oneDNN/cuDNN on their fast paths.
    The folded copy is made once per model: change a model's weights after extracting with it and the copy
    is stale.
    """
    model = backbone.model.eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        if model not in _FUSED:
            try:
                with warnings.catch_warnings():  # the module imports deprecated TorchScript helpers
                    warnings.simplefilter("ignore", DeprecationWarning)
                    from torch.fx.experimental.optimization import fuse
                _FUSED[model] = fuse(model)  # a traced copy; the backbone's own model is left as it is
            except Exception as err:  # not traceable: run it unfused
                log.warning("%s: BatchNorm folding skipped (%s)", backbone.name, err)
                _FUSED[model] = None
        if _FUSED[model] is not None:
            model = _FUSED[model]
    return model.to(device=device, memory_format=torch.channels_last).eval()


def keep_freed_memory() -> None:
    """Serve big CPU tensors from glibc's heap and keep it, instead of mmap/munmap per tensor.

    Every forward pass otherwise maps and unmaps its large activations, and the page faults cost about a
    quarter of CPU inference time. The price: the process keeps its peak memory until it exits (fine for an
    extraction job). A no-op off glibc.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass


def _encode(backbone: FrameEncoder, crops: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """uint8 [T,3,S,S] crops -> float32 [T,D]; normalisation happens on the device (4x less to copy)."""
    model, out = _inference_model(backbone, device), []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for i in range(0, len(crops), batch_size):
            x = crops[i:i + batch_size].to(device, non_blocking=True)
            x = backbone.transform.normalize(x).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    if not out:
        return np.zeros((0, backbone.feat_dim), np.float32)
    return torch.cat(out).numpy()


def extract_clip_features(backbone: FrameEncoder, frames: np.ndarray | torch.Tensor, batch_size: int = 64,
                          device: str | torch.device = "cpu") -> np.ndarray:
    """Features of every frame of one clip: uint8 [T,H,W,3] -> float32 [T, feat_dim]."""
    device = torch.device(device)
    crops = torch.cat([backbone.transform.resize_crop(frames[i:i + batch_size])
                       for i in range(0, len(frames), batch_size)]) if len(frames) else frames
    return _encode(backbone, crops, batch_size, device)


def _clip_crops(path: str | Path, transform, total: int, crop: int,
                read_frames: Callable[[str | Path], np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
    """Decode one clip; uint8 crops of only the frames the padded/cropped sequence uses, and where each goes."""
    try:
        frames = read_frames(path)
        if len(frames) == 0:
            raise ValueError("no frames")
        used, inverse = np.unique(pad_and_crop_indices(len(frames), total, crop), return_inverse=True)
        crops = transform.resize_crop(torch.from_numpy(np.ascontiguousarray(frames[used])))
    except Exception as err:
        raise RuntimeError(f"{path}: cannot read frames for feature extraction: {err}") from err
    return crops, inverse


def _prefetched(fn: Callable, items: Sequence, workers: int, ahead: int) -> Iterator:
    """i2a.parallel.prefetched with each worker's torch ops single-threaded (the setting is per thread under
    OpenMP), so that decoding and resizing do not fight inference for cores."""
    # torch keeps one process-wide default that threads adopt on first use: pin this thread's count first,
    # and restore the default afterwards
    n_threads = torch.get_num_threads()
    try:
        yield from prefetched(fn, items, workers, ahead, initializer=torch.set_num_threads, initargs=(1,))
    finally:
        torch.set_num_threads(n_threads)


def extract_features(backbone: FrameEncoder, video_paths: Sequence[str | Path], out_npy: str | Path,
                     total: int = 215, crop: int = 212, dtype: str = "float32", batch_size: int = 64,
                     num_workers: int = 2, device: str | torch.device = "cpu", fps: float | None = 21.5,
                     read_frames: Callable[[str | Path], np.ndarray] | None = None) -> np.ndarray:
    """Features of clips, padded/cropped like SpecVQGAN's loader, saved atomically as [N, crop, D].

    Rows follow `video_paths`; a clip that cannot be decoded stops the run with its path (clips are vetted
    when the dataset is prepared). Frames are taken at `fps` (None: every decoded frame) by
    `i2a.data.media.read_video_frames`, or by `read_frames`, in `num_workers` background threads (0: inline).
    Rows are streamed to disk, so memory does not grow with the number of clips. Returns the file, memory-mapped.
    """
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    read_frames = read_frames or functools.partial(media.read_video_frames, fps=fps)
    paths = list(video_paths)
    log.info("%s features of %d clips -> %s (%s, %d decode threads)", backbone.name, len(paths), out_npy, device,
             num_workers)
    decode = functools.partial(_clip_crops, transform=backbone.transform, total=total, crop=crop,
                               read_frames=read_frames)
    start, n_frames = time.perf_counter(), 0
    clips = _prefetched(decode, paths, num_workers, ahead=2 * max(num_workers, 1))
    with NpyRowWriter(out_npy, (crop, backbone.feat_dim), dtype) as out:
        for crops, inverse in tqdm(clips, total=len(paths), desc=f"features {backbone.name}", unit="clip",
                                   mininterval=10):
            out.append(_encode(backbone, crops, batch_size, device)[inverse])
            n_frames += len(crops)
    elapsed = time.perf_counter() - start
    log.info("%s: %d clips, %d frames encoded in %.1f s (%.1f frames/s)", backbone.name, len(paths), n_frames,
             elapsed, n_frames / max(elapsed, 1e-9))
    return np.load(out_npy, mmap_mode="r")


def extract_shard(name: str, settings: dict, frames: dict, dtype: str, shard_dir: str | Path, features_out: str | Path,
                  index_out: str | Path, workers: int = 2, device=None) -> None:
    """The workflow's extract_features job: (clips, feat_crop, D) features of one shard's videos at frames['fps'],
    padded by tiling and centre-cropped, and an index of the clips (row i of the .npy is the index's row i)."""
    from i2a.data.clips import Shard, write_tsv
    from i2a.device import pick_device
    from i2a.features.backbones import build_backbone

    encoder = build_backbone(name, weights=settings["weights"], cache_dir="resources/weights",
                             image_size=settings["image_size"])
    shard = Shard(shard_dir)
    extract_features(encoder, shard.video_paths(), features_out, fps=frames["fps"], total=frames["total"],
                     crop=frames["crop"], dtype=dtype, batch_size=settings["batch_size"], num_workers=workers,
                     device=pick_device(device))
    write_tsv(shard.ok[["clip", "class"]], index_out)
    log.info("%d clips -> %s", len(shard.clips), features_out)
