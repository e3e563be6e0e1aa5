"""Train the stage-2 transformer (SpecVQGAN's `Net2NetTransformer` recipe) with PyTorch Lightning.

What is SpecVQGAN's: cross-entropy over all tokens from `logits[:, S-1:]`, AdamW (0.9, 0.95) with weight
decay on Linear weights only, LR = base_lr x batch x GPUs x accumulation, no clipping, best-val-loss
checkpoint, optional early stopping (patience 2 there). What the study added: dropout, other decays,
ReduceLROnPlateau / cosine schedules, no early stopping. Every knob is a field of `TrainConfig`.

A job can be killed and started again: it resumes from `out_dir/last.ckpt` (written after every epoch) and
ends where an uninterrupted run would (shuffling, random "no feats" features and dropout are all
seeded per epoch rather than drawn from a global RNG stream).
"""
from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from i2a.gpt import GPT, GPTConfig, sample_frame_indices

log = logging.getLogger(__name__)

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr")


@dataclass
class TrainConfig:
    """Defaults are SpecVQGAN's VAS transformer recipe (SPEC section 5)."""

    # model
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    vocab_size: int = 128
    block_size: int | None = None  # None: n_tokens + feat_sample_size (SpecVQGAN's 265 + S)
    # data
    feat_sample_size: int = 212  # S frames of the feature crop
    batch_size: int = 16
    num_workers: int = 0
    # optimisation
    base_lr: float = 1e-6  # LR = base_lr x batch_size x gpus x accumulate_grad_batches
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    gpus: int = 1  # devices; DDP when > 1
    accumulate_grad_batches: int = 1
    scheduler: Literal["none", "plateau", "cosine"] = "none"
    plateau_patience: int = 10
    plateau_factor: float = 0.1
    max_epochs: int = 30
    early_stopping: bool = False
    early_stopping_patience: int = 2
    seed: int = 0
    log_every_n_steps: int = 50
    cpu_threads: int = 0  # >0: torch threads while training on CPU (1 is fastest for tiny demo models)

    @property
    def learning_rate(self) -> float:
        return self.base_lr * self.batch_size * self.gpus * self.accumulate_grad_batches

    def validate(self) -> None:
        if self.scheduler not in ("none", "plateau", "cosine"):
            raise ValueError(f"scheduler must be 'none', 'plateau' or 'cosine', got {self.scheduler!r}")
        for name in ("batch_size", "gpus", "accumulate_grad_batches", "max_epochs", "feat_sample_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------ data

class GPTDataset(Dataset):
    """(tokens (n_tokens,) int64, feats (D, S) float32) per clip.

    `tokens` [N, n_tokens] and `feats` [N, crop_len, D] are anything row-indexable (numpy arrays, memory-maps,
    `i2a.store.ShardedArray`); only the rows asked for are read. With `feats=None` and `random_feats_dim=D`
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


class EpochSampler(Sampler):
    """Shuffles with a permutation seeded by (seed, epoch) and shards it over DDP ranks itself, so a resumed
    run sees the same order as an uninterrupted one. Yields (index, epoch) for `GPTDataset`."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.world_size > 1:  # pad like DistributedSampler so every rank gets the same count
            order = np.resize(order, len(self) * self.world_size)[self.rank::self.world_size]
        return iter([(int(i), self.epoch) for i in order])


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


def _lightning():
    import lightning.pytorch as pl  # imported lazily: slow to import, unused by sampling/evaluation
    return pl


def _make_module(cfg: TrainConfig, gpt_cfg: GPTConfig, train_ds: Dataset, valid_ds: Dataset):
    pl = _lightning()

    class GPTModule(pl.LightningModule):
        """Net2NetTransformer's training step on precomputed tokens; keys stay `transformer.*`."""

        def __init__(self):
            super().__init__()
            self.cfg, self.gpt_cfg = cfg, gpt_cfg
            self.transformer = GPT(gpt_cfg)
            self.history: list[dict[str, float]] = []
            self._sums = torch.zeros(4, dtype=torch.float64)  # train loss*n, train n, val loss*n, val n

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
            # Dropout masks seeded per (seed, epoch, batch, rank), not drawn from one global stream that
            # other consumers (DataLoader iterators) also touch: a resumed run then trains exactly as an
            # uninterrupted one.
            key = [cfg.seed, self.current_epoch, batch_idx, self.global_rank]
            torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))

        def training_step(self, batch, batch_idx):
            loss, n = self._loss(batch)
            self._sums[0] += loss.detach().double().cpu() * n
            self._sums[1] += n
            self.log("train_loss", loss, prog_bar=True, batch_size=n)
            return loss

        def validation_step(self, batch, batch_idx):
            loss, n = self._loss(batch)
            self._sums[2] += loss.double().cpu() * n
            self._sums[3] += n

        def on_validation_epoch_start(self) -> None:
            self._sums[2:] = 0

        def on_validation_epoch_end(self) -> None:
            sums = self.trainer.strategy.reduce(self._sums.to(self.device), reduce_op="sum").cpu()
            val_loss = float(sums[2] / max(sums[3], 1))
            self.log("val_loss", val_loss, prog_bar=True, sync_dist=False)
            if self.trainer.sanity_checking:
                return
            row = {"epoch": self.current_epoch, "train_loss": float(sums[0] / max(sums[1], 1)),
                   "val_loss": val_loss, "lr": self._epoch_lr}
            self.history.append(row)
            log.info("epoch %d: train_loss %.4f val_loss %.4f lr %.3g", row["epoch"], row["train_loss"],
                     row["val_loss"], row["lr"])
            if self.trainer.is_global_zero:
                _write_metrics(Path(self.trainer.default_root_dir) / "metrics.csv", self.history)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(optimizer_groups(self.transformer, cfg.weight_decay),
                                    lr=cfg.learning_rate, betas=tuple(cfg.betas), fused=True)
            if cfg.scheduler == "plateau":
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor,
                                                                   patience=cfg.plateau_patience)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss",
                                                           "interval": "epoch"}}
            if cfg.scheduler == "cosine":
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
            return opt

        def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
            sampler = EpochSampler(len(ds), shuffle, cfg.seed, self.global_rank, self.trainer.world_size)
            sampler.set_epoch(self.current_epoch)  # workers may prefetch before Lightning calls set_epoch
            return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                              persistent_workers=cfg.num_workers > 0, pin_memory=torch.cuda.is_available())

        def train_dataloader(self) -> DataLoader:
            return self._loader(train_ds, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return self._loader(valid_ds, shuffle=False)

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["gpt_config"] = asdict(gpt_cfg)
            checkpoint["train_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
            checkpoint["metrics_history"] = list(self.history)
            checkpoint["train_done"] = bool(self.trainer.should_stop
                                            or self.current_epoch + 1 >= self.trainer.max_epochs)

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.history = list(checkpoint.get("metrics_history", []))

    return GPTModule()


def _progress_callback(every: int):
    pl = _lightning()

    class LogProgress(pl.Callback):
        """Plain log lines (no carriage returns) so that cluster log files show where training is."""

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            n = trainer.num_training_batches
            if (batch_idx + 1) % every == 0 or batch_idx + 1 == n:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                loss = float(loss)
                rate = (batch_idx + 1) / max(time.time() - self.t0, 1e-9)
                log.info("epoch %d/%d batch %d/%d loss %.4f (%.2f batches/s)", trainer.current_epoch,
                         trainer.max_epochs - 1, batch_idx + 1, n, loss, rate)

    return LogProgress()


def _write_metrics(path: Path, rows: Sequence[dict[str, float]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


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


def _ensure_log_handler() -> None:
    """Make INFO progress visible when the caller configured no logging (as Lightning does for itself)."""
    if not logging.getLogger().hasHandlers() and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def train_gpt(train_ds: GPTDataset, valid_ds: GPTDataset, cfg: TrainConfig, out_dir: str | Path,
              accelerator: str = "auto", callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train, keeping `out_dir/{best,last}.ckpt` and `out_dir/metrics.csv`; resume from `last.ckpt` if present.

    Returns `curve_summary` plus the checkpoint paths, the LR used and the parameter count.
    `callbacks` are extra Lightning callbacks (e.g. for tests).
    """
    pl = _lightning()
    cfg.validate()
    _ensure_log_handler()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if train_ds.S != cfg.feat_sample_size or valid_ds.S != cfg.feat_sample_size:
        raise ValueError(f"datasets pick S={train_ds.S}/{valid_ds.S} frames but cfg.feat_sample_size="
                         f"{cfg.feat_sample_size}")
    gpt_cfg = GPTConfig(vocab_size=cfg.vocab_size, block_size=cfg.block_size or train_ds.n_tokens + cfg.feat_sample_size,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, feat_dim=train_ds.feat_dim,
                        embd_pdrop=cfg.embd_pdrop, resid_pdrop=cfg.resid_pdrop, attn_pdrop=cfg.attn_pdrop)

    last = out_dir / "last.ckpt"
    resume = last if last.is_file() else None
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if state.get("train_done"):
            log.info("%s says training finished: nothing to do", resume)
            return _result(out_dir, cfg)
        log.info("resuming from %s (epoch %d, step %d)", resume, state["epoch"], state["global_step"])
        del state

    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # model init
    module = _make_module(cfg, gpt_cfg, train_ds, valid_ds)
    n_params = sum(p.numel() for p in module.transformer.parameters())
    log.info("GPT %d layers x %d heads x %d-d (%.1fM params), S=%d, block %d, LR %.3g = %.3g x %d x %d x %d",
             cfg.n_layer, cfg.n_head, cfg.n_embd, n_params / 1e6, cfg.feat_sample_size, gpt_cfg.block_size,
             cfg.learning_rate, cfg.base_lr, cfg.batch_size, cfg.gpus, cfg.accumulate_grad_batches)

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val_loss", mode="min",
                                           save_top_k=1, save_last=True, enable_version_counter=False,
                                           auto_insert_metric_name=False)
    cbs = [ckpt_cb, _progress_callback(max(1, cfg.log_every_n_steps)), *callbacks]
    if cfg.early_stopping:
        cbs.append(pl.callbacks.EarlyStopping(monitor="val_loss", mode="min", min_delta=0.0,
                                              patience=cfg.early_stopping_patience, verbose=True))
    # Several GPUs: Lightning starts the other ranks itself, even inside a one-task SLURM job (its SLURM
    # environment would instead wait for srun to have started one task per GPU).
    from lightning.pytorch.plugins.environments import LightningEnvironment

    environment = [LightningEnvironment()] if cfg.gpus > 1 else None
    trainer = pl.Trainer(
        accelerator=accelerator, devices=cfg.gpus, strategy="ddp" if cfg.gpus > 1 else "auto", plugins=environment,
        precision="bf16-mixed" if on_gpu else "32-true", max_epochs=cfg.max_epochs,
        accumulate_grad_batches=cfg.accumulate_grad_batches, callbacks=cbs, default_root_dir=out_dir,
        logger=False, enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, log_every_n_steps=cfg.log_every_n_steps)
    t0, threads = time.time(), torch.get_num_threads()
    if cfg.cpu_threads > 0 and not on_gpu:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        trainer.fit(module, ckpt_path=resume)
    finally:
        torch.set_num_threads(threads)
    log.info("training took %.1f s", time.time() - t0)
    if trainer.is_global_zero and last.is_file():  # record that nothing is left to do (early stop, max_epochs)
        state = torch.load(last, map_location="cpu", weights_only=True)
        if not state.get("train_done"):
            state["train_done"] = True
            torch.save(state, last)
    return {**_result(out_dir, cfg), "n_params": n_params}


def _result(out_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    return {**curve_summary(out_dir / "metrics.csv"), "best_ckpt": str(out_dir / "best.ckpt"),
            "last_ckpt": str(out_dir / "last.ckpt"), "metrics_csv": str(out_dir / "metrics.csv"),
            "lr": cfg.learning_rate}
