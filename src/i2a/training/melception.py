"""Training of a Melception-architecture classifier on the dataset's own classes, as a Lightning module.

The demo's stand-in for the released VGGSound Melception: its features and logits are what FID and MKL are
computed on, so it must judge what a generator can make. A codebook of a few dozen codes cannot keep the fine
noise texture of a spectrogram; a classifier trained on clean spectrograms alone learns to key on that texture
and calls good reconstructions the wrong class. Augmentations that imitate what a codebook does to a
spectrogram (blur along time and frequency, shifts of a bin or two, a little noise), applied to a fraction of
the training batches, make it judge the content instead; showing it some training clips as the codebook
reconstructs them (`reconstructed`) teaches it exactly what a codebook keeps.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.models.melception import (CKPT_FORMAT, Melception, MelceptionConfig, check_mels, compute_mel_stats,
                                   standardise)
from i2a.training.loop import BEST, EpochSampler, TrainingState, fingerprint, fit, save_best

log = logging.getLogger(__name__)

# the modules whose source the training state is bound to, besides the loop's (i2a.training.loop.fingerprint)
TRAINING_CODE = ("i2a.models.melception", __name__)


@dataclass
class MelceptionTrainConfig:
    """Defaults follow SpecVQGAN's melception.yaml (Adam 3e-4, betas (0.9, 0.999), no weight decay, best
    validation loss kept) except width, epochs, batch size and lr (3e-4 there), sized for a laptop demo of a few
    dozen clips, and BatchNorm recalibration, which such a short run needs."""

    width: float = 0.125
    dropout: float = 0.5
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    recalibrate_bn: bool = True  # exact BN stats over the train clips before each validation
    patience: int | None = None  # SpecVQGAN: 3 (early stopping on validation loss); None = run all epochs
    max_seconds: float | None = None  # stop after the epoch that crosses this wall-clock budget
    # augmentations (see the module docstring), each training clip with probability `augment`:
    augment: float = 0.0
    blur: float = 1.5  # largest Gaussian blur sigma, in mel bins and in frames (each drawn in [0, blur])
    shift: int = 2  # largest circular shift in frames (and a third of it in mel bins)
    noise: float = 0.02  # largest std of added Gaussian noise, in [0, 1] mel units
    # each training clip with this probability is shown as its codebook reconstruction (encoded and decoded by
    # the codebook the generators use): exactly what the codebook keeps and loses, with the clip's label
    reconstructed: float = 0.0
    seed: int = 1337
    class_names: list[str] = field(default_factory=list)  # only needed when labels are integers

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d.pop("max_seconds")
        return d


def _encode_labels(train_labels: Sequence, valid_labels: Sequence,
                   class_names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    train_labels, valid_labels = list(train_labels), list(valid_labels)
    if all(isinstance(y, str) for y in train_labels + valid_labels):
        names = list(class_names) or sorted(set(train_labels))
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted(set(train_labels + valid_labels) - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the training classes {names}")
        return (np.array([index[y] for y in train_labels]), np.array([index[y] for y in valid_labels]), names)
    ytr, yva = np.asarray(train_labels, dtype=np.int64), np.asarray(valid_labels, dtype=np.int64)
    n_cls = int(max(ytr.max(), yva.max() if len(yva) else 0)) + 1
    names = list(class_names) or [str(i) for i in range(n_cls)]
    if ytr.min() < 0 or n_cls > len(names):
        raise ValueError(f"integer labels must lie in [0, {len(names)}) (class_names has {len(names)} entries)")
    return ytr, yva, names


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> None:
    """Replace BatchNorm running stats by the exact averages over x under the current weights.

    With a few dozen optimiser steps, momentum-averaged running stats lag the fast-moving weights and ~90 stacked
    BN layers compound the error until eval-mode features collapse to a constant; recomputing them (the usual
    'BN recalibration') fixes that. Not needed at VGGSound scale, where SpecVQGAN trained for many epochs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2 radius + 1) normalised Gaussian kernels; sigma 0 is the identity."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None] / sigmas.clamp(min=1e-3)[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def augment_mels(mels01: torch.Tensor, cfg: MelceptionTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """What a codebook does to a spectrogram, drawn per clip: blur along frequency and time, a small shift, noise.
    (B, 80, T) in [0, 1] -> same shape, clipped to [0, 1]. Clips not drawn (probability 1 - cfg.augment) pass."""
    B, F_, T = mels01.shape
    chosen = torch.rand(B, generator=generator) < cfg.augment
    if not chosen.any():
        return mels01
    x = mels01[chosen]
    n = len(x)
    radius = max(1, math.ceil(3 * cfg.blur))
    for axis, sigmas in ((1, torch.rand(n, generator=generator) * cfg.blur),
                         (2, torch.rand(n, generator=generator) * cfg.blur)):
        kernels = _gaussian_kernels(sigmas, radius)  # (n, K): one depthwise kernel per clip
        moved = x.transpose(1, 2) if axis == 1 else x  # blur the last axis: (n, rows, length)
        rows, length = moved.shape[1], moved.shape[2]
        padded = F.pad(moved.reshape(1, n * rows, length), (radius, radius), mode="replicate")
        weight = kernels.repeat_interleave(rows, dim=0)[:, None, :]
        blurred = F.conv1d(padded, weight, groups=n * rows).reshape(n, rows, length)
        x = blurred.transpose(1, 2) if axis == 1 else blurred
    shifts_t = torch.randint(-cfg.shift, cfg.shift + 1, (n,), generator=generator)
    shifts_f = torch.randint(-(cfg.shift // 3), cfg.shift // 3 + 1, (n,), generator=generator)
    x = torch.stack([torch.roll(c, (int(sf), int(st)), dims=(0, 1)) for c, sf, st in zip(x, shifts_f, shifts_t)])
    noise = torch.randn(x.shape, generator=generator) * (torch.rand(n, 1, 1, generator=generator) * cfg.noise)
    out = mels01.clone()
    out[chosen] = (x + noise).clamp(0, 1)
    return out


class _Indices(torch.utils.data.Dataset):
    """Hands the sampler's (index, epoch) pairs through: the clips themselves are tensors on the module."""

    def __getitem__(self, item):
        return item


class MelceptionModule(pl.LightningModule):
    def __init__(self, cfg: MelceptionTrainConfig, model_cfg: MelceptionConfig, train01: torch.Tensor,
                 ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor, stats: np.ndarray, class_names: list[str],
                 state: TrainingState, reconstructed01: torch.Tensor | None = None):
        super().__init__()
        self.cfg, self.state, self.stats, self.class_names = cfg, state, stats, class_names
        self.model = Melception(model_cfg)
        self.train01, self.ytr, self.xva, self.yva = train01, ytr, xva, yva
        self.reconstructed01 = reconstructed01
        self.xtr = standardise(train01, stats)  # for BN recalibration: the clean training clips
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"valid_loss": math.inf, "epoch": -1}
        self._train_loss, self._t0 = [], time.time()

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas,
                                weight_decay=self.cfg.weight_decay)

    def train_dataloader(self):
        sampler = EpochSampler(len(self.ytr), True, self.cfg.seed)
        sampler.set_epoch(self.current_epoch)
        # drop a trailing batch of one: BatchNorm cannot train on a single clip
        return torch.utils.data.DataLoader(_Indices(), sampler=sampler, batch_size=self.cfg.batch_size,
                                           drop_last=len(self.ytr) % self.cfg.batch_size == 1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(range(len(self.yva)), batch_size=self.cfg.batch_size)

    def training_step(self, batch, batch_idx):
        index, epoch = batch
        mels = self.train01[index]
        generator = torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + epoch[0] * 10_007 + batch_idx))
        if self.reconstructed01 is not None:
            shown = torch.rand(len(index), generator=generator) < self.cfg.reconstructed
            mels = torch.where(shown[:, None, None], self.reconstructed01[index], mels)
        if self.cfg.augment > 0:
            mels = augment_mels(mels, self.cfg, generator)
        loss = F.cross_entropy(self.model(standardise(mels, self.stats))["logits"], self.ytr[index])
        self._train_loss.append(float(loss.detach()))
        return loss

    def on_validation_epoch_start(self) -> None:
        if self.cfg.recalibrate_bn:
            recalibrate_batchnorm(self.model, self.xtr)
        self._val_logits = []

    def validation_step(self, index, batch_idx):
        self._val_logits.append(self.model(self.xva[index])["logits"])

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits)
        valid_loss = F.cross_entropy(logits, self.yva).item()
        valid_acc = (logits.argmax(1) == self.yva).float().mean().item()
        row = {"epoch": self.current_epoch, "train_loss": float(np.mean(self._train_loss)) if self._train_loss else
               math.nan, "valid_loss": valid_loss, "valid_acc": valid_acc}
        self._train_loss = []
        self.history.append(row)
        self.log("valid_loss", valid_loss)
        log.info("melception epoch %d: train loss %.4f, valid loss %.4f, valid acc %.3f (%.1fs)", row["epoch"] + 1,
                 row["train_loss"], valid_loss, valid_acc, time.time() - self._t0)
        if valid_loss < self.best["valid_loss"]:
            self.best = {"valid_loss": valid_loss, "valid_acc": valid_acc, "epoch": self.current_epoch}
            save_best(self, self.state, self.artifact())

    def artifact(self) -> dict[str, Any]:
        return {"format": CKPT_FORMAT, "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "config": asdict(self.model.config), "train_config": self.cfg.settings(),
                "stats": torch.from_numpy(self.stats), "class_names": self.class_names, "history": list(self.history),
                "best": dict(self.best)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["melception_training"] = {"history": self.history, "best": self.best}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["melception_training"]
        self.history, self.best = list(saved["history"]), dict(saved["best"])


def train_melception(train_mels: np.ndarray, train_labels: Sequence, valid_mels: np.ndarray,
                     valid_labels: Sequence, cfg: MelceptionTrainConfig, out_path: str | Path,
                     state_dir: str | Path | None = None, inputs: Sequence[str | Path] = (),
                     train_reconstructions: np.ndarray | None = None) -> dict:
    """Train a Melception-architecture classifier on the dataset's classes (in place of the VGGSound one).

    Mels are (N, 80, T) float32 in [0, 1]; labels class-name strings (or ints with cfg.class_names).
    Standardisation stats come from the train mels. `train_reconstructions` (the codebook's reconstructions of the
    train mels, row for row) are needed when cfg.reconstructed > 0. Writes the best-validation-loss weights with
    config, stats
    and class names to out_path (load with `load_melception`) and returns a summary with the history. A killed
    job resumes from `state_dir` (default: beside out_path), bound to `inputs` and the settings.
    """
    train_mels, valid_mels = np.asarray(train_mels, dtype=np.float32), np.asarray(valid_mels, dtype=np.float32)
    check_mels(train_mels)
    check_mels(valid_mels)
    if len(train_mels) != len(train_labels) or len(valid_mels) != len(valid_labels):
        raise ValueError("mels and labels differ in length")
    if len(valid_mels) == 0:
        raise ValueError("empty validation set: the best checkpoint is picked on validation loss")
    if (cfg.reconstructed > 0) != (train_reconstructions is not None):
        raise ValueError("give the codebook's reconstructions of the training clips exactly when cfg.reconstructed > 0")
    if train_reconstructions is not None and np.shape(train_reconstructions) != train_mels.shape:
        raise ValueError(f"reconstructions {np.shape(train_reconstructions)} do not match the clips {train_mels.shape}")
    ytr, yva, class_names = _encode_labels(train_labels, valid_labels, cfg.class_names)
    out_path = Path(out_path)
    labels = [list(map(str, train_labels)), list(map(str, valid_labels))]
    state = TrainingState(state_dir or out_path.with_name(out_path.stem + ".state"),
                          fingerprint(inputs, {**cfg.settings(), "labels": labels}, TRAINING_CODE))
    torch.manual_seed(cfg.seed)
    stats = compute_mel_stats(train_mels)
    model_cfg = MelceptionConfig(num_classes=len(class_names), width=cfg.width, dropout=cfg.dropout)
    module = MelceptionModule(cfg, model_cfg, torch.from_numpy(train_mels), torch.from_numpy(ytr),
                              torch.from_numpy(standardise(valid_mels, stats)), torch.from_numpy(yva), stats,
                              class_names, state, None if train_reconstructions is None else
                              torch.from_numpy(np.clip(np.asarray(train_reconstructions, dtype=np.float32), 0, 1)))
    log.info("training Melception width %.3g (%d params) on %d clips, %d classes; valid %d clips%s", cfg.width,
             sum(p.numel() for p in module.model.parameters()), len(train_mels), len(class_names), len(valid_mels),
             (f", augmenting {cfg.augment:.0%} of training clips" if cfg.augment else "")
             + (f", {cfg.reconstructed:.0%} shown through the codebook" if cfg.reconstructed else ""))
    callbacks = []
    if cfg.patience is not None:
        callbacks.append(pl.callbacks.EarlyStopping(monitor="valid_loss", mode="min", patience=cfg.patience))
    trainer = fit(module, state, max_epochs=cfg.epochs, accelerator="cpu", callbacks=callbacks, log_every=10**9,
                  max_time=None if cfg.max_seconds is None else {"seconds": cfg.max_seconds})
    if trainer is not None:
        state.mark_done({"best": module.best, "history": module.history})
    state.publish(BEST, out_path)
    best, history = state.done["best"], state.done["history"]
    log.info("melception: best epoch %d (valid loss %.4f, acc %.3f) saved to %s", best["epoch"] + 1,
             best["valid_loss"], best.get("valid_acc", float("nan")), out_path)
    return {**best, "seconds": time.time() - module._t0, "epochs_run": len(history), "history": history,
            "class_names": class_names, "width": cfg.width, "feature_dim": module.model.feature_dim}


def train_from_shards(train_shards: Sequence[str | Path], valid_shards: Sequence[str | Path],
                      settings: dict[str, Any], crop_frames: int, out_path: str | Path,
                      codebook_ckpt: str | Path | None = None) -> dict:
    """The workflow's train_melception job: the dataset's classes, centre-cropped mels of the model's width (and,
    with settings['reconstructed'] > 0, the codebook's reconstructions of the training clips)."""
    from i2a.data.clips import split_clips, split_mels

    train_mels, valid_mels = split_mels(train_shards, crop_frames), split_mels(valid_shards, crop_frames)
    train_labels, valid_labels = list(split_clips(train_shards)["class"]), list(split_clips(valid_shards)["class"])
    inputs = [Path(d) / "mels.npy" for d in [*train_shards, *valid_shards]]
    reconstructions = None
    if codebook_ckpt is not None:
        from i2a.models.codebook import decode_tokens, encode_mels, load_codebook

        codebook = load_codebook(codebook_ckpt)
        reconstructions = decode_tokens(codebook, encode_mels(codebook, train_mels), progress=False)
        inputs.append(Path(codebook_ckpt))
    return train_melception(train_mels, train_labels, valid_mels, valid_labels, MelceptionTrainConfig(**settings),
                            out_path, inputs=inputs, train_reconstructions=reconstructions)
