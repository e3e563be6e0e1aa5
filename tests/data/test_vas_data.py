"""The data stage on real VAS clips as a user runs it: `vas.source: local`, the study config, bad files mixed in.

Six sample clips of ../shared (four classes; tests/data/test_mel.py checks all ten) plus every kind of bad input go
through list_clips and preprocess_clips of config/config.yaml; the stored mels must be the authors' (the golden
bound) and the bad files listed with their reasons.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from conftest import shared_path
from i2a.data.clips import Shard, read_clip_table
from media_files import toy_clip, write_streams
from workflow_helpers import copy_workflow, snakemake

CLASSES = ("cough", "dog", "drum", "hammer")
BAD = {"dog/empty": "empty file", "dog/notes": "not a readable video", "drum/truncated": "not a readable video",
       "drum/mute": "no audio track", "hammer/radio": "no video track"}


@pytest.fixture(scope="module")
def vas_run(tmp_path_factory):
    samples = shared_path("data", "vas-samples")
    root = tmp_path_factory.mktemp("vas")
    local = root / "VAS videos"  # a space in the folder name, too
    for clip in sorted(c for cls in CLASSES for c in (samples / "videos" / cls).glob("*.mp4")):
        (local / clip.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, local / clip.parent.name / clip.name)
    (local / "dog/empty.mp4").write_bytes(b"")
    (local / "dog/notes.mp4").write_text("a text file named .mp4\n")
    data = (samples / "videos/drum/video_02480.mp4").read_bytes()
    (local / "drum/truncated.mp4").write_bytes(data[: len(data) // 3])
    frames, audio = toy_clip(0.5)
    write_streams(local / "drum/mute.mp4", frames=frames)
    write_streams(local / "hammer/radio.mp4", audio=audio)
    frames, audio = toy_clip(0.1, seed=2)
    write_streams(local / "cough/a 0.1 s clip 'ü'.mp4", frames, audio)

    workdir = copy_workflow(root / "wf")
    config = {"results": "results/vas", "logs": "logs/vas", "dataset": "vas", "threads": 2,
              "vas": {"source": "local", "local_dir": str(local),
                      "valid_per_class": {c: 1 for c in CLASSES}},
              "shards": {"train": 2, "valid": 1}}
    (workdir / "vas.yaml").write_text(yaml.safe_dump(config))
    targets = ["results/vas/data/train/shard000", "results/vas/data/train/shard001", "results/vas/data/valid/shard000"]
    result = snakemake(*targets, "--cores", "2", "--configfile", "vas.yaml", cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, samples


def test_every_clip_is_listed_once_with_its_split(vas_run):
    workdir, _ = vas_run
    clips = read_clip_table(workdir / "results/vas/data/clips.tsv")
    assert len(clips) == 6 + len(BAD) + 1 and clips["clip"].is_unique
    # the last sorted name of each class is its validation clip
    assert sorted(clips[clips["split"] == "valid"]["clip"]) == ["cough/video_00331", "dog/video_02754",
                                                                 "drum/video_02542", "hammer/video_00323"]


def test_bad_files_are_listed_with_their_reason_and_the_rest_processed(vas_run):
    workdir, _ = vas_run
    shards = [Shard(workdir / f"results/vas/data/{s}") for s in ("train/shard000", "train/shard001", "valid/shard000")]
    rows = {r["clip"]: r for shard in shards for r in shard.table.to_dict("records")}
    assert len(rows) == 6 + len(BAD) + 1
    for clip, reason in BAD.items():
        assert rows[clip]["status"] == "skipped" and reason in rows[clip]["reason"].lower(), rows[clip]
    ok = [c for c, r in rows.items() if r["status"] == "ok"]
    assert len(ok) == 7 and "cough/a 0.1 s clip 'ü'" in ok
    log = (workdir / "logs/vas/preprocess_clips").glob("*.log")
    assert any("skipped dog/empty: empty file" in p.read_text() for p in log)


def test_stored_mels_are_the_authors(vas_run):
    workdir, samples = vas_run
    worst = 0.0
    for split_shard in ("train/shard000", "train/shard001", "valid/shard000"):
        shard = Shard(workdir / f"results/vas/data/{split_shard}")
        mels = shard.mels()
        assert mels.shape == (len(shard.clips), 80, 860)
        for clip, mel in zip(shard.clips, mels):
            cls, name = clip.split("/")
            golden = samples / "features" / cls / "melspec_10s_22050hz" / f"{name}_mel.npy"
            if golden.exists():
                worst = max(worst, float(np.abs(mel - np.load(golden)).mean()))
        for video in shard.video_paths():
            assert video.stat().st_size > 0
    assert 0 < worst < 0.03, worst
