"""The report's figures as SVG: training curves and scores. Written without a timestamp, so an unchanged figure
is byte-identical and reruns are exact."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from i2a.infra.atomic import atomic_path

LINE_STYLES = ["-", "--", ":", "-."]
SVG_STYLE = {"svg.hashsalt": "i2a-report", "svg.fonttype": "path"}  # same figure, same bytes: reruns are exact


# ---------------------------------------------------------------- figures
def read_training_curves(path: str | Path) -> pd.DataFrame:
    """A run's per-epoch metrics.csv (epoch, train_loss, val_loss, lr), sorted by epoch."""
    curves = pd.read_csv(path)
    missing = {"epoch", "train_loss", "val_loss", "lr"} - set(curves.columns)
    if missing:
        raise ValueError(f"{path}: no column(s) {sorted(missing)}")
    if curves.empty:
        raise ValueError(f"{path} has no epochs")
    return curves.sort_values("epoch").reset_index(drop=True)


def save_svg(fig: Figure, path: str | Path) -> Path:
    """Write a figure as SVG without a timestamp, so an unchanged figure is byte-identical."""
    with atomic_path(path) as tmp, matplotlib.rc_context(SVG_STYLE):
        fig.savefig(tmp, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return Path(path)


def loss_figure(run: str, curves: pd.DataFrame) -> Figure:
    """Training and validation loss of one run per epoch (counted from 1, as the table counts them), the best
    validation epoch marked."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    epoch = curves["epoch"] + 1
    ax.plot(epoch, curves["train_loss"], label="train loss", color="tab:blue", alpha=0.7)
    ax.plot(epoch, curves["val_loss"], label="validation loss", color="tab:orange", marker=".")
    best = curves.loc[curves["val_loss"].idxmin()]
    ax.axvline(best["epoch"] + 1, color="grey", linestyle="--", linewidth=1)
    ax.plot([best["epoch"] + 1], [best["val_loss"]], "o", color="tab:red",
            label=f"best: epoch {int(best['epoch']) + 1}, {best['val_loss']:.3f}")
    ax.set(title=run, xlabel="epoch", ylabel="cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def overview_figure(curves: dict[str, pd.DataFrame], column: str, ylabel: str, log_y: bool = False) -> Figure:
    """One column of every run's metrics against epoch, one line per run, to compare runs."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"]
    for k, (run, frame) in enumerate(curves.items()):
        # colour and dash pattern both vary, so that runs with the same curve (a constant LR) stay visible
        ax.plot(frame["epoch"] + 1, frame[column], label=run, color=colors(k % 10), linestyle=LINE_STYLES[k % 4])
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize="small", ncol=1 + len(curves) // 12, loc="outside right upper")
    return fig


def lr_find_figure(result: dict) -> Figure:
    """The LR finder's range test (runs/<run>/lr_find.json): smoothed training loss against LR (log scale), the
    suggested LR marked, and the run's configured LR for comparison (for one device's batch x accumulation)."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    lrs, losses = np.asarray(result["lr"], dtype=float), np.asarray(result["loss"], dtype=float)
    ax.plot(lrs, losses, color="tab:blue", label="loss (smoothed)")
    suggested = result.get("suggested_lr")
    if suggested is not None:
        ax.axvline(suggested, color="tab:red", linestyle="--", linewidth=1)
        near = losses[int(np.argmin(np.abs(np.log(lrs) - np.log(suggested))))] if len(lrs) else np.nan
        ax.plot([suggested], [near], "o", color="tab:red", label=f"suggested LR {suggested:.2g}")
    configured = result.get("configured_base_lr")
    if isinstance(configured, (int, float)):
        lr = configured * result["batch"] * result["accumulate"]
        ax.axvline(lr, color="grey", linestyle=":", linewidth=1, label=f"configured LR {lr:.2g} (one device)")
    ax.set_xscale("log")
    ax.set(title=result.get("run", ""), xlabel="learning rate", ylabel="cross-entropy")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def scores_figure(table: pd.DataFrame) -> Figure:
    """MKL and FID of every row with their 95% bootstrap intervals (and the spread over sampling seeds); below,
    where there is a baseline, each row's paired difference to it (dKL, dFID) with its interval and the 0 line."""
    rows = list(table["run"])
    y = np.arange(len(rows))[::-1]
    paired = "dKL" in table and table["dKL"].notna().any()
    fig = Figure(figsize=(10, 2 + (0.7 if paired else 0.35) * len(rows)), layout="constrained")
    axes = fig.subplots(2 if paired else 1, 2, sharey=True, squeeze=False)
    panels = [("KL", "MKL (lower is better)"), ("FID", "FID (lower is better)")]
    if paired:
        panels += [("dKL", "dKL: row minus baseline (paired)"), ("dFID", "dFID: row minus baseline (paired)")]
    for ax, (metric, title) in zip(axes.ravel(), panels):
        value = table[metric].to_numpy(float)
        error = np.abs(np.stack([value - table[f"{metric}_low"].to_numpy(float),
                                 table[f"{metric}_high"].to_numpy(float) - value]))
        ax.errorbar(value, y, xerr=np.nan_to_num(error), fmt="o", color="tab:blue", capsize=3,
                    label="95% interval (videos)")
        seed_sd = f"{metric}_seed_sd"
        if seed_sd in table and table[seed_sd].notna().any():
            ax.errorbar(value, y, xerr=table[seed_sd].fillna(0).to_numpy(float), fmt="none", color="tab:orange",
                        linewidth=3, label="± sd over seeds")
        if metric.startswith("d"):
            ax.axvline(0, color="grey", linewidth=1)
        ax.set(title=title)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_yticks(y, rows)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize="small", ncol=2, loc="outside lower center")
    return fig


def codebook_figure(metrics: pd.DataFrame, summary: dict) -> Figure:
    """A trained codebook per epoch: validation reconstruction L1, codes used and perplexity (collapse shows as
    codes used falling), the kept epoch marked."""
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    epoch = metrics["epoch"] + 1
    axes[0].plot(epoch, metrics["val_rec_loss"], marker=".")
    axes[0].set(title="validation L1", xlabel="epoch")
    for column, label in (("train_codes_used", "train"), ("val_codes_used", "validation")):
        if column in metrics:
            axes[1].plot(epoch, metrics[column], marker=".", label=label)
    axes[1].axhline(summary["codes"], color="grey", linewidth=1, linestyle="--")
    axes[1].set(title=f"codes used (of {summary['codes']})", xlabel="epoch")
    axes[1].legend(fontsize="small")
    axes[2].plot(epoch, metrics["val_perplexity"], marker=".")
    axes[2].set(title="validation perplexity", xlabel="epoch")
    for ax in axes:
        ax.axvline(summary["epoch"], color="tab:red", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    return fig