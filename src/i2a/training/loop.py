"""What every trained model shares: a resumable state folder bound to its inputs, atomic checkpoints, per-epoch
metrics, plain progress lines, and an output that appears under its final name only when training is complete.

A training job on a cluster is killed (time limit, preemption, a dying node) and started again; each start
resumes from the state folder's `last.ckpt`, written atomically after every epoch, and ends where an
uninterrupted run would have. The folder is bound to a fingerprint of everything that changes the result (the
content of the input files, the settings, and the source of the modules that train): when it no longer matches,
the old state is set aside and training starts from scratch. A state that says training finished is handed back
as it is, with a warning naming the folder to delete to train again (a forced Snakemake rerun alone does not).
A `last.ckpt` that cannot be read (a truncated write from before, a full disk) is set aside with a warning; it
never makes the job fail for good.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from i2a.infra.atomic import atomic_path, copy_file, save_torch, write_text
from i2a.infra.checksum import content_digest

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
LAST = "last.ckpt"
BEST = "best.ckpt"
DONE = "done.json"


# ------------------------------------------------------------------------------------------------ fingerprints
# the modules every training runs through (this loop, the arithmetic); each trainer names its own besides
LOOP_CODE = (__name__, "i2a.infra.precision")


def code_digests(modules: Iterable[str]) -> dict[str, str]:
    """{module: digest of its source file}, found without importing it: an edit of the code that trains (a fixed
    loss, another sampler) makes another result, so a state folder is bound to it as to its inputs."""
    import importlib.util

    return {name: content_digest(importlib.util.find_spec(name).origin) for name in sorted({*LOOP_CODE, *modules})}


def fingerprint(inputs: Iterable[str | os.PathLike] = (), settings: Any = None,
                code: Iterable[str] = ()) -> dict[str, Any]:
    """What a training result depends on: the content of its input files, its settings (JSON-able) and the source
    of the modules that train (`code`, module names, with LOOP_CODE)."""
    t0 = time.monotonic()
    files = {str(p): content_digest(p) for p in inputs}
    log.info("fingerprint of %d input files in %.1f s", len(files), time.monotonic() - t0)
    return {"settings": json.loads(json.dumps(settings, sort_keys=True, default=str)), "inputs": files,
            "code": code_digests(code)}


# ------------------------------------------------------------------------------------------------ state folder
class TrainingState:
    """A training's state folder: `last.ckpt` (resume), `best.ckpt` (the result so far), `done.json`."""

    def __init__(self, folder: str | os.PathLike, fingerprint: dict[str, Any]):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    last = property(lambda self: self.folder / LAST)
    best = property(lambda self: self.folder / BEST)

    def open(self) -> Path | None:
        """Prepare the folder; the checkpoint to resume from, or None to start from scratch."""
        stamp = self.folder / FINGERPRINT
        if self.folder.exists():
            stored = json.loads(stamp.read_text()) if stamp.is_file() else None
            if stored != self.fingerprint:
                aside = self.folder.with_name(self.folder.name + ".stale")
                shutil.rmtree(aside, ignore_errors=True)
                self.folder.replace(aside)
                log.info("the inputs or settings changed since %s was written (%s): set aside to %s, training "
                         "from scratch", self.folder, _what_changed(stored, self.fingerprint), aside)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            write_text(stamp, json.dumps(self.fingerprint, indent=1, sort_keys=True))
        if not self.last.is_file():
            return None
        try:
            torch.load(self.last, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is set aside, whatever the reason
            corrupt = self.last.with_name(LAST + ".corrupt")
            self.last.replace(corrupt)
            log.warning("%s cannot be read (%s: %s): set aside to %s; training restarts from scratch", self.last,
                        type(err).__name__, str(err)[:200], corrupt)
            return None
        return self.last

    @property
    def done(self) -> dict[str, Any] | None:
        path = self.folder / DONE
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_done(self, summary: dict[str, Any]) -> None:
        write_text(self.folder / DONE, json.dumps(summary, indent=2, default=float))

    def publish(self, name: str, dest: str | os.PathLike) -> Path:
        """Copy a finished file of the state folder to an output path, atomically."""
        return copy_file(self.folder / name, dest)


def _what_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "no fingerprint"
    changed = [k for k in sorted(set(old.get("inputs", {})) | set(new["inputs"]))
               if old.get("inputs", {}).get(k) != new["inputs"].get(k)]
    parts = [f"input {Path(k).name}" for k in changed[:3]] + (["..."] if len(changed) > 3 else [])
    if old.get("settings") != new["settings"]:
        parts.append("settings")
    code = [name for name in sorted(set(old.get("code", {})) | set(new.get("code", {})))
            if old.get("code", {}).get(name) != new.get("code", {}).get(name)]
    if code:
        parts.append(f"training code ({', '.join(code)})")
    return ", ".join(parts) or "format"


# ------------------------------------------------------------------------------------------------ Lightning parts
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


def _lightning():
    import lightning.pytorch as pl  # imported lazily: slow to import, unused by inference

    return pl


def atomic_checkpoint_io():
    """Lightning's checkpoint writer, but writing to a temporary name and renaming (Lightning writes in place)."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            save_torch(checkpoint, path)

    return AtomicCheckpointIO()


def metrics_writer(path: str | os.PathLike, fields: Sequence[str] | None = None) -> Callable[[list[dict]], None]:
    """A function that (re)writes a metrics CSV from all rows so far, atomically."""
    path = Path(path)

    def write(rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        names = list(fields or dict.fromkeys(k for row in rows for k in row))
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return write


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# The training logger (config `logger:`): curves to watch while a job runs. Cosmetic: never part of a result.
LOGGERS = ("none", "csv", "tensorboard")


def curve_logger(kind: str, folder: str | os.PathLike | None):
    """Lightning's logger for `kind` writing into `folder` (csv: folder/metrics.csv, rewritten as rows come), or
    None for `none`. Used by the progress callback directly, not given to the Trainer: Lightning would count
    epochs from 0 in it and do logging work every step."""
    if kind not in LOGGERS:
        raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind == "none" or folder is None:
        return None
    from importlib.util import find_spec

    from lightning.pytorch import loggers

    if kind == "csv":
        return loggers.CSVLogger(save_dir=str(folder), name="", version="", flush_logs_every_n_steps=1)
    if find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        raise RuntimeError("logger: tensorboard needs the `tensorboard` package, which this environment does not "
                           "have: install it (uv pip install tensorboard) or set logger: csv (or none)")
    return loggers.TensorBoardLogger(save_dir=str(folder), name="", version="")


def progress_callback(every: int, curves=None):
    """Plain log lines (no carriage returns) so that cluster log files show where training is: the epoch counted
    from 1 (as the table counts it), the batch, the share of the epoch done, the loss, the rate and the time left
    of the epoch and of the run (at most: early stopping may end it sooner). The loss is the module's
    `train_loss_so_far()` where it has one (the only host synchronisation, every `every` batches), else the last
    `train_loss` the module logged. `curves` (a `curve_logger`) also gets the loss of each progress line and, at
    each validation's end, what the module logged (val_loss ...), all with the epoch counted from 1."""
    pl = _lightning()

    def write_curves(trainer, metrics: dict[str, float]) -> None:
        if curves is not None and trainer.is_global_zero and not trainer.sanity_checking:
            curves.log_metrics({"epoch": trainer.current_epoch + 1, **metrics}, step=trainer.global_step)
            curves.save()

    class LogProgress(pl.Callback):
        epoch_seconds: float | None = None  # the last whole epoch's wall time, validation and checkpoint included

        def on_train_epoch_start(self, trainer, pl_module):
            now = time.time()
            if getattr(self, "epoch_started", None) is not None:
                self.epoch_seconds = now - self.epoch_started
            self.epoch_started = self.t0 = now

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            n, done = trainer.num_training_batches, batch_idx + 1
            if done % every and done != n:
                return
            elapsed = max(time.time() - self.t0, 1e-9)
            rate = done / elapsed
            if hasattr(pl_module, "train_loss_so_far"):
                loss = pl_module.train_loss_so_far()
            else:
                loss = trainer.callback_metrics.get("train_loss")
                loss = None if loss is None else float(loss)
            shown = f" loss {loss:.4f}" if loss is not None else ""
            if loss is not None:
                write_curves(trainer, {"train_loss": loss})
            if not math.isfinite(n):
                log.info("epoch %d batch %d%s (%.2f batches/s)", trainer.current_epoch + 1, done, shown, rate)
                return
            epoch_left = (n - done) / rate
            epochs_left = max(0, (trainer.max_epochs or 0) - trainer.current_epoch - 1) if trainer.max_epochs else 0
            run_left = epoch_left + epochs_left * (self.epoch_seconds or n / rate)
            log.info("epoch %d/%s batch %d/%d (%d%%)%s, %.2f batches/s, ETA epoch %s, run %s",
                     trainer.current_epoch + 1, trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?",
                     done, n, 100 * done // n, shown, rate, _duration(epoch_left), _duration(run_left))

        def on_validation_end(self, trainer, pl_module):
            write_curves(trainer, {k: float(v) for k, v in trainer.callback_metrics.items()
                                   if k != "train_loss" and getattr(v, "numel", lambda: 1)() == 1})

        def on_fit_end(self, trainer, pl_module):
            if curves is not None and trainer.is_global_zero:
                curves.finalize("success")

    return LogProgress()


# What Lightning prints that is noise in a job's log: adverts for its cloud products, a hint to start the job with
# srun (train_gpt starts its ranks itself, see gpt.train_gpt), its own use of an API that torch deprecated, and
# the warning that the state folder (which holds last.ckpt by design) is not empty. Matched from the start.
LIGHTNING_NOISE = (r"💡 Tip: ", r".*The `srun` command is available on your system but is not used",
                   r".*`isinstance\(treespec, LeafSpec\)` is deprecated", r".*exists and is not empty")
_NOISE = re.compile("|".join(f"(?:{p})" for p in LIGHTNING_NOISE))
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropLightningNoise(logging.Filter):
    """A logging filter: drops the messages of LIGHTNING_NOISE, lets everything else through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _NOISE.match(record.getMessage()) is None


@contextmanager
def quiet_lightning():
    """Within: Lightning's known noise filtered (its info messages through a logging filter on the loggers that
    Lightning's rank-zero messages use, its warnings by these messages only); every other message stays."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningNoise) for f in logger.filters):
            logger.addFilter(DropLightningNoise())
    with warnings.catch_warnings():
        for pattern in LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _ensure_log_handler() -> None:
    """Make INFO progress visible when the caller configured no logging (as Lightning does for itself)."""
    training = logging.getLogger("i2a.training")
    if not logging.getLogger().hasHandlers() and not training.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        training.addHandler(handler)
        training.setLevel(logging.INFO)


def fit(module, state: TrainingState, *, max_epochs: int, accelerator: str = "auto", devices: int = 1,
        strategy: str = "auto", precision: str = "32-true", callbacks: Sequence[Any] = (), plugins: Sequence[Any] = (),
        log_every: int = 50, logger: str = "none", curves_dir: str | os.PathLike | None = None,
        **trainer_kwargs) -> Any:
    """Train `module` to `max_epochs`, resuming from the state folder; `last.ckpt` is written after every epoch.

    The module keeps its own best result in `state.best` (see `save_best`); callers publish it when training is
    done. Returns the Trainer (None when the state folder says training already finished). `logger` (config
    `logger:`, cosmetic) writes curves into `curves_dir` as training goes.
    """
    pl = _lightning()
    _ensure_log_handler()
    resume = state.open()  # first: a state of other inputs or settings is set aside, its done.json with it
    if state.done is not None:
        log.warning("%s says training finished with these inputs, settings and training code: its result is handed "
                    "back without training. To train again from scratch, delete %s and rerun the job (a forced "
                    "rerun, snakemake -f or -R, alone hands back this state)", state.folder / DONE, state.folder)
        return None
    if resume is not None:
        meta = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
        log.info("resuming from %s (epoch %d done, step %d)", resume, meta["epoch"] + 1, meta["global_step"])
        del meta
    curves = curve_logger(logger, curves_dir)
    if curves is not None:
        log.info("curves (logger %s) in %s", logger, curves.log_dir)
    last = pl.callbacks.ModelCheckpoint(dirpath=state.folder, filename=Path(LAST).stem, save_top_k=1,
                                        enable_version_counter=False, every_n_epochs=1, save_on_train_epoch_end=True)
    t0 = time.time()
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=strategy, precision=precision, max_epochs=max_epochs,
            callbacks=[last, progress_callback(max(1, log_every), curves), *callbacks],
            plugins=[atomic_checkpoint_io(), *plugins], default_root_dir=state.folder, logger=False,
            enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False, num_sanity_val_steps=0,
            **trainer_kwargs)
        trainer.fit(module, ckpt_path=resume)
    log.info("training took %.1f s", time.time() - t0)
    return trainer


def save_best(module, state: TrainingState, artifact: dict[str, Any]) -> None:
    """Write the model's result so far (a compact, self-describing file, not a Lightning checkpoint) on rank 0."""
    if module.trainer is None or module.trainer.is_global_zero:
        save_torch(artifact, state.best)
