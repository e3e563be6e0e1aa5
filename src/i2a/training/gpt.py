"""Training of the stage-2 transformer (SpecVQGAN's `Net2NetTransformer` recipe) as a Lightning module.

What is SpecVQGAN's: cross-entropy over all tokens from `logits[:, S-1:]`, AdamW (0.9, 0.95) with weight
decay on Linear weights only, LR = base_lr x batch x GPUs x accumulation, no clipping, best-val-loss
checkpoint, optional early stopping (patience 2 there). What the study added: dropout, other decays,
ReduceLROnPlateau / cosine schedules, no early stopping. Every knob is a field of the run's `RunSpec`.

A job can be killed and started again (`i2a.training.loop`): it resumes from its state folder and ends where an
uninterrupted run would (shuffling, random "no feats" features and dropout are all seeded per epoch rather than
drawn from a global RNG stream).
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from i2a.atomic import copy_file, write_text
from i2a.device import pick_device
from i2a.models.gpt import CKPT_FORMAT, GPT, sample_frame_indices
from i2a.runspec import RunSpec
from i2a.training.loop import EpochSampler, TrainingState, fingerprint, fit, metrics_writer, save_best

log = logging.getLogger(__name__)

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr")


# ------------------------------------------------------------------------------------------------ data

class GPTDataset(Dataset):
    """(tokens (n_tokens,) int64, feats (D, S) float32) per clip.

    `tokens` [N, n_tokens] and `feats` [N, crop_len, D] are anything row-indexable (numpy arrays, memory-maps,
    `i2a.data.store.ShardedArray`); only the rows asked for are read. With `feats=None` and `random_feats_dim=D`
    the features are U[0, 1) noise, re-drawn for every item each epoch, as SpecVQGAN's no-feats baseline
    does (`np.random.rand` in place of the loaded features); here the draw is seeded by (seed, epoch, index).
    Indices may be `(index, epoch)` pairs (from `EpochSampler`) so that workers know the epoch.
    """

    def __init__(self, tokens: Any, feats: Any | None, S: int, random_feats_dim: int | None = None,
                 seed: int = 0):
        if (feats is None) == (random_feats_dim is None):
            raise ValueError("give either feats (real features) or random_feats_dim (the no-feats baseline)")
        if feats is not None and len(feats) != len(tokens):
            raise ValueError(f"{len(tokens)} token rows but {len(feats)} feature rows")
        self.tokens, self.feats, self.S = tokens, feats, S
        self.random_feats_dim, self.seed = random_feats_dim, seed
        self.n_tokens = int(tokens.shape[1])
        if feats is not None:
            if len(feats.shape) != 3:
                raise ValueError(f"feats must be [N, crop_len, D], got shape {tuple(feats.shape)}")
            self.frame_idx = sample_frame_indices(int(feats.shape[1]), S)
            self.feat_dim = int(feats.shape[2])
        else:
            self.feat_dim = int(random_feats_dim)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = index if isinstance(index, tuple) else (index, 0)
        tokens = torch.from_numpy(np.asarray(self.tokens[index], dtype=np.int64))
        if self.feats is None:
            rng = np.random.default_rng([self.seed, epoch, index])
            feats = rng.random((self.feat_dim, self.S), dtype=np.float32)
        else:
            feats = np.asarray(self.feats[index], dtype=np.float32)[self.frame_idx].T
        return tokens, torch.from_numpy(np.ascontiguousarray(feats))


# ------------------------------------------------------------------------------------------------ model

def optimizer_groups(model: GPT, weight_decay: float) -> list[dict[str, Any]]:
    """SpecVQGAN's (minGPT's) split: decay Linear weights only; biases, LayerNorm, Embedding, the Conv1d
    embedder and pos_emb get none. Every parameter must land in exactly one group."""
    decay, no_decay = set(), set()
    for mn, m in model.named_modules():
        for pn, _ in m.named_parameters(recurse=False):
            fpn = f"{mn}.{pn}" if mn else pn
            if pn.endswith("bias"):
                no_decay.add(fpn)
            elif pn.endswith("weight") and isinstance(m, torch.nn.Linear):
                decay.add(fpn)
            elif pn.endswith("weight") and isinstance(m, (torch.nn.LayerNorm, torch.nn.Embedding, torch.nn.Conv1d)):
                no_decay.add(fpn)
    no_decay.add("pos_emb")
    params = dict(model.named_parameters())
    assert not decay & no_decay and decay | no_decay == params.keys(), "parameter groups do not cover the model"
    return [{"params": [params[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0}]


class GPTModule(pl.LightningModule):
    """Net2NetTransformer's training step on precomputed tokens; weights stay under `transformer.*`."""

    def __init__(self, spec: RunSpec, train_ds: Dataset, valid_ds: Dataset, state: TrainingState,
                 codebook: dict[str, Any] | None = None, num_workers: int = 0):
        super().__init__()
        self.spec, self.train_ds, self.valid_ds, self.state = spec, train_ds, valid_ds, state
        self.codebook, self.num_workers = codebook, num_workers
        self.transformer = GPT(spec.model)
        self.history: list[dict[str, float]] = []
        self.best_val_loss = math.inf
        self.write_metrics = metrics_writer(state.folder / "metrics.csv", METRIC_FIELDS)
        self.register_buffer("_sums", torch.zeros(4, dtype=torch.float64), persistent=False)  # train/val loss x n, n

    def _loss(self, batch) -> tuple[torch.Tensor, int]:
        tokens, feats = batch
        S = feats.shape[-1]
        logits = self.transformer(tokens[:, :-1], feats)[:, S - 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
        return loss, tokens.shape[0]

    def on_train_epoch_start(self) -> None:
        self._sums.zero_()
        # the LR this epoch trains with (epoch schedulers may step before validation ends)
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Dropout masks seeded per (seed, epoch, batch, rank), not drawn from one global stream that other
        # consumers (DataLoader iterators) also touch: a resumed run then trains exactly as an uninterrupted one.
        key = [self.spec.train.seed, self.current_epoch, batch_idx, self.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

    def training_step(self, batch, batch_idx):
        loss, n = self._loss(batch)
        self._sums[0] += loss.detach() * n  # summed on the device: no host synchronisation per step
        self._sums[1] += n
        self.log("train_loss", loss, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, n = self._loss(batch)
        self._sums[2] += loss * n
        self._sums[3] += n

    def on_validation_epoch_start(self) -> None:
        self._sums[2:] = 0

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._sums.clone(), reduce_op="sum").cpu()
        val_loss = float(sums[2] / max(sums[3], 1))
        self.log("val_loss", val_loss, sync_dist=False)
        row = {"epoch": self.current_epoch, "train_loss": float(sums[0] / max(sums[1], 1)), "val_loss": val_loss,
               "lr": self._epoch_lr}
        self.history.append(row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f lr %.3g", row["epoch"], row["train_loss"],
                 row["val_loss"], row["lr"])
        if self.trainer.is_global_zero:
            self.write_metrics(self.history)
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            save_best(self, self.state, self.artifact(epoch=self.current_epoch, val_loss=val_loss))

    def artifact(self, **extra: Any) -> dict[str, Any]:
        """The trained model as a self-describing file: weights, the RunSpec that built it, its codebook."""
        return {"format": CKPT_FORMAT, "run_spec": self.spec.to_dict(), "codebook": self.codebook,
                "state_dict": {k: v.detach().cpu() for k, v in self.transformer.state_dict().items()}, **extra}

    def configure_optimizers(self):
        train = self.spec.train
        opt = torch.optim.AdamW(optimizer_groups(self.transformer, train.weight_decay), lr=train.learning_rate,
                                betas=tuple(train.betas), fused=True)
        if train.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=train.plateau_factor,
                                                               patience=train.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}
        if train.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=train.max_epochs)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        sampler = EpochSampler(len(ds), shuffle, self.spec.train.seed, self.global_rank, self.trainer.world_size)
        sampler.set_epoch(self.current_epoch)  # workers may prefetch before Lightning calls set_epoch
        return DataLoader(ds, batch_size=self.spec.train.batch, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=self.device.type == "cuda")

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_ds, shuffle=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # last.ckpt describes itself too (load_transformer reads it like best.ckpt)
        checkpoint.update(format=CKPT_FORMAT, run_spec=self.spec.to_dict(), codebook=self.codebook,
                          metrics_history=list(self.history), best_val_loss=self.best_val_loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("metrics_history", []))
        self.best_val_loss = checkpoint.get("best_val_loss", math.inf)


def curve_summary(metrics_csv: str | Path) -> dict[str, Any]:
    """Best epoch (0-based) and loss; `overfit` when val loss rose after the best epoch."""
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs")
    val = [float(r["val_loss"]) for r in rows]
    best = int(np.argmin(val))
    return {"best_epoch": int(rows[best]["epoch"]), "best_val_loss": val[best],
            "overfit": any(v > val[best] for v in val[best + 1:]), "epochs_run": len(rows)}


def train_gpt(spec: RunSpec, train_ds: GPTDataset, valid_ds: GPTDataset, state_dir: str | Path, *,
              inputs: Sequence[str | Path] = (), codebook: dict[str, Any] | None = None, accelerator: str = "auto",
              num_workers: int = 0, log_every: int = 50, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the run's transformer in `state_dir` (resuming what a killed job left there), keeping
    `best.ckpt` (the best validation epoch, self-describing) and `metrics.csv` (one row per epoch).

    The state is bound to the content of `inputs` (the token and feature shards, the codebook) and to the run's
    training settings: change either and training starts over. Returns `curve_summary` plus the checkpoint path,
    the LR used and the parameter count. `callbacks` are extra Lightning callbacks (e.g. for tests).
    """
    for name, ds in (("train", train_ds), ("valid", valid_ds)):
        if ds.S != spec.feat_sample_size or ds.feat_dim != spec.model.feat_dim:
            raise ValueError(f"the {name} data gives S={ds.S} frames of {ds.feat_dim}-d features; the run "
                             f"{spec.name} wants S={spec.feat_sample_size} of {spec.model.feat_dim}-d")
        if ds.n_tokens + spec.feat_sample_size != spec.model.block_size:
            raise ValueError(f"the {name} data has {ds.n_tokens} tokens per clip; the run {spec.name} expects "
                             f"{spec.n_tokens} (a different codebook or audio crop?)")
    state = TrainingState(state_dir, fingerprint(inputs, spec.training_view()))
    train = spec.train
    pl.seed_everything(train.seed, workers=True, verbose=False)  # model init
    module = GPTModule(spec, train_ds, valid_ds, state, codebook, num_workers)
    n_params = sum(p.numel() for p in module.transformer.parameters())
    log.info("GPT %d layers x %d heads x %d-d (%.1fM params), S=%d, block %d, LR %.3g = %.3g x %d x %d x %d",
             spec.model.layers, spec.model.heads, spec.model.embed, n_params / 1e6, spec.feat_sample_size,
             spec.model.block_size, train.learning_rate, train.base_lr, train.batch, train.gpus, train.accumulate)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and pick_device().type == "cuda")
    cbs = list(callbacks)
    if train.early_stopping:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss", mode="min", min_delta=0.0,
                                              patience=train.early_stopping_patience, verbose=True))
    # Several GPUs: Lightning starts the other ranks itself, even inside a one-task SLURM job (its SLURM
    # environment would instead wait for srun to have started one task per GPU).
    from lightning.pytorch.plugins.environments import LightningEnvironment

    trainer = fit(module, state, max_epochs=train.max_epochs, accelerator=accelerator, devices=train.gpus,
                  strategy="ddp" if train.gpus > 1 else "auto", precision="bf16-mixed" if on_gpu else "32-true",
                  callbacks=cbs, log_every=log_every, accumulate_grad_batches=train.accumulate, use_distributed_sampler=False,
                  plugins=[LightningEnvironment()] if train.gpus > 1 else [])
    summary = {**curve_summary(state.folder / "metrics.csv"), "best_ckpt": str(state.best),
               "metrics_csv": str(state.folder / "metrics.csv"), "lr": train.learning_rate, "n_params": n_params}
    if trainer is None or trainer.is_global_zero:
        state.mark_done(summary)
    return summary


def gpt_dataset(spec: RunSpec, token_files: Sequence[str | Path], feature_files: Sequence[str | Path]) -> GPTDataset:
    """Tokens and (memory-mapped) features of a split; random features for the no-feats baseline."""
    from i2a.data.store import ShardedArray

    tokens = ShardedArray(token_files)
    if spec.features == "none":
        return GPTDataset(tokens, None, spec.feat_sample_size, random_feats_dim=spec.model.feat_dim,
                          seed=spec.train.seed)
    return GPTDataset(tokens, ShardedArray(feature_files), spec.feat_sample_size, seed=spec.train.seed)


def train_run(spec: RunSpec, tokens: dict[str, Sequence[str]], features: dict[str, Sequence[str]],
              codebook_ckpt: str | Path, state_dir: str | Path, best_out: str | Path, metrics_out: str | Path,
              summary_out: str | Path, num_workers: int = 0) -> dict[str, Any]:
    """The workflow's train_gpt job: train on the run's token and feature shards ({'train': [...], 'valid':
    [...]}), then publish the best checkpoint, the metrics and a summary under their final names."""
    from i2a.models.codebook import codebook_fingerprint

    train_ds = gpt_dataset(spec, tokens["train"], features["train"])
    valid_ds = gpt_dataset(spec, tokens["valid"], features["valid"])
    inputs = [*tokens["train"], *tokens["valid"], *features["train"], *features["valid"], codebook_ckpt]
    summary = train_gpt(spec, train_ds, valid_ds, state_dir, inputs=inputs, codebook=codebook_fingerprint(codebook_ckpt),
                        num_workers=num_workers)
    state = Path(state_dir)
    copy_file(state / "best.ckpt", best_out)
    copy_file(state / "metrics.csv", metrics_out)
    write_text(summary_out, json.dumps({**summary, "run": spec.training_view()}, indent=2))
    log.info("best epoch %s, val loss %.4f, overfit %s", summary["best_epoch"], summary["best_val_loss"],
             summary["overfit"])
    return summary
