"""Run-level glue: seeds per sample, resumable state that a changed config invalidates, the table rows."""
import json

import numpy as np
import pandas as pd
import torch

from i2a.evaluation.table import build_table, clip_counts
from i2a.models.condition import condition
from i2a.sampling.samples import sample_seeds
from i2a.spec.runspec import GPTConfig, RunSpec, TrainSettings
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


def test_a_job_uses_exactly_its_rules_threads(tmp_path):
    """start_job takes the rule's `threads` for torch's intra- and inter-op pools and OpenMP's environment, over
    whatever the environment said (a fresh process: the inter-op pool can be sized only once)."""
    import subprocess
    import sys

    script = f"""
import os, types
os.environ["OMP_NUM_THREADS"] = "7"
from i2a.pipeline.jobs import start_job
smk = types.SimpleNamespace(log=[r"{tmp_path / 'job.log'}"], threads=3, rule="sample_tokens",
                            wildcards=types.SimpleNamespace(items=lambda: []))
start_job(smk)
import torch
print(os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"], torch.get_num_threads(),
      torch.get_num_interop_threads(), file=open(r"{tmp_path / 'out.txt'}", "w"))
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (tmp_path / "out.txt").read_text().split() == ["3", "3", "3", "3"]
    assert "rule sample_tokens: 3 thread(s)" in (tmp_path / "job.log").read_text()


def test_batch_size_auto_fills_the_gpu_and_is_bounded_on_the_cpu(monkeypatch, caplog):
    """auto: on a GPU, as many whole videos as the free memory holds (caches and activations per video); on a CPU
    AUTO_CPU_ROWS sequences; a number: sequences rounded down to whole videos."""
    import logging

    from i2a.models.gpt import GPT, kv_cache_bytes
    from i2a.sampling.samples import AUTO_CPU_ROWS, videos_per_batch

    with torch.device("meta"):
        gpt = GPT(GPTConfig(layers=24))  # the study's shape, nothing allocated
    assert videos_per_batch(64, 10, gpt, 212, 265, torch.float32, torch.device("cpu")) == 6
    assert videos_per_batch(5, 10, gpt, 212, 265, torch.float32, torch.device("cpu")) == 1
    with caplog.at_level(logging.INFO, logger="i2a.sampling.samples"):
        assert videos_per_batch("auto", 10, gpt, 212, 265, torch.float32, torch.device("cpu")) == AUTO_CPU_ROWS // 10
    assert "6 videos x 10 samples = 60 sequences per batch" in caplog.text
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (120 * gib, 141 * gib))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="i2a.sampling.samples"):
        bf16 = videos_per_batch("auto", 100, gpt, 212, 265, torch.bfloat16, torch.device("cuda"))
    caches = kv_cache_bytes(gpt.config, 100, 1, 212, 265, torch.bfloat16)
    assert bf16 * caches < 120 * gib < (bf16 + 1) * caches * 1.2  # fills it, within the headroom
    assert f"{bf16} videos x 100 samples" in caplog.text and "free" in caplog.text
    fp32 = videos_per_batch("auto", 100, gpt, 212, 265, torch.float32, torch.device("cuda"))
    assert fp32 < bf16 and fp32 >= 1
