"""Per-epoch history shared by every trainer: model selection, metrics CSV and learning curve."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ct25d.atomic import atomic_path, write_csv


def improved(value: float, best: float | None, monitor: str) -> bool:
    """Whether `value` of `monitor` beats `best` (losses go down, everything else up; NaN never wins)."""
    if best is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if monitor.endswith("loss") else value > best


def patience_spent(history: list[dict[str, float]], monitor: str, patience: int | None) -> bool:
    """Whether the last `patience` epochs all failed to beat the best epoch before them."""
    if not patience or len(history) <= patience:
        return False
    best = None
    for row in history[:-patience]:
        if improved(row[monitor], best, monitor):
            best = row[monitor]
    return not any(improved(row[monitor], best, monitor) for row in history[-patience:])


def write_history(out: Path, history: list[dict[str, float]], monitor: str, title: str) -> None:
    """`metrics.csv` (one row per epoch) and `learning_curve.png` in `out`."""
    write_csv(out / "metrics.csv", pd.DataFrame(history))
    plot_history(out / "learning_curve.png", history, monitor, title)


def plot_history(path: Path, history: list[dict[str, float]], monitor: str, title: str) -> None:
    """Train/validation loss per epoch, with the AUCs on a second axis: the validation mean, and
    `any` on the training and validation studies where recorded (an arm that memorised nothing shows
    a training AUC near 0.5). Epoch -1, the evaluation before training, is a point without a train
    loss."""
    from matplotlib.figure import Figure

    frame = pd.DataFrame(history)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    ax.plot(frame["epoch"], frame["train_loss"], "o-", label="train loss")
    ax.plot(frame["epoch"], frame["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    curves = [("val_auc_mean", "s--", "tab:green", "val AUC (mean)"),
              ("val_auc_any", "^--", "tab:olive", "val AUC (any)"),
              ("train_auc_any", "v:", "tab:purple", "train AUC (any)")]  # fmt: skip
    shown = [c for c in curves if c[0] in frame and frame[c[0]].notna().any()]
    if shown:
        twin = ax.twinx()
        for column, style, color, label in shown:
            twin.plot(frame["epoch"], frame[column], style, color=color, label=label)
        twin.axhline(0.5, color="grey", lw=0.6)
        twin.set_ylabel("AUC")
        twin.legend(loc="upper right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{title} learning curve (best by {monitor})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
