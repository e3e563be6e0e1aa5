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

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from i2a.infra.atomic import copy_file, write_text
from i2a.infra.precision import set_precision
from i2a.models.condition import check_feature_stats, standardize
from i2a.models.gpt import GPT
from i2a.models.transformer import CKPT_FORMAT
from i2a.spec.frames import sample_frame_indices
from i2a.spec.runspec import RunSpec
from i2a.training.curves import curve_summary
from i2a.training.loop import (EpochSampler, TrainingState, fingerprint, fit, metrics_writer, quiet_lightning,
                               save_best)
from i2a.training.segments import SegmentDone, deadline_callback

log = logging.getLogger(__name__)

# the modules whose source the training state is bound to, besides the loop's (i2a.training.loop.fingerprint)
TRAINING_CODE = ("i2a.models.gpt", "i2a.spec.runspec", __name__)

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr")
# how training batches are read: throughput only (config `loader:`), never a result
LOADER_DEFAULTS = {"num_workers": 0, "pin_memory": True, "persistent_workers": True}


# ------------------------------------------------------------------------------------------------ data

class GPTDataset(Dataset):
    """(tokens (n_tokens,), feats (S, D)) per clip, as stored (int16 tokens, fp16 or fp32 features).

    `tokens` [N, n_tokens] and `feats` [N, crop_len, D] are anything row-indexable (numpy arrays, memory-maps,
    `i2a.data.store.ShardedArray`); only the S frames asked for are read. Conversion to model inputs (int64, fp32,
    standardised, transposed to (D, S)) happens after the batch reached the device (`model_inputs`), so a loader
    worker only gathers rows and ships half as many bytes. With `feats=None` and `random_feats_dim=D` the features
    are U[0, 1) noise, re-drawn for every item each epoch, as SpecVQGAN's no-feats baseline does (`np.random.rand`
    in place of the loaded features); here the draw is seeded by (seed, epoch, index). Indices may be
    `(index, epoch)` pairs (from `EpochSampler`) so that workers know the epoch.
    """

    def __init__(self, tokens: Any, feats: Any | None, S: int, random_feats_dim: int | None = None,
                 seed: int = 0, keep: np.ndarray | None = None):
        if (feats is None) == (random_feats_dim is None):
            raise ValueError("give either feats (real features) or random_feats_dim (the no-feats baseline)")
        if feats is not None and len(feats) != len(tokens):
            raise ValueError(f"{len(tokens)} token rows but {len(feats)} feature rows")
        self.tokens, self.feats, self.S = tokens, feats, S
        self.random_feats_dim, self.seed = random_feats_dim, seed
        self.keep = np.arange(len(tokens)) if keep is None else np.asarray(keep)  # the rows used, in order
        self.n_tokens = int(tokens.shape[1])
        if feats is not None:
            if len(feats.shape) != 3:
                raise ValueError(f"feats must be [N, crop_len, D], got shape {tuple(feats.shape)}")
            idx = sample_frame_indices(int(feats.shape[1]), S)
            # a run of consecutive frames (S = 212: all of them) is read as a slice: one block copy
            consecutive = np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
            self.frame_idx = slice(int(idx[0]), int(idx[0]) + len(idx)) if consecutive else idx
            self.feat_dim = int(feats.shape[2])
        else:
            self.feat_dim = int(random_feats_dim)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = index if isinstance(index, tuple) else (index, 0)
        index = int(self.keep[index])
        tokens = torch.from_numpy(np.asarray(self.tokens[index]))
        if self.feats is None:
            feats = np.random.default_rng([self.seed, epoch, index]).random((self.S, self.feat_dim), dtype=np.float32)
        else:  # only the S frames are read from a memory map (an array or a ShardedArray)
            feats = np.asarray(self.feats[index, self.frame_idx])
        return tokens, torch.from_numpy(np.ascontiguousarray(feats))


def model_inputs(batch: tuple[torch.Tensor, torch.Tensor], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored batch -> the GPT's inputs: tokens int64 (B, T) and features fp32 (B, D, S), standardised per
    dimension when `mean`/`std` (D,) are given. Runs wherever the batch is (the GPU in training)."""
    tokens, feats = batch
    feats = feats.float().transpose(1, 2)
    if mean is not None:
        feats = standardize(feats, mean, std)
    return tokens.long(), feats


def loader_workers(requested: int, processes: int = 1) -> int:
    """Loader worker processes per training process: `requested` (config `loader.num_workers`), but no more than
    the CPUs this job may use, shared by its `processes` (one per GPU) with one CPU each for the process itself,
    and at least one when any were requested. Throughput only: any number gives the same batches."""
    if requested <= 0:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(requested, max(1, cpus // max(1, processes) - 1))
    if workers < requested:
        log.info("loader: %d worker(s) per training process instead of num_workers %d: %d CPUs for %d process(es)",
                 workers, requested, cpus, processes)
    return workers


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
                 codebook_fingerprint: dict[str, Any] | None = None, feature_stats: dict[str, np.ndarray] | None = None,
                 loader: dict[str, Any] | None = None):
        super().__init__()
        self.spec, self.train_ds, self.valid_ds, self.state = spec, train_ds, valid_ds, state
        self.codebook_fingerprint, self.loader = codebook_fingerprint, {**LOADER_DEFAULTS, **(loader or {})}
        self.transformer = GPT(spec.model)
        check_feature_stats(spec.feature_norm, feature_stats, f"run {spec.name}")
        for name in ("mean", "std"):  # on the module, so they move to the device with it
            value = None if feature_stats is None else torch.as_tensor(feature_stats[name], dtype=torch.float32)
            self.register_buffer(f"feature_{name}", value, persistent=False)
        self.history: list[dict[str, float]] = []
        self.best_val_loss = math.inf
        self.write_metrics = metrics_writer(state.folder / "metrics.csv", METRIC_FIELDS)
        self.register_buffer("_sums", torch.zeros(4, dtype=torch.float64), persistent=False)  # train/val loss x n, n

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return model_inputs(batch, self.feature_mean, self.feature_std)

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
        # Only the generators this rank's dropout draws from are seeded, with what torch.manual_seed would give them:
        # torch.manual_seed also queues a seed for every other device type, with a Python stack trace each while
        # that device is not initialised (3 ms a step on a CPU).
        key = [self.spec.train.seed, self.current_epoch, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index or 0].manual_seed(seed)

    def training_step(self, batch, batch_idx):
        # summed on the device, no self.log (its bookkeeping costs more than a tiny model's step): no host
        # synchronisation per step; the epoch's mean is read at the end of the epoch and by progress lines
        loss, n = self._loss(batch)
        self._sums[0] += loss.detach() * n
        self._sums[1] += n
        return loss

    def train_loss_so_far(self) -> float | None:
        """The mean training loss of this epoch so far on this rank (a host synchronisation: for progress lines)."""
        total, n = self._sums[:2].tolist()
        return total / n if n else None

    def validation_step(self, batch, batch_idx):
        loss, n = self._loss(batch)
        self._sums[2] += loss * n
        self._sums[3] += n

    def on_validation_epoch_start(self) -> None:
        self._sums[2:] = 0

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._sums.clone(), reduce_op="sum").cpu()
        val_loss = float(sums[2] / max(sums[3], 1))
        row = {"epoch": self.current_epoch, "train_loss": float(sums[0] / max(sums[1], 1)), "val_loss": val_loss,
               "lr": self._epoch_lr}
        # val_loss for the LR scheduler and early stopping; all three for the curves (config `logger:`)
        self.log_dict({"val_loss": val_loss, "epoch_train_loss": row["train_loss"], "lr": row["lr"]}, sync_dist=False)
        self.history.append(row)
        log.info("epoch %d/%d done: train_loss %.4f val_loss %.4f lr %.3g", row["epoch"] + 1,
                 self.spec.train.max_epochs, row["train_loss"], row["val_loss"], row["lr"])
        if self.trainer.is_global_zero:
            self.write_metrics(self.history)
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            save_best(self, self.state, self.artifact(epoch=self.current_epoch, val_loss=val_loss))

    def artifact(self, **extra: Any) -> dict[str, Any]:
        """The trained model as a self-describing file: weights, the RunSpec that built it, its codebook."""
        return {"format": CKPT_FORMAT, "run_spec": self.spec.to_dict(), "codebook": self.codebook_fingerprint,
                "feature_stats": self._stats_for_checkpoint(),
                "state_dict": {k: v.detach().cpu() for k, v in self.transformer.state_dict().items()}, **extra}

    def _stats_for_checkpoint(self) -> dict[str, torch.Tensor] | None:
        if self.feature_mean is None:
            return None
        return {"mean": self.feature_mean.detach().cpu(), "std": self.feature_std.detach().cpu()}

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
        workers = loader_workers(self.loader["num_workers"], self.trainer.world_size)
        return DataLoader(ds, batch_size=self.spec.train.batch, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0 and self.loader["persistent_workers"],
                          pin_memory=self.loader["pin_memory"] and self.device.type == "cuda")

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_ds, shuffle=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # last.ckpt describes itself too (load_transformer reads it like best.ckpt)
        checkpoint.update(format=CKPT_FORMAT, run_spec=self.spec.to_dict(), codebook=self.codebook_fingerprint,
                          feature_stats=self._stats_for_checkpoint(), metrics_history=list(self.history),
                          best_val_loss=self.best_val_loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("metrics_history", []))
        self.best_val_loss = checkpoint.get("best_val_loss", math.inf)


def train_gpt(spec: RunSpec, train_ds: GPTDataset, valid_ds: GPTDataset, state_dir: str | Path, *,
              inputs: Sequence[str | Path] = (), codebook_fingerprint: dict[str, Any] | None = None,
              feature_stats: dict[str, np.ndarray] | None = None, accelerator: str = "auto",
              loader: dict[str, Any] | None = None, log_every: int = 50, callbacks: Sequence[Any] = (),
              deadline: float | None = None, logger: str = "none", curves_dir: str | Path | None = None
              ) -> dict[str, Any]:
    """Train the run's transformer in `state_dir` (resuming what a killed job left there), keeping
    `best.ckpt` (the best validation epoch, self-describing) and `metrics.csv` (one row per epoch).

    The state is bound to the content of `inputs` (the token and feature shards, the codebook) and to the run's
    training settings: change either and training starts over. Returns `curve_summary` plus the checkpoint path,
    the LR used and the parameter count. `callbacks` are extra Lightning callbacks (e.g. for tests). With a
    `deadline` (time.time()) training stops at an epoch's end before it and raises `SegmentDone` (segments).
    `logger` (none, csv or tensorboard: config `logger:`) writes curves into `curves_dir` while training runs.
    """
    for name, ds in (("train", train_ds), ("valid", valid_ds)):
        if ds.S != spec.feat_sample_size or ds.feat_dim != spec.model.feat_dim:
            raise ValueError(f"the {name} data gives S={ds.S} frames of {ds.feat_dim}-d features; the run "
                             f"{spec.name} wants S={spec.feat_sample_size} of {spec.model.feat_dim}-d")
        if ds.n_tokens + spec.feat_sample_size != spec.model.block_size:
            raise ValueError(f"the {name} data has {ds.n_tokens} tokens per clip; the run {spec.name} expects "
                             f"{spec.n_tokens} (a different codebook or audio crop?)")
    state = TrainingState(state_dir, fingerprint(inputs, spec.training_view(), TRAINING_CODE))
    train = spec.train
    set_precision(train.precision)  # TF32 or not; Lightning's precision below only sets the autocast
    pl.seed_everything(train.seed, workers=True, verbose=False)  # model init
    module = GPTModule(spec, train_ds, valid_ds, state, codebook_fingerprint, feature_stats, loader)
    n_params = sum(p.numel() for p in module.transformer.parameters())
    log.info("GPT %d layers x %d heads x %d-d (%.1fM params), S=%d, block %d, LR %.3g = %.3g x %d x %d x %d",
             spec.model.layers, spec.model.heads, spec.model.embed, n_params / 1e6, spec.feat_sample_size,
             spec.model.block_size, train.learning_rate, train.base_lr, train.batch, train.gpus, train.accumulate)
    cbs = list(callbacks)
    segment = deadline_callback(deadline) if deadline is not None else None
    if segment is not None:
        cbs.append(segment)
    if train.early_stopping:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss", mode="min", min_delta=0.0,
                                              patience=train.early_stopping_patience, verbose=True))
    # Several GPUs: Lightning starts the other ranks itself, even inside a one-task SLURM job (its SLURM
    # environment would instead wait for srun to have started one task per GPU).
    from lightning.pytorch.plugins.environments import LightningEnvironment

    trainer = fit(module, state, max_epochs=train.max_epochs, accelerator=accelerator, devices=train.gpus,
                  strategy="ddp" if train.gpus > 1 else "auto", precision=train.lightning_precision,
                  callbacks=cbs, log_every=log_every, logger=logger, curves_dir=curves_dir, accumulate_grad_batches=train.accumulate, use_distributed_sampler=False,
                  plugins=[LightningEnvironment()] if train.gpus > 1 else [])
    if segment is not None and segment.stopped:
        raise SegmentDone(trainer.current_epoch, train.max_epochs)
    summary = {**curve_summary(state.folder / "metrics.csv"), "best_ckpt": str(state.best),
               "metrics_csv": str(state.folder / "metrics.csv"), "lr": train.learning_rate, "n_params": n_params}
    if trainer is None or trainer.is_global_zero:
        state.mark_done(summary)
    return summary


def gpt_dataset(spec: RunSpec, token_files: Sequence[str | Path], feature_files: Sequence[str | Path]) -> GPTDataset:
    """Tokens and (memory-mapped) features of a split; random features for the no-feats baseline."""
    from i2a.data.store import ShardedArray, finite_rows

    tokens = ShardedArray(token_files)
    if spec.features == "none":
        return GPTDataset(tokens, None, spec.feat_sample_size, random_feats_dim=spec.model.feat_dim,
                          seed=spec.train.seed)
    feats = ShardedArray(feature_files)
    keep = np.flatnonzero(finite_rows(feats))
    if len(keep) < len(feats):
        log.warning("%d of %d clips have no features (their extraction failed: see the features' index files); "
                    "they are left out", len(feats) - len(keep), len(feats))
    return GPTDataset(tokens, feats, spec.feat_sample_size, seed=spec.train.seed, keep=keep)



def train_run(spec: RunSpec, tokens: dict[str, Sequence[str]], features: dict[str, Sequence[str]],
              codebook_ckpt: str | Path, state_dir: str | Path, best_out: str | Path, metrics_out: str | Path,
              summary_out: str | Path, feature_stats: str | Path | None = None,
              loader: dict[str, Any] | None = None, lr_find: str | Path | None = None,
              deadline: float | None = None, logger: str = "none", curves_dir: str | Path | None = None
              ) -> dict[str, Any]:
    """The workflow's train_gpt job: train on the run's token and feature shards ({'train': [...], 'valid':
    [...]}), then publish the best checkpoint, the metrics and a summary under their final names. A run with
    `base_lr: auto` takes its base LR from the LR finder's result (`lr_find`, runs/<run>/lr_find.json). `logger`
    and `curves_dir`: curves to watch while it runs (cosmetic, config `logger:`)."""
    from i2a.models.codebook import codebook_fingerprint

    spec = resolve_base_lr(spec, lr_find)
    train_ds = gpt_dataset(spec, tokens["train"], features["train"])
    valid_ds = gpt_dataset(spec, tokens["valid"], features["valid"])
    inputs = [*tokens["train"], *tokens["valid"], *features["train"], *features["valid"], codebook_ckpt]
    if feature_stats is not None:
        inputs.append(feature_stats)
    summary = train_gpt(spec, train_ds, valid_ds, state_dir, inputs=inputs,
                        codebook_fingerprint=codebook_fingerprint(codebook_ckpt),
                        feature_stats=load_feature_stats(feature_stats), loader=loader, deadline=deadline,
                        logger=logger, curves_dir=curves_dir)
    state = Path(state_dir)
    copy_file(state / "best.ckpt", best_out)
    copy_file(state / "metrics.csv", metrics_out)
    write_text(summary_out, json.dumps({**summary, "run": spec.training_view()}, indent=2))
    log.info("best epoch %d (counted from 1), val loss %.4f, overfit %s", summary["best_epoch"] + 1,
             summary["best_val_loss"],
             summary["overfit"])
    return summary


# ------------------------------------------------------------------------------------------------ LR finder
def find_learning_rate(spec: RunSpec, train_ds: GPTDataset, valid_ds: GPTDataset, *, min_lr: float = 1e-8,
                       max_lr: float = 1e-2, steps: int = 100, codebook_fingerprint: dict[str, Any] | None = None,
                       feature_stats: dict[str, np.ndarray] | None = None, accelerator: str = "auto",
                       loader: dict[str, Any] | None = None) -> dict[str, Any]:
    """Lightning's learning-rate range test (`Tuner.lr_find`) on the run's model and training data: `steps`
    optimizer steps from the run's initial weights, the LR growing exponentially from `min_lr` to `max_lr`
    (stopped early once the loss diverges), on one device with the run's batch, accumulation and precision.

    Returns the tested LRs with their (smoothed) losses and Lightning's suggestion, the LR of the steepest loss
    descent: an LR for one device's batch x accumulation. As a base LR (per sample, SpecVQGAN's rule) it is the
    suggestion / (batch x accumulate), so that `base_lr: auto` trains with the suggestion x gpus (linear scaling
    to the run's GPUs). Nothing of the run's own training state is touched: the test runs in a temporary folder.
    """
    import tempfile

    from lightning.pytorch.tuner import Tuner

    train = spec.train
    set_precision(train.precision)
    probe = spec if train.base_lr != "auto" else spec.with_base_lr(min_lr)  # the finder sets the LR itself
    pl.seed_everything(train.seed, workers=True, verbose=False)  # the same initial weights as the run
    with tempfile.TemporaryDirectory(prefix="lr_find.") as tmp:
        module = GPTModule(probe, train_ds, valid_ds, TrainingState(tmp, {}), codebook_fingerprint, feature_stats, loader)
        with quiet_lightning():
            trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=train.lightning_precision,
                                 max_epochs=-1, accumulate_grad_batches=train.accumulate, use_distributed_sampler=False,
                                 default_root_dir=tmp, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
            finder = Tuner(trainer).lr_find(module, min_lr=min_lr, max_lr=max_lr, num_training=steps,
                                            mode="exponential", update_attr=False)
    suggested = finder.suggestion()
    lrs, losses = [float(x) for x in finder.results["lr"]], [float(x) for x in finder.results["loss"]]
    result = {"run": spec.name, "suggested_lr": suggested,
              "suggested_base_lr": None if suggested is None else suggested / (train.batch * train.accumulate),
              "lr_for_run": None if suggested is None else suggested * train.gpus,
              "batch": train.batch, "accumulate": train.accumulate, "gpus": train.gpus, "precision": train.precision,
              "min_lr": min_lr, "max_lr": max_lr, "steps": steps, "steps_run": len(lrs),
              "configured_base_lr": train.base_lr, "lr": lrs, "loss": losses}
    log.info("LR finder, run %s: %d steps from %.2g to %.2g; suggested LR %s (base LR %s)", spec.name, len(lrs),
             min_lr, lrs[-1] if lrs else max_lr, "none" if suggested is None else f"{suggested:.3g}",
             "none" if suggested is None else f"{result['suggested_base_lr']:.3g}")
    return result


def resolve_base_lr(spec: RunSpec, lr_find: str | Path | None) -> RunSpec:
    """The run with `base_lr: auto` replaced by the LR finder's suggestion (per sample) from its lr_find.json."""
    if spec.train.base_lr != "auto":
        return spec
    if lr_find is None:
        raise ValueError(f"run {spec.name}: base_lr is auto but no LR finder result was given "
                         "(runs/<run>/lr_find.json)")
    found = json.loads(Path(lr_find).read_text())
    if found.get("suggested_base_lr") is None:
        raise ValueError(f"run {spec.name}: the LR finder ({lr_find}) could not suggest a learning rate (too few "
                         "steps before the loss diverged); set base_lr to a number, or widen lr_finder.min_lr/max_lr")
    log.info("base_lr auto: %.3g from the LR finder (%s)", found["suggested_base_lr"], lr_find)
    return spec.with_base_lr(found["suggested_base_lr"])


def load_feature_stats(path: str | Path | None) -> dict[str, np.ndarray] | None:
    """feature_summary's stats.npz (mean, std per dimension over the training split), or None without one."""
    if path is None:
        return None
    with np.load(path) as f:
        return {"mean": f["mean"], "std": f["std"]}


def lr_find_run(spec: RunSpec, tokens: dict[str, Sequence[str]], features: dict[str, Sequence[str]],
                codebook_ckpt: str | Path, out: str | Path, settings: dict[str, Any],
                feature_stats: str | Path | None = None, loader: dict[str, Any] | None = None) -> dict[str, Any]:
    """The workflow's lr_find job: the LR range test on the run's token and feature shards -> lr_find.json."""
    from i2a.models.codebook import codebook_fingerprint

    stats = load_feature_stats(feature_stats)
    result = find_learning_rate(spec, gpt_dataset(spec, tokens["train"], features["train"]),
                                gpt_dataset(spec, tokens["valid"], features["valid"]), min_lr=settings["min_lr"],
                                max_lr=settings["max_lr"], steps=settings["steps"],
                                codebook_fingerprint=codebook_fingerprint(codebook_ckpt), feature_stats=stats,
                                loader=loader)
    write_text(out, json.dumps(result, indent=2, allow_nan=True))
    return result
