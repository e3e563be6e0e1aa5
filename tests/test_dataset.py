"""The clip table and a preprocessed shard: splits, sharding, bad clips listed with their reason."""
import shutil

import numpy as np
import pytest

from i2a.dataset import (Shard, collect_class_videos, make_clip_table, mel_spec_from_config, preprocess_shard,
                         read_clip_table, write_tsv)
from i2a.synthetic import make_synthetic_dataset

AUDIO = {"sample_rate": 22050, "n_fft": 1024, "hop_length": 256, "n_mels": 80, "fmin": 125, "fmax": 7600,
         "keep_frames": 86, "crop_frames": 80}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make_synthetic_dataset(root, n_classes=2, clips_per_class=3, seconds=1.0, size=(32, 48), seed=1)
    cls = sorted(p.name for p in root.iterdir())[0]
    good = sorted((root / cls).glob("*.mp4"))[0]
    shutil.copy(good, root / cls / "ça va 'quoted' clip.mp4")
    (root / cls / "empty.mp4").write_bytes(b"")
    (root / cls / "notes.mp4").write_text("not a video")
    return root


def test_clip_table_splits_by_the_vas_rule_and_deals_shards(raw):
    table = make_clip_table(raw, valid_per_class=1, shards={"train": 2, "valid": 1})
    assert len(table) == 9
    for cls, group in table.groupby("class"):
        names = sorted(group["clip"])
        assert list(group[group["split"] == "valid"]["clip"]) == names[-1:]
    train = table[table["split"] == "train"]
    assert sorted(train["shard"].unique()) == [0, 1]
    assert abs((train["shard"] == 0).sum() - (train["shard"] == 1).sum()) <= 1


def test_preprocess_shard_keeps_good_clips_and_lists_bad_ones(raw, tmp_path):
    table = make_clip_table(raw, valid_per_class=1, shards={"train": 1, "valid": 1})
    write_tsv(table, tmp_path / "clips.tsv")
    table = read_clip_table(tmp_path / "clips.tsv")  # round trip keeps odd names intact
    assert any("ça va 'quoted' clip" in c for c in table["clip"])
    train = table[table["split"] == "train"]
    manifest = preprocess_shard(train, tmp_path / "shard", mel_spec_from_config(AUDIO), seconds=1.0, fps=21.5)
    status = dict(zip(manifest["clip"], manifest["status"]))
    reasons = dict(zip(manifest["clip"], manifest["reason"]))
    bad = [c for c in status if c.endswith(("/empty", "/notes"))]
    assert len(bad) == 2 and all(status[c] == "skipped" and reasons[c] for c in bad)
    assert sum(s == "ok" for s in status.values()) == len(train) - 2
    shard = Shard(tmp_path / "shard")
    mels = shard.mels()
    assert mels.shape == (len(train) - 2, 80, 86) and mels.dtype == np.float32
    assert 0.0 <= mels.min() and mels.max() <= 1.0 and mels.std() > 0.01
    assert all(p.exists() for p in shard.video_paths() + shard.wav_paths())
    assert not list((tmp_path / "shard").rglob("*.tmp")) and not list((tmp_path / "shard").rglob("*.part"))


def test_collect_class_videos_finds_the_class_folder_at_any_depth(tmp_path):
    for rel in ["VAS/dog/videos/a.mp4", "VAS/baby/videos/b.mp4", "VAS/readme/c.mp4"]:
        (tmp_path / "zip" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "zip" / rel).write_bytes(b"x")
    counts = collect_class_videos(tmp_path / "zip", tmp_path / "raw")
    assert counts == {"baby": 1, "dog": 1}
    assert (tmp_path / "raw/dog/a.mp4").exists()
