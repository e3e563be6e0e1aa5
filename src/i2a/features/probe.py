"""What a backbone's features hand the GPT: their per-dimension statistics and a linear probe of the classes.

The statistics (mean and std per feature dimension over every frame of the training split) standardise the
features of runs with `feature_norm: standard`. The probe (multinomial logistic regression on each clip's
features averaged over frames, trained on the training split, scored on the validation split) measures how much
class information the features carry at all, independent of any GPT: on VAS this is the study's question asked
of the backbone alone.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from i2a.infra.atomic import atomic_path, write_text

log = logging.getLogger(__name__)


def _chunks(features: Sequence[np.ndarray], rows: int = 256):
    """(n, T, D) float64 pieces of (N, T, D) arrays (memory maps): a split's features never held whole."""
    for array in features:
        for start in range(0, len(array), rows):
            yield np.asarray(array[start:start + rows], dtype=np.float64)


def feature_statistics(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std) per dimension over all rows and frames of (N, T, D) arrays, in float64, and every clip's
    features averaged over its frames (N, D, as clip_means), from one pass over the data."""
    total, total_sq, n, means = 0.0, 0.0, 0, []
    for x in _chunks(features):
        means.append(x.mean(axis=1))
        x = x[np.isfinite(x).all(axis=(1, 2))].reshape(-1, x.shape[-1])  # a failed extraction is NaN
        total, total_sq, n = total + x.sum(0), total_sq + (x * x).sum(0), n + len(x)
    if n == 0:
        raise ValueError("no training features to compute statistics on")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    return mean, np.maximum(std, 1e-6), np.concatenate(means)  # a constant dimension keeps its value (0 after centring)


def clip_means(features: Sequence[np.ndarray]) -> np.ndarray:
    """(N, D): every clip's features averaged over its frames."""
    return np.concatenate([x.mean(axis=1) for x in _chunks(features)])


def linear_probe(train_x: np.ndarray, train_y: Sequence[str], valid_x: np.ndarray, valid_y: Sequence[str],
                 weight_decay: float = 1e-3, seed: int = 0) -> dict:
    """Validation accuracy of a multinomial logistic regression (L-BFGS, L2) on standardised features."""
    import torch

    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(valid_y) - set(index))
    if unknown:
        raise ValueError(f"validation classes {unknown} have no training clips")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = torch.from_numpy((train_x - mean) / std).float()
    xva = torch.from_numpy((valid_x - mean) / std).float()
    ytr = torch.tensor([index[c] for c in train_y])
    yva = torch.tensor([index[c] for c in valid_y])
    torch.manual_seed(seed)
    linear = torch.nn.Linear(xtr.shape[1], len(classes))
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xtr), ytr) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float((linear(xtr).argmax(1) == ytr).float().mean())
        valid_acc = float((linear(xva).argmax(1) == yva).float().mean())
    counts = pd.Series(list(valid_y)).value_counts()
    return {"probe_acc": valid_acc, "train_acc": train_acc, "chance": float(counts.max() / counts.sum()),
            "classes": len(classes), "train_clips": len(ytr), "valid_clips": len(yva)}


def summarise_features(train_features: Sequence[str | Path], valid_features: Sequence[str | Path],
                       train_index: Sequence[str | Path], valid_index: Sequence[str | Path], stats_out: str | Path,
                       probe_out: str | Path) -> dict:
    """The workflow's feature_summary job for one backbone: stats.npz (mean, std per dimension, training split)
    and probe.json (linear-probe accuracy of the classes)."""
    from i2a.data.clips import read_clip_table

    train = [np.load(p, mmap_mode="r") for p in train_features]
    valid = [np.load(p, mmap_mode="r") for p in valid_features]
    mean, std, xtr = feature_statistics(train)
    with atomic_path(stats_out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mean=mean.astype(np.float32), std=std.astype(np.float32))
    labels = {split: np.array([c for p in paths for c in read_clip_table(p)["class"]], dtype=object)
              for split, paths in (("train", train_index), ("valid", valid_index))}
    xva = clip_means(valid)
    ok_tr, ok_va = np.isfinite(xtr).all(1), np.isfinite(xva).all(1)  # clips whose extraction failed are left out
    result = linear_probe(xtr[ok_tr], list(labels["train"][ok_tr]), xva[ok_va], list(labels["valid"][ok_va]))
    write_text(probe_out, json.dumps(result, indent=2))
    log.info("linear probe: %.1f%% of %d validation clips (chance %.1f%%), %d classes", 100 * result["probe_acc"],
             result["valid_clips"], 100 * result["chance"], result["classes"])
    return result
