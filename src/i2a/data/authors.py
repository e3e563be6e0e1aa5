"""The SpecVQGAN authors' own VAS inputs (`vas.source: authors`): their precomputed mel spectrograms and ResNet50
frame features, one tar file per class and kind, checked against their MD5 list, and their official split lists.

With these the released transformers are scored on exactly the inputs they were trained and evaluated on, so a
gap between a measured and a published number can no longer come from this workflow's data chain (ffmpeg, mel,
frame decoding, feature extraction): set against the same models scored on the workflow's own inputs (`vas.source:
download` or `local`, another results folder), the data chain's effect on FID and MKL is the difference.

The files (design.md §10): `<base>/vas/<class>_<kind>.tar`, kinds `melspec_10s_22050hz` ((80, 860) float32 .npy
per clip, `<clip>_mel.npy`) and `feature_resnet50_dim2048_21.5fps` ((T, 2048) float32 pickled numpy array per
clip, `<clip>.pkl`, T = 215 frames tiled as SpecVQGAN's README says). What the tars hold inside their folders is
not documented: members are found by their file names, and a clip's class is the one the tar file names.
The tars are read in place (no unpacking: 24 GB stay 24 GB); each shard job reads only its own clips' members.
Torch-free, except `import_features_shard`, which uses the feature stage's padding.
"""
from __future__ import annotations

import io
import logging
import pickle
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from i2a.infra.download import open_tar
from i2a.spec.released import BASE_URL

log = logging.getLogger(__name__)

AUTHORS_URL = f"{BASE_URL}/vas"
# SpecVQGAN's data/vas_{train,valid}.txt at a fixed commit (the lists every published VAS number used)
SPLITS_URL = "https://raw.githubusercontent.com/v-iashin/SpecVQGAN/5bc54f30eb89f82d129aa36ae3f1e90b60e73952/data"
SPLIT_FILES = {"train": "vas_train.txt", "valid": "vas_valid.txt"}
MELS = "melspec_10s_22050hz"
RESNET50 = "feature_resnet50_dim2048_21.5fps"
KINDS = (MELS, RESNET50)
# the backbones the authors published VAS features of; any other backbone's are extracted here from the VAS videos
FEATURES = {"resnet50": RESNET50}
# The most bytes one member can hold: a mel is (80, 860), a clip's features at most 215 frames (tiled up to 215 when
# shorter), by 8 bytes (float64 at most), with twice the frames and 64 KiB for headers as slack. A larger member is
# refused before a byte of it is read: a small gzip'd tar can hold a member of gigabytes.
MAX_MEMBER_BYTES = {MELS: 80 * 860 * 8 + (1 << 16), RESNET50: 2 * 215 * 2048 * 8 + (1 << 16)}


class MemberTooLarge(ValueError):
    """A tar member larger than any mel or feature file can be."""

# SpecVQGAN's data/md5sum_vas.md5, verbatim: the authors' MD5 of every tar they publish for VAS
AUTHORS_MD5_LIST = """\
c2ca29dc204b26f7f5874ce69f341082  ./downloaded_features/baby_feature_flow_bninception_dim1024_21.5fps.tar
9aafcb00c963acf3af9dbbd323982e36  ./downloaded_features/baby_feature_rgb_bninception_dim1024_21.5fps.tar
16744bae9f6ffecc23ec4a2d843ccf5d  ./downloaded_features/baby_feature_resnet50_dim2048_21.5fps.tar
637c44028e14b9b2a402677391d15a7c  ./downloaded_features/baby_melspec_10s_22050hz.tar
ad1043a90d5dcb4a4756c4a5b1bc50b6  ./downloaded_features/cough_feature_flow_bninception_dim1024_21.5fps.tar
21ee13e9bf9320263124b1f8803b419b  ./downloaded_features/cough_feature_rgb_bninception_dim1024_21.5fps.tar
5c3847f6686cae37645b1985317f2522  ./downloaded_features/cough_feature_resnet50_dim2048_21.5fps.tar
a28a6d5c4870903e69c1862e56305c65  ./downloaded_features/cough_melspec_10s_22050hz.tar
246fd75ca37a60e6fa77cbf9dd65c7d3  ./downloaded_features/dog_feature_flow_bninception_dim1024_21.5fps.tar
adfbbf3c1735ba7bed5d56321b669834  ./downloaded_features/dog_feature_rgb_bninception_dim1024_21.5fps.tar
5523026f873e5e495724be8f63819698  ./downloaded_features/dog_feature_resnet50_dim2048_21.5fps.tar
b512318d5815539f018f4884747102f6  ./downloaded_features/dog_melspec_10s_22050hz.tar
e1f5a289180a8852c12fef4051a2d4bd  ./downloaded_features/drum_feature_flow_bninception_dim1024_21.5fps.tar
13a3378bfe154515f028bb1f45877e57  ./downloaded_features/drum_feature_rgb_bninception_dim1024_21.5fps.tar
ec9e05362e82f2f980c4444626bad810  ./downloaded_features/drum_feature_resnet50_dim2048_21.5fps.tar
7ad30685d7d0e9ae412fa031be9e08ce  ./downloaded_features/drum_melspec_10s_22050hz.tar
8ac8a7141af2992f66e42ecdc121ebac  ./downloaded_features/fireworks_feature_flow_bninception_dim1024_21.5fps.tar
8608b0eaf2f2731ddc18a0890d0d04ae  ./downloaded_features/fireworks_feature_rgb_bninception_dim1024_21.5fps.tar
e45f1b05a954bd30b8086e47c2b29ba3  ./downloaded_features/fireworks_feature_resnet50_dim2048_21.5fps.tar
f641ab60ef4db208562b524cdb05669a  ./downloaded_features/fireworks_melspec_10s_22050hz.tar
1820ed55415b32aac78ddb585fbe3bce  ./downloaded_features/gun_feature_flow_bninception_dim1024_21.5fps.tar
9863433bee12387863659b8b7f4d26c9  ./downloaded_features/gun_feature_rgb_bninception_dim1024_21.5fps.tar
313b3ecb1d865c5d608990b9f36fc8bf  ./downloaded_features/gun_feature_resnet50_dim2048_21.5fps.tar
8489604751cf42cb77033773769303b3  ./downloaded_features/gun_melspec_10s_22050hz.tar
3a711830af0ea7d242bc5334d2e01393  ./downloaded_features/hammer_feature_flow_bninception_dim1024_21.5fps.tar
c4c71ead5fd3ddb9eeaafa0ab6a991c4  ./downloaded_features/hammer_feature_rgb_bninception_dim1024_21.5fps.tar
c78943a3203a7087b03ad5bf203aa1e3  ./downloaded_features/hammer_feature_resnet50_dim2048_21.5fps.tar
04cecbbba97f5ce462469f06bc36607c  ./downloaded_features/hammer_melspec_10s_22050hz.tar
d33007af5bb626438c372c2e0fcf4644  ./downloaded_features/sneeze_feature_flow_bninception_dim1024_21.5fps.tar
e4c91d575883b62c0ef7781e9906daa6  ./downloaded_features/sneeze_feature_rgb_bninception_dim1024_21.5fps.tar
bbd56e8927033f846b87a4fd3902cabc  ./downloaded_features/sneeze_feature_resnet50_dim2048_21.5fps.tar
6db969f5ad69f667470d73e917d76ea6  ./downloaded_features/sneeze_melspec_10s_22050hz.tar
"""
# the split lists at SPLITS_URL (the authors publish no sums for them: these are of the files at that commit)
SPLIT_LIST_MD5 = """\
eb6ba9e4134e67aeecf9eb728977b1a6  vas_train.txt
30373a9c5666d456b0c6f444e59f0b42  vas_valid.txt
"""


def parse_checksums(text: str) -> dict[str, str]:
    """An `md5sum` list ("<md5>  <path>" per line) as {file name: md5}; the folders in the paths do not matter."""
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise ValueError(f"checksum list line {number}: expected '<md5>  <file>', got {line!r}")
        sums[parts[1].strip().lstrip("*").rsplit("/", 1)[-1]] = parts[0].lower()
    return sums


def checksums(path: str | Path | None = None) -> dict[str, str]:
    """The MD5 of every file of the authors' source: from `path` (a list in md5sum's format, e.g. for a mirror
    or a test server), or by default the authors' own list plus the two split lists."""
    text = Path(path).read_text() if path else AUTHORS_MD5_LIST + SPLIT_LIST_MD5
    return parse_checksums(text)


def inputs_of(features: str) -> str:
    """A row's `inputs` on the authors' source: the authors' mels and features (theirs, or none), or their mels with
    features derived here from the VAS videos."""
    return "authors" if features in ("none", *FEATURES) else "authors mels, derived features"


def tar_name(cls: str, kind: str) -> str:
    return f"{cls}_{kind}.tar"


def classes(sums: dict[str, str]) -> list[str]:
    """The classes the checksum list has mel spectrograms for."""
    suffix = f"_{MELS}.tar"
    return sorted(name[: -len(suffix)] for name in sums if name.endswith(suffix))


def needed_files(sums: dict[str, str], features: bool) -> list[str]:
    """The files to download: the split lists, every class's mels, and its ResNet50 features if a run uses them."""
    kinds = KINDS if features else (MELS,)
    names = [*SPLIT_FILES.values()] + [tar_name(c, k) for c in classes(sums) for k in kinds]
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"the checksum list has no MD5 for {', '.join(missing)}")
    return names


def file_url(name: str, url: str = AUTHORS_URL, splits_url: str = SPLITS_URL) -> str:
    return f"{(splits_url if name in SPLIT_FILES.values() else url).rstrip('/')}/{name}"


# ------------------------------------------------------------------------------------------------ clip table
def read_split_list(path: str | Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    bad = [n for n in names if n.count("/") != 1]
    if bad:
        raise ValueError(f"{path}: expected '<class>/<clip>' per line, got {bad[:3]}")
    return names


def authors_clip_table(split_lists: dict[str, str | Path], shards: dict[str, int]) -> pd.DataFrame:
    """The clip table of the official split lists: every listed clip with its class, split and shard (each split's
    sorted clips dealt round-robin into its shards, as for the workflow's own clips); no video path."""
    rows = []
    for split in ("train", "valid"):
        names = sorted(read_split_list(split_lists[split]))
        rows += [{"clip": name, "class": name.split("/", 1)[0], "split": split, "shard": k % shards[split],
                  "path": ""} for k, name in enumerate(names)]
    table = pd.DataFrame(rows, columns=["clip", "class", "split", "shard", "path"])
    repeated = table["clip"][table["clip"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"clips listed twice in the split lists: {repeated[:5]}")
    return table


# ------------------------------------------------------------------------------------------------ tar members
class AuthorsTar:
    """One of the authors' tar files, its members indexed by clip name (`<class>/<stem>`), read in place."""

    def __init__(self, path: str | Path, cls: str, kind: str):
        self.path, self.cls, self.kind = Path(path), cls, kind
        suffix = "_mel.npy" if kind == MELS else ".pkl"
        self.tar = open_tar(self.path)
        self.members: dict[str, tarfile.TarInfo] = {}
        for info in self.tar:
            name = info.name.rsplit("/", 1)[-1]
            if info.isfile() and name.endswith(suffix) and not name.startswith("."):
                self.members[f"{cls}/{name[: -len(suffix)]}"] = info

    def __contains__(self, clip: str) -> bool:
        return clip in self.members

    def read(self, clip: str) -> np.ndarray:
        info, limit = self.members[clip], MAX_MEMBER_BYTES[self.kind]
        if info.size > limit:
            raise MemberTooLarge(f"{info.name} in {self.path.name} holds {info.size} bytes, more than a "
                                 f"{'mel' if self.kind == MELS else 'feature'} file can be ({limit})")
        data = self.tar.extractfile(info).read()
        if self.kind == MELS:
            return np.load(io.BytesIO(data), allow_pickle=False)
        return load_pickled_array(data)

    def close(self) -> None:
        self.tar.close()


def open_tars(paths: Iterable[str | Path], kind: str) -> dict[str, AuthorsTar]:
    """{class: AuthorsTar} for tar files named `<class>_<kind>.tar`."""
    tars = {}
    for path in paths:
        name = Path(path).name
        if not name.endswith(f"_{kind}.tar"):
            raise ValueError(f"{path} is not a {kind} tar of the authors (<class>_{kind}.tar)")
        cls = name[: -len(f"_{kind}.tar")]
        tars[cls] = AuthorsTar(path, cls, kind)
    return tars


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles a numpy array and nothing else: the pickles come from a download, so no other callable may run."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        module = module.replace("numpy.core.", "numpy._core.")  # pickled by numpy 1.x
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)


def load_pickled_array(data: bytes) -> np.ndarray:
    array = _ArrayUnpickler(io.BytesIO(data)).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"expected a pickled numpy array, got {type(array).__name__}")
    return array


# ------------------------------------------------------------------------------------------------ shards
def import_mels_shard(clip_table: pd.DataFrame, mel_tars: Iterable[str | Path], out_dir: str | Path,
                      n_mels: int = 80, keep_frames: int = 860) -> pd.DataFrame:
    """A data shard folder (clips.tsv, mels.npy; see i2a.data.clips) from the authors' mel spectrograms of the
    shard's clips, stored as they are. A clip without a mel in the tars, or with one of another shape, is listed
    as skipped with the reason, as the workflow's own chain lists a clip it cannot decode."""
    from i2a.data.clips import write_tsv
    from i2a.data.store import NpyRowWriter
    from i2a.infra.atomic import atomic_path

    tars = open_tars(mel_tars, MELS)
    records = []
    try:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            with NpyRowWriter(tmp / "mels.npy", (n_mels, keep_frames), np.float32) as mels:
                for number, row in enumerate(clip_table.to_dict("records")):
                    clip, cls = row["clip"], row["class"]
                    status, reason = "ok", ""
                    if cls not in tars or clip not in tars[cls]:
                        status, reason = "skipped", f"no mel spectrogram in the authors' {tar_name(cls, MELS)}"
                    else:
                        try:
                            mel = tars[cls].read(clip)
                        except MemberTooLarge as error:
                            mel, status, reason = None, "skipped", str(error)
                        if mel is not None and mel.shape != (n_mels, keep_frames):
                            status, reason = "skipped", (f"the authors' mel has shape {mel.shape}, not "
                                                         f"({n_mels}, {keep_frames}) (audio.n_mels, audio.keep_frames)")
                        elif mel is not None:
                            mels.append(mel)
                    if status != "ok":
                        log.warning("skipped %s: %s", clip, reason)
                    records.append({"clip": clip, "class": cls, "status": status, "reason": reason,
                                    "file": f"{number:05d}"})
            manifest = pd.DataFrame(records, columns=["clip", "class", "status", "reason", "file"])
            write_tsv(manifest, tmp / "clips.tsv")
    finally:
        for tar in tars.values():
            tar.close()
    log.info("%d clips of the authors' mels, %d skipped -> %s", (manifest["status"] == "ok").sum(),
             (manifest["status"] != "ok").sum(), out_dir)
    return manifest


def import_features_shard(shard_dir: str | Path, feature_tars: Iterable[str | Path], out_npy: str | Path,
                          index_out: str | Path, total: int = 215, crop: int = 212, dtype: str = "float32") -> None:
    """The ResNet50 feature shard of a data shard's clips (row i = the shard's i-th usable clip, as the tokens),
    from the authors' per-clip features: tiled to `total` frames and centre-cropped to `crop` exactly as the
    workflow pads the features it extracts itself, stored as `dtype`."""
    from i2a.data.clips import Shard, write_tsv
    from i2a.data.store import NpyRowWriter
    from i2a.spec.frames import pad_and_crop

    shard = Shard(shard_dir)
    tars = open_tars(feature_tars, RESNET50)
    try:
        missing = [c for c, cls in zip(shard.clips, shard.classes) if cls not in tars or c not in tars[cls]]
        if missing:
            raise ValueError(f"{len(missing)} clips have the authors' mel spectrogram but no ResNet50 features in "
                             f"their tars ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
        with NpyRowWriter(out_npy, (crop, 2048), dtype) as out:
            for clip, cls in zip(shard.clips, shard.classes):
                feats = tars[cls].read(clip)
                if feats.ndim != 2 or feats.shape[1] != 2048 or len(feats) == 0:
                    raise ValueError(f"{clip}: the authors' ResNet50 features have shape {feats.shape}, "
                                     "expected (frames, 2048)")
                out.append(pad_and_crop(np.asarray(feats, dtype=np.float32), total, crop))
    finally:
        for tar in tars.values():
            tar.close()
    index = shard.ok[["clip", "class"]].copy()
    index["status"], index["reason"] = "ok", ""  # the index extract_features writes: every clip has its features
    write_tsv(index, index_out)
    log.info("%d clips' ResNet50 features of the authors -> %s (%s)", len(shard.clips), out_npy, dtype)


# ------------------------------------------------------------------------------------------------ the jobs
def list_authors_clips(split_lists: dict[str, str | Path], shards: dict[str, int], out: str | Path,
                       rejected_out: str | Path) -> pd.DataFrame:
    """The workflow's list_authors_clips job: the clip table of the official split lists (and, as list_clips
    writes one, an empty table of rejected files: the lists name clips, not files)."""
    from i2a.data.clips import write_tsv

    table = authors_clip_table(split_lists, shards)
    write_tsv(table, out)
    write_tsv(pd.DataFrame(columns=["path", "reason"]), rejected_out)
    log.info("%s", table.groupby("split")["clip"].count().to_dict())
    return table


def preprocess_authors_videos(shard_dir: str | Path, raw_dir: str | Path, out_dir: str | Path,
                              seconds: float = 10.0, sample_rate: int = 22050, workers: int = 2) -> pd.DataFrame:
    """The workflow's preprocess_authors_videos job: the 10 s videos of a data shard's clips (the authors' mels),
    found by name under `raw_dir` (<class>/<clip>.mp4, the VAS videos) and put through the workflow's chain, one
    row per clip of the shard in its order, for the backbones whose features the authors did not publish. A clip
    without a video there is listed as skipped, with the reason (its features are then a row of NaN)."""
    from i2a.data.clips import Shard, find_clips, preprocess_shard
    from i2a.data.mel import MelSpec
    from i2a.infra.atomic import atomic_path

    clips = Shard(shard_dir).ok[["clip", "class"]].copy()
    paths = {name: str(path) for name, path in find_clips(raw_dir)[0]}
    clips["path"] = [paths.get(clip, "") for clip in clips["clip"]]
    with atomic_path(out_dir) as tmp:
        manifest = preprocess_shard(clips, tmp, MelSpec(sample_rate=sample_rate), seconds, workers=workers,
                                    videos_only=True)
    log.info("videos of %d of the shard's %d clips -> %s", (manifest["status"] == "ok").sum(), len(manifest),
             out_dir)
    return manifest


def import_mels_split_shard(clips_tsv: str | Path, split: str, shard: int, mel_tars: Iterable[str | Path],
                            out_dir: str | Path, n_mels: int = 80, keep_frames: int = 860) -> pd.DataFrame:
    """The workflow's import_authors_mels job: one shard of a split, as preprocess_clips would make it."""
    from i2a.data.clips import read_clip_table

    table = read_clip_table(clips_tsv)
    table = table[(table["split"] == split) & (table["shard"] == shard)]
    return import_mels_shard(table, mel_tars, out_dir, n_mels, keep_frames)
