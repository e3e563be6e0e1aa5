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
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from i2a.atomic import atomic_path, copy_file, save_torch, write_text
from i2a.checksum import content_digest

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
LAST = "last.ckpt"
BEST = "best.ckpt"
DONE = "done.json"


# ------------------------------------------------------------------------------------------------ fingerprints
# the modules every training runs through (this loop, the arithmetic); each trainer names its own besides
LOOP_CODE = (__name__, "i2a.precision")


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
    code = [name for name in sorted(set(old.get("code", {})) | set(new["code"]))
            if old.get("code", {}).get(name) != new["code"].get(name)]
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


def progress_callback(every: int):
    """Plain log lines (no carriage returns) so that cluster log files show where training is."""
    pl = _lightning()

    class LogProgress(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            n = trainer.num_training_batches
            if (batch_idx + 1) % every == 0 or batch_idx + 1 == n:
                rate = (batch_idx + 1) / max(time.time() - self.t0, 1e-9)
                loss = trainer.callback_metrics.get("train_loss")
                shown = f" loss {float(loss):.4f}" if loss is not None else ""
                log.info("epoch %d/%d batch %d/%s%s (%.2f batches/s)", trainer.current_epoch + 1, trainer.max_epochs,
                         batch_idx + 1, n if math.isfinite(n) else "?", shown, rate)

    return LogProgress()


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
        log_every: int = 50, **trainer_kwargs) -> Any:
    """Train `module` to `max_epochs`, resuming from the state folder; `last.ckpt` is written after every epoch.

    The module keeps its own best result in `state.best` (see `save_best`); callers publish it when training is
    done. Returns the Trainer (None when the state folder says training already finished).
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
        log.info("resuming from %s (epoch %d, step %d)", resume, meta["epoch"], meta["global_step"])
        del meta
    last = pl.callbacks.ModelCheckpoint(dirpath=state.folder, filename=Path(LAST).stem, save_top_k=1,
                                        enable_version_counter=False, every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, precision=precision, max_epochs=max_epochs,
        callbacks=[last, progress_callback(max(1, log_every)), *callbacks], plugins=[atomic_checkpoint_io(), *plugins],
        default_root_dir=state.folder, logger=False, enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kwargs)
    t0 = time.time()
    with warnings.catch_warnings():  # the state folder holds last.ckpt by design
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        trainer.fit(module, ckpt_path=resume)
    log.info("training took %.1f s", time.time() - t0)
    return trainer


def save_best(module, state: TrainingState, artifact: dict[str, Any]) -> None:
    """Write the model's result so far (a compact, self-describing file, not a Lightning checkpoint) on rank 0."""
    if module.trainer is None or module.trainer.is_global_zero:
        save_torch(artifact, state.best)
