"""`vas.source: authors`: SpecVQGAN's precomputed VAS mels and ResNet50 features, downloaded from a loopback HTTP
server (two tiny tar files of one class and a checksum list), checked, resumed, and imported where the workflow's
own data chain puts its shards; the authors' sample files of ../shared imported bit for bit."""
from __future__ import annotations

import copy
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, shared_path
from loopback import ranged, serve, tar_bytes
from i2a.data import authors
from i2a.data.clips import Shard, read_clip_table
from i2a.spec.frames import pad_and_crop
from workflow_helpers import copy_workflow, job_counts, snakemake

MELS_TAR = "dog_melspec_10s_22050hz.tar"
FEATS_TAR = "dog_feature_resnet50_dim2048_21.5fps.tar"
CLIPS = ["dog/video_00001", "dog/video_00002", "dog/video_00003", "dog/video_00004"]
LISTS = {"vas_train.txt": "dog/video_00001\ndog/video_00002\ndog/video_00003\n",
         "vas_valid.txt": "dog/video_00004\ndog/video_00005\n"}  # video_00005 is in no tar: listed, skipped


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def toy_inputs(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, bytes]]:
    """The authors' files for one class in miniature: (80, 860) mels, (T, 2048) features of 10 to 13 frames."""
    rng = np.random.default_rng(seed)
    mels = {c: rng.random((80, 860), dtype=np.float32) for c in CLIPS}
    feats = {c: rng.random((10 + k, 2048), dtype=np.float32) for k, c in enumerate(CLIPS)}
    # the inner layout differs between the two kinds: members are found by their file names
    files = {MELS_TAR: tar_bytes({f"dog/melspec_10s_22050hz/{c.split('/')[1]}_mel.npy": npy_bytes(m)
                                  for c, m in mels.items()}),
             FEATS_TAR: tar_bytes({f"./feature_resnet50_dim2048_21.5fps/{c.split('/')[1]}.pkl": pickle.dumps(f)
                                   for c, f in feats.items()}),
             **{name: text.encode() for name, text in LISTS.items()}}
    return mels, feats, files


def checksum_list(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.md5(data).hexdigest()}  ./downloaded_features/{name}\n" for name, data in files.items())


class FileServer:
    """What the loopback server serves under /vas/ and /lists/ (Range honoured: resumed downloads), and every
    request it got."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []


def _respond(path, range_header):
    name = path.rsplit("/", 1)[-1]
    FileServer.requests.append((name, range_header))
    return ranged(FileServer.files[name], range_header) if name in FileServer.files else (404, b"", "")


@pytest.fixture(scope="module")
def server():
    with serve(_respond) as base:
        yield base


# ---------------------------------------------------------------- the checksum list and the files it names
def test_the_authors_list_covers_every_class_and_kind():
    sums = authors.checksums()
    assert authors.classes(sums) == ["baby", "cough", "dog", "drum", "fireworks", "gun", "hammer", "sneeze"]
    assert sums["dog_melspec_10s_22050hz.tar"] == "b512318d5815539f018f4884747102f6"
    assert sums["sneeze_feature_resnet50_dim2048_21.5fps.tar"] == "bbd56e8927033f846b87a4fd3902cabc"
    assert len(authors.needed_files(sums, features=True)) == 2 + 8 * 2
    assert not any("resnet50" in f for f in authors.needed_files(sums, features=False))
    assert authors.file_url("vas_valid.txt").startswith("https://raw.githubusercontent.com/v-iashin/SpecVQGAN/")
    assert authors.file_url("dog_melspec_10s_22050hz.tar") == (
        f"{registry_base()}/vas/dog_melspec_10s_22050hz.tar")


def registry_base() -> str:
    from i2a.spec.released import BASE_URL

    return BASE_URL


def test_the_split_list_sums_are_those_of_the_official_lists():
    sums = authors.checksums()
    for name in ("vas_train.txt", "vas_valid.txt"):
        assert hashlib.md5(shared_path("data", name).read_bytes()).hexdigest() == sums[name]


def test_a_checksum_list_with_a_bad_line_is_refused():
    with pytest.raises(ValueError, match="line 2"):
        authors.parse_checksums("b512318d5815539f018f4884747102f6  a.tar\nnot a sum\n")


def test_pickles_other_than_numpy_arrays_are_refused():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(authors.load_pickled_array(pickle.dumps(array)), array)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        authors.load_pickled_array(pickle.dumps(print))


# ---------------------------------------------------------------- import
def test_import_writes_the_shards_the_chain_would_and_skips_what_is_missing(tmp_path):
    mels, feats, files = toy_inputs()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    lists = {"train": tmp_path / "vas_train.txt", "valid": tmp_path / "vas_valid.txt"}
    table = authors.authors_clip_table(lists, {"train": 2, "valid": 1})
    assert list(table["clip"]) == CLIPS[:3] + ["dog/video_00004", "dog/video_00005"]
    assert list(table["shard"]) == [0, 1, 0, 0, 0]
    valid = table[table["split"] == "valid"]
    manifest = authors.import_mels_shard(valid, [tmp_path / MELS_TAR], tmp_path / "shard")
    assert list(manifest["status"]) == ["ok", "skipped"] and "no mel spectrogram" in manifest["reason"][1]
    shard = Shard(tmp_path / "shard")
    assert shard.clips == ["dog/video_00004"] and np.array_equal(shard.mels()[0], mels["dog/video_00004"])
    authors.import_features_shard(tmp_path / "shard", [tmp_path / FEATS_TAR], tmp_path / "f.npy", tmp_path / "f.tsv")
    stored = np.load(tmp_path / "f.npy")
    assert stored.shape == (1, 212, 2048) and stored.dtype == np.float32
    assert np.array_equal(stored[0], pad_and_crop(feats["dog/video_00004"], 215, 212))
    assert list(read_clip_table(tmp_path / "f.tsv")["clip"]) == ["dog/video_00004"]


def test_the_authors_sample_files_are_imported_bit_for_bit(tmp_path):
    """The ten clips of ../shared packed as the authors pack them: mels as they are, features padded and cropped
    as SpecVQGAN's loader does (215 frames, centre 212)."""
    samples = shared_path("data", "vas-samples", "features")
    by_class: dict[str, dict[str, dict[str, bytes]]] = {}
    for path in sorted(samples.glob("*/*/*")):
        cls, kind = path.parts[-3], path.parts[-2]
        by_class.setdefault(cls, {}).setdefault(kind, {})[f"{kind}/{path.name}"] = path.read_bytes()
    tars = {}
    for cls, kinds in by_class.items():
        for kind, members in kinds.items():
            tars[kind, cls] = tmp_path / authors.tar_name(cls, kind)
            tars[kind, cls].write_bytes(tar_bytes(members))
    clips = sorted(f"{p.parts[-3]}/{p.stem.removesuffix('_mel')}" for p in samples.glob("*/melspec_10s_22050hz/*"))
    (tmp_path / "train.txt").write_text("\n".join(clips) + "\n")
    (tmp_path / "valid.txt").write_text("")
    table = authors.authors_clip_table({"train": tmp_path / "train.txt", "valid": tmp_path / "valid.txt"},
                                       {"train": 1, "valid": 1})
    mel_tars = [p for (kind, _), p in tars.items() if kind == authors.MELS]
    authors.import_mels_shard(table, mel_tars, tmp_path / "shard")
    feature_tars = [p for (kind, _), p in tars.items() if kind == authors.RESNET50]
    authors.import_features_shard(tmp_path / "shard", feature_tars, tmp_path / "f.npy", tmp_path / "f.tsv")
    shard, feats = Shard(tmp_path / "shard"), np.load(tmp_path / "f.npy")
    assert shard.clips == clips and len(clips) == 10
    for row, clip in enumerate(clips):
        cls, name = clip.split("/")
        assert np.array_equal(shard.mels()[row], np.load(samples / cls / "melspec_10s_22050hz" / f"{name}_mel.npy"))
        with open(samples / cls / "feature_resnet50_dim2048_21.5fps" / f"{name}.pkl", "rb") as fh:
            golden = pickle.load(fh)
        assert np.array_equal(feats[row], golden[1:213])


# ---------------------------------------------------------------- through the workflow
def authors_config(server: str, sums: str) -> dict:
    return {"results": "results/authors", "logs": "logs/authors", "dataset": "vas", "threads": 1,
            "vas": {"source": "authors", "authors": {"url": f"{server}/vas", "splits_url": f"{server}/lists",
                                                     "checksums": sums}},
            "shards": {"train": 2, "valid": 1},
            "runs": [{"name": "r50-1feat", "features": "resnet50", "source": "released", "released": "resnet50_1feat",
                      "feat_sample_size": 1, "layers": 24, "heads": 16, "embed": 1024},
                     {"name": "no-feats", "features": "none", "source": "released", "released": "no_feats",
                      "feat_sample_size": 1, "layers": 24, "heads": 16, "embed": 1024}]}


@pytest.fixture(scope="module")
def authors_run(server, tmp_path_factory):
    mels, feats, files = toy_inputs()
    FileServer.files, FileServer.requests = files, []
    workdir = copy_workflow(tmp_path_factory.mktemp("authors"))
    (workdir / "sums.md5").write_text(checksum_list(files))
    (workdir / "authors.yaml").write_text(yaml.safe_dump(authors_config(server, "sums.md5")))
    # a download that broke off after 1000 bytes: the rule continues it
    part = workdir / "resources/vas/authors" / f"{MELS_TAR}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[MELS_TAR][:1000])
    targets = [f"results/authors/data/{s}" for s in ("train/shard000", "train/shard001", "valid/shard000")]
    targets += [f"results/authors/features/resnet50/{s}.npy" for s in ("train/shard000", "train/shard001",
                                                                        "valid/shard000")]
    result = snakemake(*targets, "--cores", "2", "--configfile", "authors.yaml", cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return workdir, mels, feats, files


def test_the_workflow_downloads_checks_and_resumes_the_authors_files(authors_run):
    workdir, _, _, files = authors_run
    for name, data in files.items():
        assert (workdir / "resources/vas/authors" / name).read_bytes() == data
    assert (MELS_TAR, "bytes=1000-") in FileServer.requests  # continued, not started over
    assert {name for name, _ in FileServer.requests} == set(files)  # every file once, the split lists included


def test_the_workflow_imports_the_authors_mels_and_features_into_its_shards(authors_run):
    workdir, mels, feats, _ = authors_run
    results = workdir / "results/authors"
    clips = read_clip_table(results / "data/clips.tsv")
    assert list(clips["clip"]) == CLIPS[:3] + ["dog/video_00004", "dog/video_00005"]
    for split_shard in ("train/shard000", "train/shard001", "valid/shard000"):
        shard = Shard(results / "data" / split_shard)
        stored = np.load(results / "features/resnet50" / f"{split_shard}.npy")
        assert stored.shape == (len(shard.clips), 212, 2048)
        for row, clip in enumerate(shard.clips):
            assert np.array_equal(shard.mels()[row], mels[clip])
            assert np.array_equal(stored[row], pad_and_crop(feats[clip], 215, 212))
    valid = Shard(results / "data/valid/shard000").table
    assert valid.set_index("clip").at["dog/video_00005", "status"] == "skipped"
    # no ffmpeg chain and no feature extraction ran: the authors' inputs are used as they are
    assert not (workdir / "logs/authors/preprocess_clips").exists()
    assert not (workdir / "logs/authors/extract_features").exists()


def test_the_released_models_are_scored_on_the_authors_inputs(authors_run, server):
    """The table's plan on the authors' source: the imported shards feed the codebook, sampling and the real
    reference; nothing is derived from videos."""
    workdir, *_ = authors_run
    result = snakemake("-n", "results/authors/table.csv", "--configfile", "authors.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["sample_tokens"] == 2 and counts["score_reference"] == 1 and counts["reconstruct_validation"] == 1
    assert not {"download_vas", "unpack_vas", "list_clips", "preprocess_clips", "extract_features",
                "fetch_weights", "download_authors_vas", "import_authors_mels"} & set(counts)


def test_a_file_that_does_not_match_the_list_fails_the_download(server, tmp_path):
    _, _, files = toy_inputs()
    FileServer.files = files
    workdir = copy_workflow(tmp_path / "wf")
    wrong = checksum_list(files).replace(hashlib.md5(files[FEATS_TAR]).hexdigest(), "0" * 32)
    (workdir / "sums.md5").write_text(wrong)
    (workdir / "authors.yaml").write_text(yaml.safe_dump(authors_config(server, "sums.md5")))
    result = snakemake(f"resources/vas/authors/{FEATS_TAR}", "--cores", "1", "--configfile", "authors.yaml",
                       cwd=workdir, timeout=300)
    assert result.returncode != 0
    log = (workdir / "logs/authors/download_authors_vas" / f"{FEATS_TAR}.log").read_text()
    assert "does not match" in log
    assert not (workdir / "resources/vas/authors" / FEATS_TAR).exists()


def test_a_videos_folder_for_the_authors_clips_must_exist(tmp_path):
    from i2a.spec.config import ConfigError, validate_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["vas"] = {"source": "authors"}  # every backbone: ResNet50 the authors', the others from VAS.zip's videos
    validate_config(copy.deepcopy(config), REPO / "workflow/schemas/config.schema.yaml")
    config["vas"]["local_dir"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="vas.local_dir: .*nowhere is not a folder"):
        validate_config(config, REPO / "workflow/schemas/config.schema.yaml")


# ---------------------------------------------------------------- the authors' mels with features derived here
def hybrid_config(local_dir) -> dict:
    """The authors' mels, their ResNet50 features for a ResNet50 run, and CLIP and EfficientNetV2-S features derived
    here from the VAS videos of vas.local_dir, as the study did."""
    return {"results": "results/hybrid", "dataset": "vas",
            "vas": {"source": "authors", "local_dir": str(local_dir)}, "shards": {"train": 3, "valid": 2},
            "runs": [{"name": "r50", "features": "resnet50", "feat_sample_size": 1},
                     {"name": "clip", "features": "clip_vit_b32", "feat_sample_size": 1},
                     {"name": "effv2s", "features": "efficientnet_v2_s", "feat_sample_size": 1}]}


def test_other_backbones_on_the_authors_inputs_are_extracted_from_the_videos_of_the_authors_clips(tmp_path):
    """The authors publish ResNet50 features only: a run on another backbone has its features extracted here, clip
    for clip the authors' mels (their split lists, their shards), from the VAS videos put through the chain."""
    import re

    (tmp_path / "vas/dog").mkdir(parents=True)
    (tmp_path / "hybrid.yaml").write_text(yaml.safe_dump(hybrid_config(tmp_path / "vas")))
    workdir = copy_workflow(tmp_path / "wf")
    result = snakemake("-n", "results/hybrid/table.csv", "--configfile", str(tmp_path / "hybrid.yaml"), cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["import_authors_mels"] == counts["preprocess_authors_videos"] == 5
    assert counts["import_authors_features"] == 5  # ResNet50: the authors' own
    assert counts["extract_features"] == 2 * 5  # CLIP and EfficientNetV2-S: here, from the videos
    assert "preprocess_clips" not in counts and "list_clips" not in counts
    extracted = set(re.findall(r"wildcards: backbone=(\w+), split", result.stdout))
    assert extracted == {"clip_vit_b32", "efficientnet_v2_s"}
    assert "input: results/hybrid/data/train/shard000, results/hybrid/videos/train/shard000" in result.stdout


def test_the_videos_of_the_authors_clips_give_their_features_row_for_row(tmp_path):
    """Each of a data shard's clips gets its row of features from its own video; a clip without a video in the VAS
    folder gets a row of NaN and the reason (left out of training; sampling stops naming it)."""
    from media_files import toy_clip, write_streams

    from i2a.features.extract import extract_shard

    _, _, files = toy_inputs()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    table = authors.authors_clip_table({"train": tmp_path / "vas_train.txt", "valid": tmp_path / "vas_valid.txt"},
                                       {"train": 1, "valid": 1})
    authors.import_mels_shard(table[table["split"] == "train"], [tmp_path / MELS_TAR], tmp_path / "shard")
    raw = tmp_path / "vas"
    (raw / "dog").mkdir(parents=True)
    for seed, clip in enumerate(["video_00001", "video_00003"]):
        frames, audio = toy_clip(1.0, seed=seed)
        write_streams(raw / "dog" / f"{clip}.mp4", frames, audio)
    manifest = authors.preprocess_authors_videos(tmp_path / "shard", raw, tmp_path / "videos", seconds=2.0)
    assert list(manifest["clip"]) == CLIPS[:3]  # the data shard's clips, in its order
    assert list(manifest["status"]) == ["ok", "skipped", "ok"] and "no video" in manifest["reason"][1]
    extract_shard("resnet18", {"weights": "none", "image_size": 32, "batch_size": 64},
                  {"fps": 21.5, "total": 45, "crop": 40}, "float32", tmp_path / "shard", tmp_path / "f.npy",
                  tmp_path / "f.tsv", workers=1, videos_dir=tmp_path / "videos")
    feats, index = np.load(tmp_path / "f.npy"), read_clip_table(tmp_path / "f.tsv")
    assert feats.shape == (3, 40, 512) and list(index["clip"]) == CLIPS[:3]
    assert np.isfinite(feats[[0, 2]]).all() and np.isnan(feats[1]).all()
    assert list(index["status"]) == ["ok", "failed", "ok"] and "no video" in index["reason"][1]
    assert not np.allclose(feats[0], feats[2])  # each clip its own video


def test_a_member_larger_than_a_mel_can_be_is_refused_before_it_is_read(tmp_path):
    """A mel followed by megabytes of padding (it compresses to almost nothing) used to load as `ok`: np.load and
    pickle stop at their end and the rest was read into memory for nothing."""
    mels, feats, _ = toy_inputs()
    clip = "dog/video_00004"
    padded = npy_bytes(mels[clip]) + bytes(4 << 20)
    (tmp_path / MELS_TAR).write_bytes(tar_bytes({"dog/video_00004_mel.npy": padded}, gzip=True))
    assert (tmp_path / MELS_TAR).stat().st_size < 1 << 20
    table = pd.DataFrame({"clip": [clip], "class": ["dog"]})
    manifest = authors.import_mels_shard(table, [tmp_path / MELS_TAR], tmp_path / "shard")
    assert list(manifest["status"]) == ["skipped"] and "more than a mel file can be" in manifest["reason"][0]
    big_feats = pickle.dumps(feats[clip]) + bytes(8 << 20)
    (tmp_path / FEATS_TAR).write_bytes(tar_bytes({"video_00004.pkl": big_feats}, gzip=True))
    with pytest.raises(authors.MemberTooLarge, match="more than a feature file can be"):
        authors.open_tars([tmp_path / FEATS_TAR], authors.RESNET50)["dog"].read(clip)


@pytest.mark.timeout(60)
def test_a_tar_member_with_a_negative_size_is_refused_not_looped_on(tmp_path):
    """CVE-2025-8194: a header of size -512 sends Python 3.11's tarfile back to the same header, forever."""
    raw = tar_bytes({f"{c.split('/')[1]}_mel.npy": npy_bytes(np.zeros((80, 860), np.float32)) for c in CLIPS[:2]})
    at = tarfile.open(fileobj=io.BytesIO(raw)).getmembers()[1].offset  # the second header: the first is not looped
    data = bytearray(raw)
    data[at + 124:at + 136] = b"\xff" + (256 ** 11 - 512).to_bytes(11, "big")  # base-256 size field: -512
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % sum(data[at:at + 512])  # its header checksum, recomputed
    (tmp_path / MELS_TAR).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="negative size"):
        authors.open_tars([tmp_path / MELS_TAR], authors.MELS)
