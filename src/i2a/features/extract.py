"""Per-frame features of clips (design.md §3): decode in background workers, encode in batches.

Differences from video_features that change no result (beyond float rounding): no temporary re-encode (the
frames come straight from the decoder), transforms on whole uint8 clips instead of per-frame PIL calls (same
pixels), only the frames that survive the 215-pad / 212-crop are encoded, decoding of the next clips overlaps
inference of the current one, BatchNorm folded into the convolutions, channels_last, inference_mode.

One choice does change the numbers, and is the config's (`features.precision`): `fp32` computes as video_features
does; `bf16` runs the backbone under bf16 autocast (on any device), faster on GPUs, with features that differ from
fp32's (ResNet50 on the VAS sample clips: 0.4% of their mean magnitude on average, up to 6%; README, "Reproducing
SpecVQGAN's numbers", and benchmarks/feature_precision.py).
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
from i2a.data.store import NpyRowWriter
from i2a.features.backbones import FrameEncoder
from i2a.infra.parallel import prefetched
from i2a.infra.precision import autocast_dtype
from i2a.spec.frames import pad_and_crop_indices

log = logging.getLogger(__name__)


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



def _encode(backbone: FrameEncoder, crops: torch.Tensor, batch_size: int, device: torch.device,
            precision: str = "fp32") -> np.ndarray:
    """uint8 [T,3,S,S] crops -> float32 [T,D]; normalisation happens on the device (4x less to copy). `precision`
    bf16: the backbone under bf16 autocast."""
    autocast = autocast_dtype(precision)
    model, out = _inference_model(backbone, device), []
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        for i in range(0, len(crops), batch_size):
            x = crops[i:i + batch_size].to(device, non_blocking=True)
            x = backbone.transform.normalize(x).to(backbone.dtype).contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    if not out:
        return np.zeros((0, backbone.feat_dim), np.float32)
    return torch.cat(out).numpy()


def extract_clip_features(backbone: FrameEncoder, frames: np.ndarray | torch.Tensor, batch_size: int = 64,
                          device: str | torch.device = "cpu", precision: str = "fp32",
                          cropped: bool = False) -> np.ndarray:
    """Features of every frame of one clip: uint8 [T,H,W,3] -> float32 [T, feat_dim]. `cropped`: the frames are
    already the model's (crop, crop, 3) input, as `frame_reader` decodes them."""
    device = torch.device(device)
    if cropped:
        crops = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    else:
        crops = torch.cat([backbone.transform.resize_crop(frames[i:i + batch_size])
                           for i in range(0, len(frames), batch_size)]) if len(frames) else frames
    return _encode(backbone, crops, batch_size, device, precision)


def frame_resizer(transform) -> Callable[[np.ndarray], np.ndarray]:
    """One decoded (H, W, 3) uint8 frame -> the model's (crop, crop, 3) uint8 input: the transform's resize and
    centre crop, the same pixels as resizing the whole clip at once. Given to the decoder, so that a clip is held
    at the model's input size (215 x 224 x 224 x 3: 32 MB) rather than the source's (a 720p clip: 590 MB)."""

    def resize(frame: np.ndarray) -> np.ndarray:
        x = transform.resize_crop(torch.from_numpy(frame)[None])[0]  # (3, crop, crop), a view of the resized frame
        return np.ascontiguousarray(x.permute(1, 2, 0).numpy())  # a copy: the full resized frame is let go

    return resize


def frame_reader(transform, fps: float | None = 21.5) -> Callable[[str | Path], np.ndarray]:
    """The extraction's decoder: a clip's frames at `fps` as (T, crop, crop, 3) uint8, each resized and cropped
    (`frame_resizer`) as soon as it is decoded; frames with a shorter side over 4x the resize are first scaled down
    by the decoder."""
    return functools.partial(media.read_video_frames, fps=fps, max_short_side=4 * transform.resize,
                             frame_transform=frame_resizer(transform))


def _clip_crops(path: str | Path, transform, total: int, crop: int,
                read_frames: Callable[[str | Path], np.ndarray],
                cropped: bool = False) -> tuple[torch.Tensor | None, np.ndarray | str]:
    """Decode one clip: uint8 crops of only the frames the padded/cropped sequence uses, and where each goes; or
    (None, reason) when the clip cannot be read, so that one bad clip never fails its shard. `cropped`: the
    reader already returns the model's (crop, crop, 3) frames (`frame_resizer`)."""
    if path is None:
        return None, "no video"
    try:
        frames = read_frames(path)
        if len(frames) == 0:
            raise ValueError("no video frames")
        used, inverse = np.unique(pad_and_crop_indices(len(frames), total, crop), return_inverse=True)
        x = torch.from_numpy(np.ascontiguousarray(frames[used]))
        crops = x.permute(0, 3, 1, 2) if cropped else transform.resize_crop(x)
    except Exception as err:  # noqa: BLE001 - any failure is this clip's, recorded with its reason
        return None, " ".join(f"{type(err).__name__}: {err}".split())[:300]
    return crops, inverse


def _prefetched(fn: Callable, items: Sequence, workers: int, ahead: int) -> Iterator:
    """i2a.infra.parallel.prefetched with each worker's torch ops single-threaded (the setting is per thread under
    OpenMP), so that decoding and resizing do not fight inference for cores."""
    # torch keeps one process-wide default that threads adopt on first use: pin this thread's count first,
    # and restore the default afterwards
    n_threads = torch.get_num_threads()
    try:
        yield from prefetched(fn, items, workers, ahead, initializer=torch.set_num_threads, initargs=(1,))
    finally:
        torch.set_num_threads(n_threads)


def extract_features(backbone: FrameEncoder, video_paths: Sequence[str | Path | None], out_npy: str | Path,
                     total: int = 215, crop: int = 212, dtype: str = "float32", batch_size: int = 64,
                     num_workers: int = 2, device: str | torch.device = "cpu", fps: float | None = 21.5,
                     read_frames: Callable[[str | Path], np.ndarray] | None = None,
                     failures: dict[int, str] | None = None, precision: str = "fp32") -> np.ndarray:
    """Features of clips, padded/cropped like SpecVQGAN's loader, saved atomically as [N, crop, D].

    Rows follow `video_paths`; a clip that cannot be decoded (or has no video: None) gets a row of NaN and its reason
    in `failures` ({row: reason}; clips were vetted when the dataset was prepared, so this is rare), and the rest go
    on. Frames are taken at `fps` (None: every decoded frame) by `i2a.data.media.read_video_frames`, or by
    `read_frames`, in `num_workers` background threads (0: inline). Rows are streamed to disk, so memory does not grow with the number of clips. Returns the file, memory-mapped.
    """
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    # each frame is resized and cropped to the model's input as it is decoded (in the decode thread), so a clip in
    # flight is held at 224 x 224, not at the source size; frames far larger than needed are first scaled down by
    # the decoder itself
    cropped = read_frames is None
    read_frames = read_frames or frame_reader(backbone.transform, fps)
    failures = {} if failures is None else failures
    paths = list(video_paths)
    log.info("%s features of %d clips -> %s (%s, %s, stored as %s, %d decode threads)", backbone.name, len(paths),
             out_npy, device, precision, dtype, num_workers)
    clip_crops = functools.partial(_clip_crops, transform=backbone.transform, total=total, crop=crop,
                                   read_frames=read_frames, cropped=cropped)
    decode_seconds: list[float] = []  # per clip, in whichever thread decoded it

    def decode(path):
        t0 = time.perf_counter()
        result = clip_crops(path)
        decode_seconds.append(time.perf_counter() - t0)  # list.append is atomic under the GIL
        return result

    start, n_frames, waited = time.perf_counter(), 0, 0.0
    clips = _prefetched(decode, paths, num_workers, ahead=2 * max(num_workers, 1))
    with NpyRowWriter(out_npy, (crop, backbone.feat_dim), dtype) as out:
        for row, (crops, inverse) in enumerate(tqdm(clips, total=len(paths), desc=f"features {backbone.name}",
                                                    unit="clip", mininterval=10)):
            if crops is None:
                failures[row] = inverse
                log.warning("%s: no features (%s); its row is NaN and the clip is left out downstream",
                            paths[row], inverse)
                out.append(np.full((crop, backbone.feat_dim), np.nan, np.float32))
                continue
            t0 = time.perf_counter()
            out.append(_encode(backbone, crops, batch_size, device, precision)[inverse])
            waited -= time.perf_counter() - t0  # below: the loop's time minus encoding = time spent waiting
            n_frames += len(crops)
    elapsed = time.perf_counter() - start
    waited += elapsed
    log.info("%s: %d clips, %d frames encoded in %.1f s (%.1f frames/s)", backbone.name, len(paths), n_frames,
             elapsed, n_frames / max(elapsed, 1e-9))
    if decode_seconds and n_frames:
        # what sizes `threads` for a GPU job: the encoder is starved when it waits for decoding most of the time
        log.info("decode + resize: %.1f frames/s per decode thread (%.2f s per clip), %d threads; the encoder "
                 "waited for frames %.0f%% of the time", n_frames / sum(decode_seconds),
                 sum(decode_seconds) / len(decode_seconds), num_workers, 100 * waited / max(elapsed, 1e-9))
    return np.load(out_npy, mmap_mode="r")


def extract_shard(name: str, settings: dict, frames: dict, dtype: str, shard_dir: str | Path, features_out: str | Path,
                  index_out: str | Path, workers: int = 2, device=None, precision: str = "fp32",
                  videos_dir: str | Path | None = None) -> None:
    """The workflow's extract_features job: (clips, feat_crop, D) features of one shard's videos at frames['fps'],
    padded by tiling and centre-cropped, and an index of the clips (row i of the .npy is the index's row i).
    `videos_dir`: the shard's videos are in this videos shard folder (the authors' clips, whose data shard holds
    mels only), found by clip name; a clip it has no video of gets a row of NaN and the reason."""
    from i2a.data.clips import Shard, write_tsv
    from i2a.features.backbones import build_backbone
    from i2a.infra.device import pick_device

    encoder = build_backbone(name, weights=settings["weights"], cache_dir="resources/weights",
                             image_size=settings["image_size"])
    shard = Shard(shard_dir)
    failures: dict[int, str] = {}
    paths: list[Path | None] = shard.video_paths()
    missing: dict[int, str] = {}
    if videos_dir is not None:
        videos = Shard(videos_dir)
        found = dict(zip(videos.clips, videos.video_paths()))
        why = dict(zip(videos.table["clip"], videos.table["reason"]))
        paths = [found.get(clip) for clip in shard.clips]
        missing = {row: f"no video: {why.get(clip) or 'not in ' + str(videos_dir)}"
                   for row, clip in enumerate(shard.clips) if paths[row] is None}
    extract_features(encoder, paths, features_out, fps=frames["fps"], total=frames["total"],
                     crop=frames["crop"], dtype=dtype, batch_size=settings["batch_size"], num_workers=workers,
                     device=pick_device(device), failures=failures, precision=precision)
    failures.update(missing)
    index = shard.ok[["clip", "class"]].copy()
    index["status"] = ["failed" if i in failures else "ok" for i in range(len(index))]
    index["reason"] = [failures.get(i, "") for i in range(len(index))]
    write_tsv(index, index_out)
    log.info("%d clips -> %s", len(shard.clips), features_out)
