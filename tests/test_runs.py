"""Run-level glue: seeds per sample, resumable state that a changed config invalidates, the table rows."""
import json

import numpy as np
import pandas as pd
import torch

from i2a.evaluation.table import build_table, clip_counts
from i2a.runspec import GPTConfig, RunSpec, TrainSettings
from i2a.samples import condition, sample_seeds
from i2a.training.loop import TrainingState

RUN = RunSpec(name="r", features="resnet18", feat_sample_size=5,
              model=GPTConfig(layers=12, heads=8, embed=512, dropout=0.3),
              train=TrainSettings(scheduler="plateau", batch=64, gpus=1, weight_decay=0.1))


def test_sample_seeds_are_unique_and_independent_of_the_video_count():
    seeds = sample_seeds(3, n_videos=10, samples_per_video=4)
    assert len(np.unique(seeds)) == 40
    assert (sample_seeds(3, n_videos=5, samples_per_video=4) == seeds[:5]).all()
    assert not np.intersect1d(sample_seeds(4, 10, 4), seeds).size
    # repeats: seed-major blocks, the first being the single-seed set; the second is seed 4's
    three = sample_seeds(3, n_videos=10, samples_per_video=4, repeats=2)
    assert three.shape == (10, 8) and (three[:, :4] == seeds).all() and (three[:, 4:] == sample_seeds(4, 10, 4)).all()


def prepare_state_dir(folder, settings):
    state = TrainingState(folder, {"settings": settings, "inputs": {}})
    state.open()
    return state.folder


def test_state_dir_survives_a_restart_but_not_a_changed_hyperparameter(tmp_path):
    state = prepare_state_dir(tmp_path / "state", {"dropout": 0.1})
    torch.save({"epoch": 3}, state / "last.ckpt")
    assert (prepare_state_dir(tmp_path / "state", {"dropout": 0.1}) / "last.ckpt").exists()
    assert not (prepare_state_dir(tmp_path / "state", {"dropout": 0.2}) / "last.ckpt").exists()


def test_condition_picks_the_configured_frames_or_seeded_noise():
    feats = np.arange(2 * 40 * 3, dtype=np.float32).reshape(2, 40, 3)
    cond = condition("resnet18", feats, np.array([0, 1]), S=5, feat_dim=3)
    assert cond.shape == (2, 3, 5)
    assert cond[0, 0, 0].item() == feats[0, 40 // 6, 0]
    noise = condition("none", None, np.array([7, 7, 8]), S=1, feat_dim=16)
    assert noise.shape == (3, 16, 1) and torch_equal(noise[0], noise[1]) and not torch_equal(noise[0], noise[2])


def torch_equal(a, b):
    return bool((a == b).all())


def test_table_rows_carry_hyperparameters_curve_and_scores(tmp_path):
    scores = {"mkl": {"value": 6.1, "low": 5.9, "high": 6.3, "seed_sd": 0.05},
              "fid": {"value": 25.0, "low": 23.0, "high": 27.0, "seed_sd": 0.7},
              "n_videos": 768, "samples_per_video": 10, "n_seeds": 3}
    (tmp_path / "runs/r/samples").mkdir(parents=True)
    (tmp_path / "runs/r/samples/scores.json").write_text(json.dumps(scores))
    # the best epoch is 97 counted from 0 (metrics.csv), 98 counted from 1 (the table); then 2 epochs > 1% above it
    val = [3.0 - 0.01 * e for e in range(98)] + [2.2, 2.3]
    (tmp_path / "runs/r/metrics.csv").write_text(
        "epoch,train_loss,val_loss,lr\n" + "".join(f"{e},1.0,{v},1e-4\n" for e, v in enumerate(val)))
    clips = pd.DataFrame({"clip": ["a/1", "a/2", "a/3"], "split": ["train", "train", "valid"]})
    manifest = pd.DataFrame({"clip": ["a/1", "a/2", "a/3"], "status": ["ok", "skipped", "ok"]})
    counts = clip_counts([manifest], clips)
    assert counts == {"train_clips": 1, "train_skipped": 1, "valid_clips": 1, "valid_skipped": 0}
    table = build_table([RUN], {"r": "runs/r/samples"}, tmp_path, counts, baseline=None, probes={})
    row = table.iloc[0]
    assert (row["features"], row["scheduler"], row["epochs"], row["overfit"]) == ("ResNet18", "ReduceLROnPlateau", 98,
                                                                                 True)
    assert (row["inputs"], row["precision"]) == ("derived", "fp32")
    assert pd.isna(row["published_KL"]) and pd.isna(row["published_FID"])  # a trained run: nothing published
    # a looser patience: the same curve does not count as overfitting
    table = build_table([RUN], {"r": "runs/r/samples"}, tmp_path, counts, baseline=None, probes={},
                        overfit_patience=3)
    assert not table.iloc[0]["overfit"]
    assert (row["KL"], row["FID_high"], row["videos"], row["train_skipped"]) == (6.1, 27.0, 768, 1)
    assert (row["seeds"], row["samples_per_video"], row["KL_seed_sd"], row["FID_seed_sd"]) == (3, 10, 0.05, 0.7)
    # the scores come right after the run's name, so they are not the columns that fall off a screen
    assert list(table.columns[:4]) == ["run", "kind", "features", "KL"]
