"""The report's figures as SVG: training curves and scores. Written without a timestamp, so an unchanged figure
is byte-identical and reruns are exact."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from i2a.atomic import atomic_path

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
    """Training and validation loss of one run per epoch, the best validation epoch marked."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(curves["epoch"], curves["train_loss"], label="train loss", color="tab:blue", alpha=0.7)
    ax.plot(curves["epoch"], curves["val_loss"], label="validation loss", color="tab:orange", marker=".")
    best = curves.loc[curves["val_loss"].idxmin()]
    ax.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1)
    ax.plot([best["epoch"]], [best["val_loss"]], "o", color="tab:red",
            label=f"best: epoch {int(best['epoch'])}, {best['val_loss']:.3f}")
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
        ax.plot(frame["epoch"], frame[column], label=run, color=colors(k % 10), linestyle=LINE_STYLES[k % 4])
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize="small", ncol=1 + len(curves) // 12, loc="outside right upper")
    return fig


def scores_figure(table: pd.DataFrame) -> Figure:
    """MKL and FID of every run with their 95% bootstrap intervals (and the spread over sampling seeds)."""
    runs = list(table["run"])
    y = np.arange(len(runs))[::-1]
    fig = Figure(figsize=(9, 1.5 + 0.35 * len(runs)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric, title in zip(axes, ("KL", "FID"), ("MKL (lower is better)", "FID (lower is better)")):
        value = table[metric].to_numpy(float)
        error = np.stack([value - table[f"{metric}_low"].to_numpy(float),
                          table[f"{metric}_high"].to_numpy(float) - value])
        ax.errorbar(value, y, xerr=error, fmt="o", color="tab:blue", capsize=3, label="95% interval (videos)")
        seed_sd = f"{metric}_seed_sd"
        if seed_sd in table and table[seed_sd].notna().any():
            ax.errorbar(value, y, xerr=table[seed_sd].fillna(0).to_numpy(float), fmt="none", color="tab:orange",
                        linewidth=3, label="± sd over seeds")
        ax.set(title=title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, runs)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize="small", ncol=2, loc="outside lower center")
    return fig
