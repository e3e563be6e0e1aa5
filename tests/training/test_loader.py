"""The GPT's training input path: stored fp16 rows, converted after the batch reached its device, give exactly the
batches and the loss of the old path (every sample converted to fp32 (D, S) on the CPU), with any number of loader
workers; the loader settings come from the config."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from i2a.data.store import NpyRowWriter, ShardedArray
from i2a.models.gpt import GPT
from i2a.spec.frames import sample_frame_indices
from i2a.spec.runspec import GPTConfig, RunSpec, TrainSettings
from i2a.training.gpt import LOADER_DEFAULTS, GPTDataset, loader_workers, model_inputs, train_gpt
from i2a.training.loop import EpochSampler

N_TOK, VOCAB, CROP, DIM = 10, 16, 8, 6


def _store(folder, n: int, seed: int, shards: int = 2):
    """fp16 feature and int16 token shards written as the workflow writes them."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n)
    tokens = ((cls[:, None] * 3 + np.arange(N_TOK)[None]) % VOCAB).astype(np.int16)
    feats = (rng.normal(size=(n, CROP, DIM)) * 0.3).astype(np.float32)
    feats[np.arange(n), :, cls] += 2.0
    bounds = np.linspace(0, n, shards + 1).astype(int)
    paths = {"tokens": [], "feats": []}
    for k in range(shards):
        for name, rows, dtype in (("tokens", tokens, "int16"), ("feats", feats, "float16")):
            path = folder / f"{name}{seed}_{k}.npy"
            with NpyRowWriter(path, rows.shape[1:], dtype) as out:
                for row in rows[bounds[k]:bounds[k + 1]]:
                    out.append(row)
            paths[name].append(path)
    return ShardedArray(paths["tokens"]), ShardedArray(paths["feats"])


def _old_batch(tokens, feats, indices, S, mean=None, std=None):
    """The old path: each sample converted on the CPU to int64 tokens and fp32 (D, S) features, then stacked."""
    idx = sample_frame_indices(CROP, S)
    tok, fea = [], []
    for i in indices:
        f = np.asarray(feats[i], dtype=np.float32)[idx]
        if mean is not None:
            f = (f - mean) / std
        tok.append(torch.from_numpy(np.asarray(tokens[i], dtype=np.int64)))
        fea.append(torch.from_numpy(np.ascontiguousarray(f.T)))
    return torch.stack(tok), torch.stack(fea)


@pytest.mark.parametrize("S", [1, 3, CROP])
@pytest.mark.parametrize("workers", [0, 2])
def test_stored_rows_converted_after_transfer_equal_the_old_cpu_conversion(tmp_path, S, workers):
    tokens, feats = _store(tmp_path, 10, 0)
    assert feats.dtype == np.float16 and tokens.dtype == np.int16
    ds = GPTDataset(tokens, feats, S=S)
    sampler = EpochSampler(len(ds), shuffle=True, seed=0)
    order = [i for i, _ in sampler]
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
    stats = {"mean": np.linspace(-1, 1, DIM).astype(np.float32), "std": np.linspace(0.5, 2, DIM).astype(np.float32)}
    mean, std = (torch.from_numpy(stats[k]) for k in ("mean", "std"))
    seen = 0
    for k, batch in enumerate(loader):
        assert batch[1].dtype == torch.float16 and batch[1].shape[1:] == (S, DIM)  # shipped as stored
        rows = order[4 * k:4 * k + 4]
        for standardise in (False, True):
            got = model_inputs(batch, *((mean, std) if standardise else (None, None)))
            want = _old_batch(tokens, feats, rows, S, *((stats["mean"], stats["std"]) if standardise else (None, None)))
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)
        seen += len(rows)
    assert seen == len(ds)


def test_the_loss_is_the_same_to_the_last_bit(tmp_path):
    tokens, feats = _store(tmp_path, 8, 1)
    S = 3
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=N_TOK + S, layers=1, heads=2, embed=16, feat_dim=DIM)).eval()
    ds = GPTDataset(tokens, feats, S=S)
    batch = next(iter(DataLoader(ds, batch_size=8)))

    def loss(tok, fea):
        logits = model(tok[:, :-1], fea)[:, S - 1:]
        return F.cross_entropy(logits.reshape(-1, VOCAB), tok.reshape(-1))

    new = loss(*model_inputs(batch))
    old = loss(*_old_batch(tokens, feats, range(8), S))
    assert torch.equal(new, old)


def _spec(**train):
    model = GPTConfig(vocab_size=VOCAB, block_size=N_TOK + 2, layers=1, heads=2, embed=16, feat_dim=DIM, dropout=0.1)
    return RunSpec(name="tiny", features="resnet18", feat_sample_size=2, model=model,
                   train=TrainSettings(batch=4, base_lr=1e-3, max_epochs=2, seed=3, **train))


def test_loader_workers_change_nothing(tmp_path):
    """The `loader:` settings are throughput only: worker processes (persistent or not) train the same model."""
    train_tok, train_feats = _store(tmp_path, 16, 2)
    valid_tok, valid_feats = _store(tmp_path, 8, 3)
    results = {}
    for name, loader in {"inline": {"num_workers": 0},
                         "workers": {"num_workers": 2, "persistent_workers": True, "pin_memory": True},
                         "fresh-workers": {"num_workers": 1, "persistent_workers": False}}.items():
        summary = train_gpt(_spec(), GPTDataset(train_tok, train_feats, S=2), GPTDataset(valid_tok, valid_feats, S=2),
                            tmp_path / name, accelerator="cpu", loader=loader, log_every=100)
        with open(tmp_path / name / "metrics.csv") as fh:
            results[name] = (list(csv.DictReader(fh)), torch.load(summary["best_ckpt"], weights_only=True))
    (rows, best), *others = results.values()
    for other_rows, other_best in others:
        assert other_rows == rows
        for key, value in best["state_dict"].items():
            assert torch.equal(value, other_best["state_dict"][key]), key


def test_loader_settings_come_from_the_config_schema():
    """The schema's defaults are what a cluster job gets; the study's config says so explicitly."""
    import yaml

    from conftest import REPO
    from i2a.spec.config import validate_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
    assert set(config["loader"]) == set(LOADER_DEFAULTS)
    assert config["loader"]["num_workers"] >= 2 and config["loader"]["pin_memory"]
    assert config["loader"]["persistent_workers"]
    assert "loader=snakemake.config[\"loader\"]" in (REPO / "workflow/scripts/train_gpt.py").read_text()


def test_loader_workers_fit_the_jobs_cpus(monkeypatch):
    """num_workers per GPU process, but not more processes than the job's CPUs: 8 GPUs on 4 CPUs get 1 each."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert loader_workers(0) == 0
    assert loader_workers(4) == 3  # one CPU for the training process itself
    assert loader_workers(2) == 2
    assert loader_workers(4, processes=2) == 1
    assert loader_workers(4, processes=8) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert loader_workers(4, processes=8) == 4
