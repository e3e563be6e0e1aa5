"""An input of `i2a generate` read as the workflow reads a validation video (design.md §3): a video goes through
the training chain (`i2a.data.media`: cut to the config's audio.seconds, frames at video.fps), an image is a still
video (the same frame at every step), and the S frames the transformer reads (`i2a.spec.frames`) are encoded by its
backbone with the config's weights and transforms."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from i2a.data.clips import VIDEO_SUFFIXES
from i2a.data.media import BadClip, preprocess_clip, video_head
from i2a.features.extract import extract_clip_features, frame_reader
from i2a.infra.precision import set_precision
from i2a.sampling.errors import InputError
from i2a.spec.frames import condition_rows

if TYPE_CHECKING:
    from i2a.sampling.loading import SoundModel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files, problems): the files in the order given, a folder replaced by the images and videos in it (by
    suffix, in name order, not its subfolders), each file once. A missing path or a folder with nothing to use
    is a problem (path, reason), reported like a bad file."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if p.is_file() and not p.name.startswith(".")
                           and (is_image(p) or is_video(p)))
            if not found:
                problems.append((given, f"no images ({', '.join(IMAGE_SUFFIXES)}) or videos in this folder"))
            files += found
        elif given.exists():
            files.append(given)
        else:
            problems.append((given, "no such file or folder"))
    first: dict[Path, Path] = {}
    for path in files:
        first.setdefault(path.resolve(), path)
    return list(first.values()), problems


def read_image(path: str | Path, min_size: int = 0) -> np.ndarray:
    """An image file as one RGB frame (1, H, W, 3) uint8, turned upright as its EXIF says; refused when it is not
    an image, or when even its longer side is below `min_size` (the backbone would see mostly interpolation)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            frame = np.array(image, dtype=np.uint8)  # a writable copy: torch warns about read-only arrays
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"not a readable image ({type(err).__name__}: {err}): give a JPEG, PNG or WebP file") from None
    h, w = frame.shape[:2]
    if max(h, w) < min_size:
        raise InputError(f"{w} x {h} pixels is smaller than the backbone's {min_size} x {min_size} input: give a "
                         f"picture at least {min_size} pixels wide or high")
    return frame[None]


def read_video(path: str | Path, model: SoundModel, workdir: str | Path) -> tuple[np.ndarray | None, Path]:
    """(frames, the chain's cut clip): the video as the workflow's preprocess_clips job makes a training clip of it,
    then its frames at the config's fps as extract_features decodes them, already the backbone's (crop, crop, 3)
    input (`frame_reader`); no frames (None) for the no-feats baseline, which does not look at them."""
    workdir = Path(workdir)
    head, clip, wav = workdir / "head.mkv", workdir / "clip.mp4", workdir / "clip.wav"
    try:
        video_head(path, head, model.seconds)
        preprocess_clip(head, clip, wav, seconds=model.seconds, sample_rate=model.mel.sample_rate)
        frames = None if model.encoder is None else frame_reader(model.encoder.transform, model.fps)(clip)
    except BadClip as bad:
        raise InputError(f"{bad.reason}: give a video with a picture (anything ffmpeg reads: mp4, mkv, webm, avi, "
                         "mov, ...) or a JPEG, PNG or WebP image") from None
    finally:
        head.unlink(missing_ok=True)
        wav.unlink(missing_ok=True)
    return frames, clip


@dataclass
class Prepared:
    """An input read and encoded: its (D, S) features (None for the no-feats baseline) and, for a video, the
    chain's clip that --mux puts the generated sound on."""

    path: Path
    kind: str  # "image" | "video"
    feats: np.ndarray | None
    clip: Path | None = None


def prepare(path: Path, model: SoundModel, workdir: Path) -> Prepared:
    """Read an input and encode the frames its condition positions show (each distinct frame once)."""
    if not path.is_file():
        raise InputError("not a file")
    if is_image(path):
        return encode_frames(model, path, "image", read_image(path, model.min_image_size))
    workdir.mkdir(parents=True, exist_ok=True)
    frames, clip = read_video(path, model, workdir)
    return encode_frames(model, path, "video", frames, clip)


def prepare_any(image, model: SoundModel, workdir: Path) -> Prepared:
    """`prepare` for what the Python API takes: a path, a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(image, (str, Path)):
        return prepare(Path(image), model, workdir)
    frame = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(f"an array of shape {frame.shape} and type {frame.dtype}: give an (H, W, 3) uint8 RGB "
                         "picture, a PIL image or a path")
    if max(frame.shape[:2]) < model.min_image_size:
        raise InputError(f"{frame.shape[1]} x {frame.shape[0]} pixels is smaller than the backbone's "
                         f"{model.min_image_size} x {model.min_image_size} input")
    return encode_frames(model, Path("<array>"), "image", np.ascontiguousarray(frame)[None])


def encode_frames(model: SoundModel, path: Path, kind: str, frames: np.ndarray | None,
                  clip: Path | None = None) -> Prepared:
    """The (D, S) features of the frames an input's condition positions show (each distinct frame encoded once)."""
    if model.encoder is None:
        return Prepared(path, kind, None, clip)
    rows = condition_rows(len(frames), model.feat_frames, model.feat_crop, model.S)
    used, where = np.unique(rows, return_inverse=True)
    set_precision(model.precision)  # the backbone's arithmetic, as extract_features runs it
    feats = extract_clip_features(model.encoder, np.ascontiguousarray(frames[used]), device=model.device,
                                  precision=model.precision, cropped=kind == "video")
    return Prepared(path, kind, feats[where].T.astype(np.float32), clip)
