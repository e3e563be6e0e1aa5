"""The clip table (class, split, shard of every clip) and the per-shard preprocessed data the stages share.

A preprocessed shard folder holds:
  clips.tsv   one row per clip of the shard: clip, class, status (ok | skipped), reason, file
  mels.npy    (n_ok, n_mels, keep_frames) float32 in [0, 1], rows in the order of the ok clips
  wav/<file>.wav, video/<file>.mp4   the 10 s mono wav and the 10 s video (with audio) of each ok clip;
              frames are read from it at 21.5 fps by timestamp (i2a.data.media.read_video_frames)
File stems are row numbers, so clip names with spaces, quotes or non-ASCII letters never reach a command line.
A videos shard folder (the videos of the authors' clips, `vas.source: authors`) holds clips.tsv and video/ only.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from i2a.data.mel import MelSpec, mel_spectrogram
from i2a.data.store import NpyRowWriter
from i2a.infra.atomic import atomic_path
from i2a.infra.parallel import prefetched

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov"}


def find_clips(raw_dir: str | Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Clips laid out as raw_dir/<class>/<clip>.<video suffix>: ('<class>/<clip>', path) sorted by name, and
    (relative path, reason) for everything else found there that is not a clip, so that nothing is left out
    silently. Only the two levels are read: a folder inside a class folder (one named `x.mp4` included) is
    reported, never walked, so symlink loops cannot trap the listing. Hidden files (`.DS_Store`) are ignored."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"video folder {raw_dir} does not exist")
    clips: list[tuple[str, Path]] = []
    rejected: list[tuple[str, str]] = []

    def entries(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))

    for top in entries(raw_dir):
        if not top.is_dir():
            rejected.append((top.name, "not inside a class folder (expected <class>/<clip>.mp4)"))
            continue
        if problem := _unsafe_name(top.name):
            rejected.append((top.name, f"class folder name {problem}: rename it"))
            continue
        for path in entries(top):
            rel = f"{top.name}/{path.name}"
            try:
                is_dir = path.is_dir()
                exists = path.exists()
            except OSError as error:  # ELOOP and friends
                rejected.append((rel, f"cannot be read: {error.strerror or error}"))
                continue
            if path.is_symlink() and not exists:
                rejected.append((rel, "a symbolic link to nothing (broken, or a loop)"))
            elif is_dir:
                inside = sum(1 for _ in path.iterdir()) if not path.is_symlink() else 0
                what = "a folder named like a video" if path.suffix.lower() in VIDEO_SUFFIXES else "a folder"
                rejected.append((rel, f"{what} inside a class folder ({inside} entries in it are not read): clips "
                                      "must sit directly in <class>/"))
            elif path.suffix.lower() not in VIDEO_SUFFIXES:
                rejected.append((rel, f"not a video file name (suffixes read: {' '.join(sorted(VIDEO_SUFFIXES))})"))
            elif problem := _unsafe_name(path.name):
                rejected.append((rel, f"file name {problem}: rename the file"))
            else:
                clips.append((f"{top.name}/{path.stem}", path))
    names = [c[0] for c in clips]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"clip names repeated under {raw_dir} (the same name with two suffixes): {dupes[:5]}")
    for rel, reason in rejected:
        log.warning("not a clip: %s: %s", rel, reason)
    return clips, rejected


def _unsafe_name(name: str) -> str:
    """Why a name cannot be a clip name ('' when it can): clip names are one line of a TSV and a log."""
    bad = [c for c in name if c in "\n\r\t" or not c.isprintable()]
    return f"has a control character ({', '.join(sorted({repr(c) for c in bad}))})" if bad else ""


def make_clip_table(raw_dir: str | Path, valid_per_class: dict[str, int] | int, shards: dict[str, int],
                    rejected_out: str | Path | None = None) -> pd.DataFrame:
    """Split by the VAS rule, then deal each split's sorted clips round-robin into its shards; what is not a
    clip goes to `rejected_out` (path, reason)."""
    from i2a.data.splits import assign_splits

    clips, rejected = find_clips(raw_dir)
    if rejected_out is not None:
        write_tsv(pd.DataFrame(rejected, columns=["path", "reason"]), rejected_out)
    if not clips:
        raise ValueError(f"no videos found under {raw_dir} (expected <class>/<clip>.mp4)")
    split_of = assign_splits([name for name, _ in clips], valid_per_class)
    rows = [{"clip": name, "class": name.split("/", 1)[0], "split": split_of[name], "path": str(path)}
            for name, path in clips]
    table = pd.DataFrame(rows)
    table["shard"] = 0
    for split, group in table.groupby("split"):
        if len(group) < shards[split]:
            raise ValueError(f"{len(group)} {split} clips under {raw_dir} cannot fill shards.{split}: "
                             f"{shards[split]}; set shards.{split} to at most {len(group)}")
        table.loc[group.index, "shard"] = np.arange(len(group)) % shards[split]
    return table[["clip", "class", "split", "shard", "path"]]


def read_clip_table(path: str | Path) -> pd.DataFrame:
    """A table write_tsv wrote: no quoting, backslash escapes, so any clip name (quotes, tabs) round-trips."""
    table = pd.read_csv(path, sep="\t", dtype=str, quoting=3, keep_default_na=False, escapechar="\\")
    if "shard" in table:
        table["shard"] = table["shard"].astype(int)
    return table


def write_tsv(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, quoting=3, escapechar="\\")


def preprocess_shard(table: pd.DataFrame, out_dir: str | Path, mel: MelSpec, seconds: float,
                     workers: int = 2, videos_only: bool = False) -> pd.DataFrame:
    """Run the SpecVQGAN chain over one shard's clips; bad clips are recorded with their reason.

    Memory stays flat whatever the shard size: mels are streamed to disk one at a time and at most
    2 x workers clips are in flight. `videos_only`: the 10 s videos alone (no wav kept, no mels), for clips whose
    mels come from elsewhere (the authors'); a clip without a video file (`path` empty) is skipped, with the reason.
    """
    from i2a.data.media import BadClip, preprocess_clip

    out_dir = Path(out_dir)
    (out_dir / "video").mkdir(parents=True, exist_ok=True)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)

    def one(item):
        row_number, row = item
        stem = f"{row_number:05d}"
        wav_path, video_path = out_dir / "wav" / f"{stem}.wav", out_dir / "video" / f"{stem}.mp4"
        if not row["path"]:
            return stem, "skipped", "no video file for this clip", None
        try:
            preprocess_clip(row["path"], video_path, wav_path, seconds=seconds, sample_rate=mel.sample_rate)
            if videos_only:
                wav_path.unlink()
                return stem, "ok", "", None
            spec = mel_spectrogram(read_wav(wav_path, mel.sample_rate), mel)
            return stem, "ok", "", spec
        except BadClip as bad:
            return stem, "skipped", " ".join(str(bad).split()), None

    records = []
    rows = list(enumerate(table.to_dict("records")))
    results = prefetched(one, rows, workers=max(1, workers), ahead=2 * max(1, workers))
    with contextlib.ExitStack() as stack:
        mels = None if videos_only else stack.enter_context(
            NpyRowWriter(out_dir / "mels.npy", (mel.n_mels, mel.keep_frames), np.float32))
        for (_, row), (stem, status, reason, spec) in tqdm(zip(rows, results), total=len(rows), desc="clips",
                                                           mininterval=10):
            records.append({"clip": row["clip"], "class": row["class"], "status": status, "reason": reason,
                            "file": stem})
            if spec is not None:
                mels.append(spec)
            elif status != "ok":
                log.warning("skipped %s: %s", row["clip"], reason)
    if videos_only:
        (out_dir / "wav").rmdir()
    manifest = pd.DataFrame(records, columns=["clip", "class", "status", "reason", "file"])
    write_tsv(manifest, out_dir / "clips.tsv")
    return manifest


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of a wav the chain wrote; a different rate is an error, not a silent resample."""
    from i2a.data.media import read_wav as read_wav_with_rate

    wav, rate = read_wav_with_rate(path)
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, expected {sample_rate}")
    return wav


@dataclass
class Shard:
    """Read side of a preprocessed shard folder."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        self.table = read_clip_table(self.root / "clips.tsv")
        self.ok = self.table[self.table["status"] == "ok"].reset_index(drop=True)

    @property
    def clips(self) -> list[str]:
        return list(self.ok["clip"])

    @property
    def classes(self) -> list[str]:
        return list(self.ok["class"])

    def video_paths(self) -> list[Path]:
        return [self.root / "video" / f"{f}.mp4" for f in self.ok["file"]]

    def wav_paths(self) -> list[Path]:
        return [self.root / "wav" / f"{f}.wav" for f in self.ok["file"]]

    def mels(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.root / "mels.npy", mmap_mode="r" if mmap else None)


def mel_spec_from_config(audio: dict) -> MelSpec:
    """The workflow's `audio` config section as a MelSpec (keys it lacks keep MelSpec's defaults)."""
    keys = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "keep_frames", "crop_frames")
    return MelSpec(**{k: audio[k] for k in keys if k in audio})


def split_mels(shard_dirs, crop_frames: int | None = None) -> np.ndarray:
    """All mels of a (small) split in memory, optionally centre-cropped; for the validation set and the demo."""
    from i2a.data.mel import center_crop

    arrays = [Shard(d).mels(mmap=True) for d in shard_dirs]
    mels = np.concatenate([np.asarray(a) for a in arrays], axis=0)
    return center_crop(mels, crop_frames) if crop_frames else mels


def split_clips(shard_dirs) -> pd.DataFrame:
    """The ok clips of a split, in the row order of its concatenated shard arrays."""
    return pd.concat([Shard(d).ok for d in shard_dirs], ignore_index=True)


VAS_CLASSES = ("baby", "cough", "dog", "drum", "fireworks", "gun", "hammer", "sneeze")


def collect_class_videos(unpacked: str | Path, dest: str | Path, classes=VAS_CLASSES) -> dict[str, int]:
    """Lay an unpacked archive out as dest/<class>/<clip>.mp4, whatever its inner folders.

    VAS.zip's layout is not documented: a video's class is the path component that names a class.
    """
    unpacked, dest = Path(unpacked), Path(dest)
    counts: dict[str, int] = {}
    for path in sorted(unpacked.rglob("*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
            continue
        parts = [p for p in path.relative_to(unpacked).parts[:-1] if p in classes]
        if not parts:
            log.warning("no class folder in %s: left out", path.relative_to(unpacked))
            continue
        target = dest / parts[-1] / path.name
        if target.exists():
            if target.stat().st_size != path.stat().st_size:
                raise ValueError(f"two different videos named {parts[-1]}/{path.name} in {unpacked}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
        counts[parts[-1]] = counts.get(parts[-1], 0) + 1
    if not counts:
        raise ValueError(f"no videos inside class folders ({', '.join(classes)}) under {unpacked}")
    return counts


def unpack_vas(archive: str | Path, dest: str | Path) -> dict[str, int]:
    """VAS.zip -> dest/<class>/<clip>.mp4; dest appears only once complete (a killed job leaves no half folder).

    An archive that turns out damaged is set aside with its recorded MD5, so that the next run downloads it afresh.
    """
    import shutil
    import zipfile
    import zlib

    from i2a.infra.download import DownloadError, discard_archive, unpack_zip

    dest, archive = Path(dest), Path(archive)
    staging = dest.with_name(dest.name + ".unpacked")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            unpack_zip(archive, staging)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            bad = discard_archive(archive)
            raise DownloadError(f"{archive} is damaged ({error}). It was moved aside to {bad} with its recorded "
                                "MD5; run the workflow again to download it afresh") from None
        with atomic_path(dest) as partial:
            counts = collect_class_videos(staging, partial)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def list_clips(raw_dir: str | Path, valid_per_class: dict[str, int] | int, shards: dict[str, int],
               out: str | Path, rejected_out: str | Path) -> pd.DataFrame:
    """The workflow's list_clips job: clips.tsv with every clip's class, split (the VAS rule) and shard, and
    rejected.tsv with everything under raw_dir that is not a clip and why."""
    table = make_clip_table(raw_dir, valid_per_class, shards, rejected_out)
    write_tsv(table, out)
    log.info("%d clips: %s", len(table), table.groupby("split").size().to_dict())
    return table


def preprocess_split_shard(clips_tsv: str | Path, split: str, shard: int, audio: dict, out_dir: str | Path,
                           workers: int = 2) -> pd.DataFrame:
    """The workflow's preprocess_clips job: one shard of a split through the chain; the folder appears complete."""
    table = read_clip_table(clips_tsv)
    table = table[(table["split"] == split) & (table["shard"] == shard)]
    with atomic_path(out_dir) as tmp:
        manifest = preprocess_shard(table, tmp, mel_spec_from_config(audio), seconds=audio["seconds"],
                                    workers=workers)
    log.info("%s shard %d: %s", split, shard, manifest["status"].value_counts().to_dict())
    return manifest
