"""train_gpt's loop: no host synchronisation or costly bookkeeping per step (issue 21.7); progress lines with the
epoch counted from 1 and an ETA, Lightning's adverts filtered, an optional logger for curves (issue 24.6)."""
import collections
import logging

import lightning.pytorch as pl
import pytest
import torch

from test_train_gpt import _cfg, _data
from i2a.training.gpt import GPTDataset, train_gpt

# what makes the host wait for the device (or reads a tensor's value on the host)
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__")


def _datasets(n_train: int):
    tokens, feats = _data(n_train, 0)
    valid_tokens, valid_feats = _data(8, 1)
    return GPTDataset(tokens, feats, S=2), GPTDataset(valid_tokens, valid_feats, S=2)


class CountBetween(pl.Callback):
    """Counts calls of the patched functions from the start of batch `first` to the end of batch `last`."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.active = first, last, False
        self.calls: collections.Counter = collections.Counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.active = self.active or batch_idx == self.first

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            self.active = False

    def wrap(self, name, fn):
        def counted(*args, **kwargs):
            if self.active:
                self.calls[name] += 1
            return fn(*args, **kwargs)
        return counted


def test_training_steps_do_not_synchronise_with_the_host(tmp_path, monkeypatch):
    """Ten steps in the middle of an epoch: no tensor read on the host, no device synchronisation, and none of the
    per-step bookkeeping that cost more than a tiny model's step (torch.manual_seed's lazy seeding of every device
    type with a stack trace each, Lightning's self.log). The progress line (every `log_every` batches) and the
    epoch's end read the loss: outside the counted steps."""
    train, valid = _datasets(48)  # 12 batches of 4
    counter = CountBetween(first=1, last=10)
    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counter.wrap(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", counter.wrap("cuda.synchronize", torch.cuda.synchronize))
    monkeypatch.setattr(torch, "manual_seed", counter.wrap("torch.manual_seed", torch.manual_seed))
    monkeypatch.setattr(pl.LightningModule, "log", counter.wrap("LightningModule.log", pl.LightningModule.log))
    summary = train_gpt(_cfg(max_epochs=1), train, valid, tmp_path / "state", callbacks=[counter], log_every=12,
                        accelerator="cpu")
    assert summary["epochs_run"] == 1
    assert not counter.active and counter.calls == {}, dict(counter.calls)
