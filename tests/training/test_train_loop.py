"""train_gpt's loop: no host synchronisation or costly bookkeeping per step (issue 21.7); progress lines with the
epoch counted from 1 and an ETA, Lightning's adverts filtered, an optional logger for curves (issue 24.6)."""
import collections
import csv
import importlib.util
import logging
import re

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


# ------------------------------------------------------------------------------------------------ logs (24.6)
PROGRESS = re.compile(r"epoch (\d+)/2 batch (\d+)/4 \((\d+)%\) loss \d+\.\d{4}, [\d.]+ batches/s, "
                      r"ETA epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d$")


def test_progress_lines_count_epochs_from_1_with_an_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="i2a.training")
    train, valid = _datasets(16)  # 4 batches of 4
    train_gpt(_cfg(max_epochs=2), train, valid, tmp_path / "state", log_every=2, accelerator="cpu")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("i2a.training")]
    progress = [m.groups() for m in map(PROGRESS.match, lines) if m]
    assert progress == [("1", "2", "50"), ("1", "4", "100"), ("2", "2", "50"), ("2", "4", "100")], lines
    done = [line for line in lines if re.match(r"epoch \d+/2 done: train_loss", line)]
    assert [line.split()[1] for line in done] == ["1/2", "2/2"]
    assert not any(re.search(r"\bepoch 0\b(?!:\d\d)", line) for line in lines), lines  # ETA 0:00:01 aside


def test_lightning_adverts_and_known_noise_are_filtered(tmp_path, caplog, recwarn):
    lightning_log = logging.getLogger("lightning.pytorch")  # Lightning's own handler, not the root's
    lightning_log.addHandler(caplog.handler)
    try:
        train, valid = _datasets(8)
        train_gpt(_cfg(max_epochs=1), train, valid, tmp_path / "state", accelerator="cpu")
    finally:
        lightning_log.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn]
    assert any("GPU available" in m for m in messages)  # Lightning's other messages stay
    for noise in ("💡 Tip", "litlogger", "litmodels", "LeafSpec", "`srun` command"):
        assert not any(noise in m for m in messages), messages


def test_noise_filter_drops_only_the_known_messages():
    from i2a.training.loop import DropLightningNoise

    def passes(message):
        return DropLightningNoise().filter(logging.LogRecord("lightning", logging.INFO, "", 0, message, (), None))

    assert not passes("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)")
    assert not passes("The `srun` command is available on your system but is not used. HINT: ...")
    assert passes("GPU available: True (cuda), used: True") and passes("Tip of the day")


def test_csv_logger_writes_curves_while_training_runs(tmp_path):
    curves = tmp_path / "logs" / "demo" / "train_gpt" / "tiny.curves"
    seen = {}

    class LookDuringEpoch2(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 0:
                seen["rows"] = list(csv.DictReader(open(curves / "metrics.csv")))

    train, valid = _datasets(16)
    train_gpt(_cfg(max_epochs=2), train, valid, tmp_path / "state", log_every=2, accelerator="cpu",
              logger="csv", curves_dir=curves, callbacks=[LookDuringEpoch2()])
    assert seen["rows"] and {row["epoch"] for row in seen["rows"]} == {"1"}  # epoch 1 there while epoch 2 runs
    rows = list(csv.DictReader(open(curves / "metrics.csv")))
    assert [r["epoch"] for r in rows if r.get("val_loss")] == ["1", "2"]
    assert len([r for r in rows if r.get("train_loss")]) == 4  # one per progress line
    metrics = list(csv.DictReader(open(tmp_path / "state" / "metrics.csv")))
    assert [float(r["val_loss"]) for r in rows if r.get("val_loss")] == pytest.approx(
        [float(r["val_loss"]) for r in metrics])


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_tensorboard_logger_is_refused_clearly_without_the_package(tmp_path):
    from i2a.training.loop import curve_logger

    with pytest.raises(RuntimeError, match="logger: tensorboard needs the `tensorboard` package.*logger: csv"):
        curve_logger("tensorboard", tmp_path)
    with pytest.raises(ValueError, match="none, csv, tensorboard"):
        curve_logger("wandb", tmp_path)
    assert curve_logger("none", tmp_path) is None


def test_logger_is_cosmetic_not_a_rule_param():
    """`logger:` is read by the job from the config: a rule's params (which rerun jobs) never mention it."""
    from conftest import REPO

    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    assert 'config["logger"]' not in rules
    assert 'snakemake.config["logger"]' in (REPO / "workflow" / "scripts" / "train_gpt.py").read_text()
