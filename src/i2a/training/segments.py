"""Training in segments: a run longer than a job's time limit stops cleanly at an epoch's end before the limit,
with `last.ckpt` written, and the next job (Snakemake's retry of the rule) resumes from it.

Why at an epoch's end: `last.ckpt` is written there (i2a.training.loop), and a run resumed from it trains exactly as
an uninterrupted one, so the segments end with the same `best.ckpt` and `metrics.csv`. The job stops when the
next epoch, as long as the longest one so far with a margin, would not end before the deadline; it then raises
`SegmentDone`, whose exit status (`SEGMENT_EXIT`) tells the job script to exit non-zero so that Snakemake
submits the rule again (the rule's `retries:` allow one retry per segment; docs/cluster.md).
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

SEGMENT_EXIT = 75  # EX_TEMPFAIL: "try again"; the job log says it is a segment's end, not an error
# the next epoch must fit this many times its longest measured duration before the deadline
EPOCH_MARGIN = 1.5


class SegmentDone(Exception):
    """Training stopped before its last epoch to stay within the job's time limit; `last.ckpt` holds it."""

    def __init__(self, epochs_done: int, max_epochs: int):
        super().__init__(f"segment done: {epochs_done} of {max_epochs} epochs trained, last.ckpt kept; the job "
                         "stops before its time limit and the next one continues (resubmit / Snakemake retry)")
        self.epochs_done, self.max_epochs = epochs_done, max_epochs


def deadline_from_runtime(runtime_min: float | None, started: float, reserve_s: float = 300.0) -> float | None:
    """The time.time() by which training must have stopped in a job of `runtime_min` minutes (SLURM's limit)
    begun at `started`, keeping `reserve_s` for publishing the outputs; None without a limit."""
    if not runtime_min:
        return None
    limit = float(runtime_min) * 60
    return started + limit - min(reserve_s, 0.1 * limit)


def deadline_callback(deadline: float):
    """A Lightning callback that stops training at the end of the epoch after which another would not fit."""
    import lightning.pytorch as pl

    class StopBeforeDeadline(pl.Callback):
        def __init__(self):
            self.stopped = False
            self._epoch_start: float | None = None
            self.longest = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._epoch_start = time.time()

        def on_train_epoch_end(self, trainer, pl_module):
            # runs after validation and after last.ckpt was saved (the checkpoint callback comes first)
            now = time.time()
            self.longest = max(self.longest, now - (self._epoch_start or now))
            last_epoch = trainer.current_epoch + 1 >= trainer.max_epochs
            late = now + EPOCH_MARGIN * self.longest > deadline
            late = trainer.strategy.broadcast(late, 0)  # rank 0's clock decides for every DDP rank
            if not last_epoch and not trainer.should_stop and late:
                log.info("stopping after epoch %d of %d: another (%.0f s) would not end before the job's limit "
                         "(%.0f s left)", trainer.current_epoch + 1, trainer.max_epochs, self.longest, deadline - now)
                self.stopped = True
                trainer.should_stop = True

    return StopBeforeDeadline()
