"""What the table says about a training curve (metrics.csv: epoch, train_loss, val_loss, lr per epoch): the best
epoch and whether the run overfit. Torch-free: the table job reads it."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np


def curve_summary(metrics_csv: str | Path, overfit_margin: float = 0.01, overfit_patience: int = 2) -> dict[str, Any]:
    """The epoch of the best validation loss (`best_epoch`, counted from 0 as metrics.csv and Lightning count; the
    table shows it counted from 1) and that loss; `overfit` when the validation loss rose more than
    `overfit_margin` (a fraction of the best loss) above its best and stayed there for `overfit_patience`
    consecutive epochs, not whenever the best epoch is not the last one."""
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs")
    val = [float(r["val_loss"]) for r in rows]
    best = int(np.argmin(val))
    limit, above, longest = val[best] + overfit_margin * abs(val[best]), 0, 0
    for v in val[best + 1:]:
        above = above + 1 if v > limit else 0
        longest = max(longest, above)
    return {"best_epoch": int(rows[best]["epoch"]), "best_val_loss": val[best],
            "overfit": longest >= overfit_patience, "epochs_run": len(rows)}
