"""The clip table and a preprocessed shard: splits, sharding, bad clips listed with their reason."""
import shutil

import numpy as np
import pytest

from i2a.data.clips import (Shard, collect_class_videos, make_clip_table, mel_spec_from_config, preprocess_shard,
                         read_clip_table, write_tsv)
from i2a.data.synthetic import make_synthetic_dataset
from i2a.evaluation.table import clip_counts
from media_files import toy_clip, write_streams

AUDIO = {"sample_rate": 22050, "n_fft": 1024, "hop_length": 256, "n_mels": 80, "fmin": 125, "fmax": 7600,
         "keep_frames": 86, "crop_frames": 80}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two synthetic classes of 3 good clips each, plus, in the first class, every kind of input the issue names."""
    root = tmp_path_factory.mktemp("raw")
    make_synthetic_dataset(root, n_classes=2, clips_per_class=3, seconds=1.0, size=(32, 48), seed=1)
    cls = sorted(p.name for p in root.iterdir())[0]
    good = sorted((root / cls).glob("*.mp4"))[0]
    shutil.copy(good, root / cls / "a clip, ça va 'quoted' \"x\" ж.mp4")
    shutil.copy(good, root / cls / "zz held out.mp4")  # sorts last: the class's validation clip
    (root / cls / "empty.mp4").write_bytes(b"")
    (root / cls / "notes.mp4").write_text("not a video\n" * 20)
    data = good.read_bytes()
    (root / cls / "truncated.mp4").write_bytes(data[: len(data) // 2])
    frames, audio = toy_clip(0.5, seed=3)
    write_streams(root / cls / "mute.mp4", frames=frames)
    write_streams(root / cls / "radio.mp4", audio=audio)
    frames, audio = toy_clip(0.1, seed=4)
    write_streams(root / cls / "tiny.mp4", frames, audio)  # 0.1 s: looped to length, like the authors' chain
    return root


BAD_REASONS = {"empty": "empty file", "notes": "not a readable video", "truncated": "not a readable video",
               "mute": "no audio track", "radio": "no video track"}


def test_clip_table_splits_by_the_vas_rule_and_deals_shards(raw):
    table = make_clip_table(raw, valid_per_class=1, shards={"train": 2, "valid": 1})
    assert len(table) == 6 + 2 + 6
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
    assert any("a clip, ça va 'quoted' \"x\" ж" in c for c in table["clip"])
    train = table[table["split"] == "train"]
    manifest = preprocess_shard(train, tmp_path / "shard", mel_spec_from_config(AUDIO), seconds=1.0)
    assert list(manifest["clip"]) == list(train["clip"])
    by_stem = {c.split("/", 1)[1]: row for c, row in zip(manifest["clip"], manifest.to_dict("records"))}
    for stem, reason in BAD_REASONS.items():
        assert by_stem[stem]["status"] == "skipped" and reason in by_stem[stem]["reason"].lower(), by_stem[stem]
    ok = [s for s, row in by_stem.items() if row["status"] == "ok"]
    assert "tiny" in ok and "a clip, ça va 'quoted' \"x\" ж" in ok and all(by_stem[s]["reason"] == "" for s in ok)
    assert len(ok) == len(train) - len(BAD_REASONS)
    shard = Shard(tmp_path / "shard")
    assert shard.clips == [c for c in manifest["clip"] if c.split("/", 1)[1] in ok]
    mels = shard.mels()
    assert mels.shape == (len(ok), 80, 86) and mels.dtype == np.float32
    assert 0.0 <= mels.min() and mels.max() <= 1.0 and mels.std() > 0.01
    assert all(p.exists() for p in shard.video_paths() + shard.wav_paths())
    assert len(list((tmp_path / "shard" / "wav").iterdir())) == len(ok)  # nothing of the skipped clips is left
    assert not [p for p in (tmp_path / "shard").rglob("*") if p.name.startswith(".")]
    # the clips a split used and skipped, as the table states them
    counts = clip_counts([manifest], table)
    assert counts["train_clips"] == len(ok) and counts["train_skipped"] == len(BAD_REASONS)
    assert counts["valid_clips"] == counts["valid_skipped"] == 0  # the valid shard was not run here


def test_a_shard_with_only_bad_clips_still_writes_its_outputs(raw, tmp_path):
    table = make_clip_table(raw, valid_per_class=1, shards={"train": 1, "valid": 1})
    bad = table[table["clip"].str.endswith(("/empty", "/notes"))]
    manifest = preprocess_shard(bad, tmp_path / "shard", mel_spec_from_config(AUDIO), seconds=1.0)
    assert list(manifest["status"]) == ["skipped", "skipped"]
    assert Shard(tmp_path / "shard").mels().shape == (0, 80, 86)


def test_collect_class_videos_finds_the_class_folder_at_any_depth(tmp_path):
    for rel in ["VAS/dog/videos/a.mp4", "VAS/baby/videos/b.mp4", "VAS/readme/c.mp4"]:
        (tmp_path / "zip" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "zip" / rel).write_bytes(b"x")
    counts = collect_class_videos(tmp_path / "zip", tmp_path / "raw")
    assert counts == {"baby": 1, "dog": 1}
    assert (tmp_path / "raw/dog/a.mp4").exists()
