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


def write_history(out: Path, history: list[dict[str, float]], monitor: str, title: str) -> None:
    """`metrics.csv` (one row per epoch) and `learning_curve.png` in `out`."""
    write_csv(out / "metrics.csv", pd.DataFrame(history))
    plot_history(out / "learning_curve.png", history, monitor, title)


def plot_history(path: Path, history: list[dict[str, float]], monitor: str, title: str) -> None:
    """Train/validation loss per epoch, with the mean validation AUC on a second axis."""
    from matplotlib.figure import Figure

    frame = pd.DataFrame(history)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(frame["epoch"], frame["train_loss"], "o-", label="train loss")
    ax.plot(frame["epoch"], frame["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if "val_auc_mean" in frame:
        twin = ax.twinx()
        twin.plot(frame["epoch"], frame["val_auc_mean"], "s--", color="tab:green", label="val AUC (mean)")
        twin.set_ylabel("AUC")
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(f"{title} learning curve (best by {monitor})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
