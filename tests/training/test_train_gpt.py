"""Transformer training: SpecVQGAN's data layout, decay groups and LR rule; checkpoints, metrics and resume."""
import csv
import logging

import numpy as np
import pytest
import torch

from conftest import Crash, crash_after
from i2a.data.store import ShardedArray, save_npy
from i2a.models.gpt import GPT
from i2a.models.transformer import load_transformer
from i2a.spec.runspec import GPTConfig, RunSpec, TrainSettings
from i2a.training.gpt import GPTDataset, curve_summary, model_inputs, optimizer_groups
from i2a.training.gpt import train_gpt as _train_gpt
from i2a.training.loop import EpochSampler

N_TOK, VOCAB, CROP, DIM, S = 10, 16, 8, 6, 2


def _data(n: int, seed: int):
    """Tokens that depend on a class visible in the features, so there is something to learn."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n)
    tokens = (cls[:, None] * 3 + np.arange(N_TOK)[None]) % VOCAB
    noise = rng.random((n, N_TOK)) < 0.2
    tokens = np.where(noise, rng.integers(0, VOCAB, (n, N_TOK)), tokens).astype(np.int16)
    feats = rng.normal(size=(n, CROP, DIM)).astype(np.float32) * 0.3
    feats[np.arange(n), :, cls] += 2.0
    return tokens, feats


def item(ds, index):
    """One clip as the GPT sees it: the stored row converted as on the device (int64 tokens, (D, S) features)."""
    tokens, feats = ds[index]
    tokens, feats = model_inputs((tokens[None], feats[None]))
    return tokens[0], feats[0]


def _cfg(dropout=0.1, **kw):
    """A tiny run: 1 layer x 2 heads x 16-d over the toy data's 10 tokens and S=2 frames of 6-d features."""
    model = GPTConfig(vocab_size=VOCAB, block_size=N_TOK + S, layers=1, heads=2, embed=16, feat_dim=DIM,
                      dropout=dropout)
    train = TrainSettings(**{**dict(batch=4, base_lr=1e-3, max_epochs=3, seed=3), **kw})
    return RunSpec(name="tiny", features="resnet18", feat_sample_size=S, model=model, train=train)


def train_gpt(train, valid, spec, out, **kw):
    return _train_gpt(spec, train, valid, out, log_every=2, **kw)


def test_dataset_reads_sharded_rows_and_picks_frames(tmp_path):
    tokens, feats = _data(10, 0)
    save_npy(tmp_path / "t0.npy", tokens[:6]); save_npy(tmp_path / "t1.npy", tokens[6:])
    save_npy(tmp_path / "f0.npy", feats[:6]); save_npy(tmp_path / "f1.npy", feats[6:])
    ds = GPTDataset(ShardedArray([tmp_path / "t0.npy", tmp_path / "t1.npy"]),
                    ShardedArray([tmp_path / "f0.npy", tmp_path / "f1.npy"]), S=2)
    tok, f = item(ds, 7)
    assert tok.dtype == torch.int64 and tok.tolist() == tokens[7].tolist()
    # S=2 of 8 frames: linspace(0, 8, 2) + 8 // 3 = [2, 6]; returned as (D, S) for the Conv1d
    assert f.shape == (DIM, 2) and np.array_equal(f.numpy(), feats[7][[2, 6]].T)
    assert item(ds, (7, 5))[1].equal(f)  # the epoch only matters for random features


def test_random_features_baseline():
    tokens, _ = _data(5, 0)
    ds = GPTDataset(tokens, None, S=1, random_feats_dim=32, seed=1)
    a0, a0_again, a1, b0 = item(ds, (2, 0))[1], item(ds, (2, 0))[1], item(ds, (2, 1))[1], item(ds, (3, 0))[1]
    assert a0.shape == (32, 1) and a0.dtype == torch.float32
    assert 0 <= a0.min() and a0.max() < 1
    assert a0.equal(a0_again) and not a0.equal(a1) and not a0.equal(b0)  # re-drawn per item and epoch
    with pytest.raises(ValueError, match="either"):
        GPTDataset(tokens, None, S=1)


def test_epoch_sampler_shuffles_per_epoch_and_shards():
    s = EpochSampler(10, shuffle=True, seed=0)
    e0 = [i for i, _ in s]
    s.set_epoch(1)
    e1 = [i for i, _ in s]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    ranks = [[i for i, _ in EpochSampler(10, True, 0, rank=r, world_size=3)] for r in range(3)]
    assert all(len(r) == 4 for r in ranks) and set(sum(ranks, [])) == set(range(10))


def test_decay_groups_and_lr_rule():
    model = GPT(GPTConfig(vocab_size=16, block_size=12, layers=2, heads=2, embed=8, feat_dim=4))
    decay, no_decay = optimizer_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                       for n in [f"{n}.weight"]}
    assert {"pos_emb", "tok_emb.weight", "embedder.weight", "ln_f.weight", "blocks.0.attn.key.bias"} \
        <= {names[id(p)] for p in no_decay["params"]}
    cfg = TrainSettings(base_lr=1e-6, batch=64, gpus=8, accumulate=2)
    assert cfg.learning_rate == pytest.approx(1e-6 * 64 * 8 * 2)


def test_curve_summary(tmp_path):
    """Overfit: the validation loss rose more than the margin above its best and stayed there for `patience`
    epochs; not a dip or a rise within the noise after the best epoch."""
    path = tmp_path / "m.csv"

    def curve(*val):
        path.write_text("epoch,train_loss,val_loss,lr\n" + "".join(f"{i},3,{v},1e-3\n" for i, v in enumerate(val)))
        return path

    assert curve_summary(curve(2.5, 2.0, 2.1)) == {"best_epoch": 1, "best_val_loss": 2.0, "overfit": False,
                                                   "epochs_run": 3}  # one epoch above: not yet (patience 2)
    assert curve_summary(curve(2.5, 2.0, 2.1), overfit_patience=1)["overfit"] is True
    assert curve_summary(curve(2.5, 2.0, 2.1, 2.2))["overfit"] is True  # 5% and 10% above for 2 epochs
    assert curve_summary(curve(2.5, 2.0, 2.01, 2.015, 2.019))["overfit"] is False  # within 1%
    assert curve_summary(curve(2.5, 2.0, 2.01, 2.015), overfit_margin=0.001)["overfit"] is True
    assert curve_summary(curve(2.5, 2.0, 2.1, 2.0, 2.1))["overfit"] is False  # not 2 epochs in a row
    assert curve_summary(curve(2.5, 2.0))["overfit"] is False


def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_train_resume_matches_uninterrupted_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="i2a.training")
    train = GPTDataset(*_data(24, 1), S=S)
    valid = GPTDataset(*_data(8, 2), S=S)
    cfg = _cfg(scheduler="cosine")

    full = train_gpt(train, valid, cfg, tmp_path / "full", accelerator="cpu")
    rows = _read_csv(tmp_path / "full" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and full["epochs_run"] == 3
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])  # it learns
    lr0 = cfg.train.learning_rate
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr0, lr0 * 0.75, lr0 * 0.25])  # cosine, T_max 3
    assert full["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    assert any("batch 2/6" in r.getMessage() for r in caplog.records)  # plain progress lines for log files

    # killed mid-way through the second epoch (6 steps per epoch), then started again
    with pytest.raises(Crash):
        train_gpt(train, valid, cfg, tmp_path / "resumed", accelerator="cpu", callbacks=[crash_after(8)])
    assert len(_read_csv(tmp_path / "resumed" / "metrics.csv")) == 1
    resumed = train_gpt(train, valid, cfg, tmp_path / "resumed", accelerator="cpu")
    assert _read_csv(tmp_path / "resumed" / "metrics.csv") == rows
    assert resumed["best_epoch"] == full["best_epoch"]
    best_full = torch.load(tmp_path / "full" / "best.ckpt", weights_only=True)
    best_res = torch.load(tmp_path / "resumed" / "best.ckpt", weights_only=True)
    assert best_full["epoch"] == best_res["epoch"]
    for k, v in best_full["state_dict"].items():
        assert torch.allclose(v, best_res["state_dict"][k], atol=1e-6), k

    # a finished job started again does nothing; the checkpoint loads as a plain GPT with its config
    assert train_gpt(train, valid, cfg, tmp_path / "full", accelerator="cpu")["best_epoch"] == full["best_epoch"]
    model = load_transformer(tmp_path / "full" / "best.ckpt").gpt
    assert (model.config.layers, model.config.block_size, model.config.feat_dim) == (1, N_TOK + S, DIM)
    tok, f = item(valid, 0)
    with torch.no_grad():
        logits = model(tok[None, :-1], f[None])[:, S - 1:]
    ce = torch.nn.functional.cross_entropy(logits[0], tok)
    assert ce.item() < np.log(VOCAB)  # better than chance on held-out data


def test_plateau_and_early_stopping(tmp_path):
    """A LR so high that val loss stops improving: plateau halves the LR, early stopping ends the run."""
    train = GPTDataset(*_data(8, 1), S=S)
    valid = GPTDataset(*_data(4, 2), S=S)
    cfg = _cfg(scheduler="plateau", plateau_patience=0, plateau_factor=0.5, base_lr=0.5, max_epochs=12,
               early_stopping=True, early_stopping_patience=2, dropout=0.0)
    out = train_gpt(train, valid, cfg, tmp_path / "run", accelerator="cpu")
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    val = [float(r["val_loss"]) for r in rows]
    best = int(np.argmin(val))
    assert out["epochs_run"] == len(rows) == best + 3 < 12  # stopped 2 epochs without improvement
    lrs = [float(r["lr"]) for r in rows]
    # plateau with patience 0: the epoch after the best one did not improve, so the next one runs at half the LR
    assert lrs[best + 2] == pytest.approx(lrs[best + 1] * 0.5)
    assert all(b in (a, a * 0.5) for a, b in zip(lrs, lrs[1:]))


def test_two_gpus_means_ddp_with_the_lr_rule_and_a_complete_validation(tmp_path):
    """`gpus: 2` on CPU: two gloo processes, each with half the batches; the logged validation loss is over the
    whole validation set (summed across ranks), exactly what one process computes with the saved model."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ddp_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(script.parent), str(script.parent.parent), os.environ.get("PYTHONPATH", "")])}  # and tests/ (conftest)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["lr"] == pytest.approx(result["expected_lr"])
    assert "batch 3/3" in proc.stderr and "batch 6/6" not in proc.stderr  # 24 clips / batch 4 / 2 ranks
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    last = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    model = load_transformer(tmp_path / "run" / "last.ckpt").gpt
    valid = GPTDataset(*_data(8, 2), S=S)
    with torch.no_grad():
        losses = []
        for i in range(len(valid)):
            tok, f = item(valid, i)
            logits = model(tok[None, :-1], f[None])[:, S - 1:]
            losses.append(torch.nn.functional.cross_entropy(logits[0], tok, reduction="sum").item() / len(tok))
    assert last["epoch"] == int(rows[-1]["epoch"])  # last.ckpt is the model after the last validation
    assert float(rows[-1]["val_loss"]) == pytest.approx(np.mean(losses), rel=1e-4)


def test_lr_finder_suggests_a_rate_that_base_lr_auto_trains_with(tmp_path):
    """Lightning's range test on a tiny run: LRs growing exponentially from min_lr, a suggestion inside the range;
    `base_lr: auto` trains with it (per sample: / batch x accumulate), a numeric base_lr ignores it."""
    import json

    from i2a.training.gpt import find_learning_rate, resolve_base_lr

    train = GPTDataset(*_data(24, 1), S=S)
    valid = GPTDataset(*_data(8, 2), S=S)
    auto = _cfg(base_lr="auto", max_epochs=1)
    result = find_learning_rate(auto, train, valid, min_lr=1e-5, max_lr=1.0, steps=20, accelerator="cpu")
    lrs = result["lr"]
    assert len(lrs) == len(result["loss"]) == result["steps_run"] <= 20
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert lrs[3] / lrs[2] == pytest.approx(lrs[2] / lrs[1]) and lrs[-1] <= 1.0  # exponential steps
    assert 1e-5 < result["suggested_lr"] < 1.0
    assert result["suggested_base_lr"] == pytest.approx(result["suggested_lr"] / 4)  # batch 4, no accumulation
    path = tmp_path / "lr_find.json"
    path.write_text(json.dumps(result))
    spec = resolve_base_lr(auto, path)
    assert spec.train.learning_rate == pytest.approx(result["suggested_lr"])
    assert resolve_base_lr(_cfg(), path) == _cfg()  # a configured base_lr is kept
    with pytest.raises(ValueError, match="no LR finder result"):
        resolve_base_lr(auto, None)
    out = train_gpt(train, valid, spec, tmp_path / "run", accelerator="cpu")
    assert out["lr"] == pytest.approx(result["suggested_lr"])
    assert torch.load(tmp_path / "run" / "best.ckpt", weights_only=True)["run_spec"]["train"]["base_lr"] == \
        pytest.approx(result["suggested_base_lr"])  # the checkpoint records the LR it was trained with


def test_capped_run_trains_in_segments_to_the_same_result(tmp_path):
    """A run whose job limit is a fraction of its training stops cleanly before each limit (last.ckpt kept) and
    the next job goes on: several segments end with the uninterrupted run's best.ckpt and metrics.csv."""
    import time

    from i2a.training.segments import SegmentDone

    train = GPTDataset(*_data(64, 1), S=S)
    valid = GPTDataset(*_data(8, 2), S=S)
    cfg = _cfg(scheduler="cosine", max_epochs=12)
    started = time.time()
    full = train_gpt(train, valid, cfg, tmp_path / "full", accelerator="cpu")
    budget = (time.time() - started) / 4  # each job may train for a quarter of the whole (a few seconds at most)
    segments, done = 0, None
    while done is None:
        segments += 1
        assert segments <= 12, "no progress between segments"
        try:
            done = train_gpt(train, valid, cfg, tmp_path / "segmented", accelerator="cpu",
                             deadline=time.time() + budget)
        except SegmentDone as stop:
            assert (tmp_path / "segmented" / "last.ckpt").is_file() and stop.max_epochs == 12
            assert len(_read_csv(tmp_path / "segmented" / "metrics.csv")) == stop.epochs_done < 12
    assert segments >= 3
    assert _read_csv(tmp_path / "segmented" / "metrics.csv") == _read_csv(tmp_path / "full" / "metrics.csv")
    assert done["best_epoch"] == full["best_epoch"]
    best_full = torch.load(tmp_path / "full" / "best.ckpt", weights_only=True)
    best_seg = torch.load(tmp_path / "segmented" / "best.ckpt", weights_only=True)
    assert best_full["epoch"] == best_seg["epoch"]
    for k, v in best_full["state_dict"].items():
        assert torch.equal(v, best_seg["state_dict"][k]), k
