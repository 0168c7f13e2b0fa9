"""The comparison's pictures: AUC intervals per approach, reliability diagrams, ROC curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from ct25d.atomic import atomic_path
from ct25d.evaluation.scoring import Interval


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, max(n, 1))
    return math.ceil(max(n, 1) / cols), cols


def plot_intervals(long: pd.DataFrame, path: Path) -> None:
    """Forest plot: volume AUC of `any` with its 95% interval, per approach and set of studies."""
    approaches = list(dict.fromkeys(long["approach"]))
    sets = sorted(long["set"].unique(), key=lambda s: (not s.startswith("internal"), s))
    fig = Figure(figsize=(10, 0.45 * len(approaches) * len(sets) / 2 + 2))
    ax = fig.subplots()
    step = 0.8 / max(len(sets), 1)
    for k, name in enumerate(sets):
        for i, approach in enumerate(approaches):
            row = long[(long["approach"] == approach) & (long["set"] == name)]
            if row.empty or not isinstance(row["auc"].iloc[0], Interval):
                continue
            auc = row["auc"].iloc[0]
            y = i + k * step
            ax.errorbar(
                auc.value,
                y,
                xerr=[[auc.value - auc.low], [auc.high - auc.value]] if not math.isnan(auc.low) else None,
                fmt="o",
                color=f"C{k}",
                label=name if i == 0 else None,
            )
    ax.set_yticks([i + 0.4 - step / 2 for i in range(len(approaches))], approaches, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_xlabel("volume AUC of 'any' (95% bootstrap interval)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("2D vs 2.5D vs 3D: internal (pooled outer folds) and external sets")
    _save(fig, path)


def plot_reliability(predictions: dict[str, pd.DataFrame], path: Path, bins: int = 10) -> None:
    """Observed rate of `any` against the calibrated probability, internal (OOF) studies."""
    rows, cols = _grid(len(predictions))
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (approach, frame) in zip(axes, predictions.items(), strict=False):
        part = frame[frame["set"].str.startswith("internal") & frame["any"].notna()]
        p, y = part["p_any"].to_numpy(float), part["any"].to_numpy(float)
        which = np.minimum((p * bins).astype(int), bins - 1)
        centres = [(p[which == b].mean(), y[which == b].mean(), (which == b).sum()) for b in np.unique(which)]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        if centres:
            x, obs, n = zip(*centres, strict=True)
            ax.scatter(x, obs, s=[10 + 4 * k for k in n])
            ax.plot(x, obs)
        ax.set_title(approach, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in axes[len(predictions) :]:
        ax.axis("off")
    fig.supxlabel("calibrated probability of 'any' (temperature fitted on the inner split)")
    fig.supylabel("observed rate")
    _save(fig, path)


def plot_curves(predictions: dict[str, pd.DataFrame], path: Path, kind: str = "roc") -> None:
    """ROC (`kind="roc"`) or precision-recall (`"pr"`) curves of `any`: internal (OOF) against each
    external set, per approach."""
    rows, cols = _grid(len(predictions))
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (approach, frame) in zip(axes, predictions.items(), strict=False):
        for k, (name, part) in enumerate(frame[frame["any"].notna()].groupby("set")):
            y, p = part["any"].to_numpy(float), part["s_any"].to_numpy(float)
            if 0 < y.sum() < len(y):
                if kind == "roc":
                    x, yy, _ = roc_curve(y, p)
                else:
                    yy, x, _ = precision_recall_curve(y, p)
                ax.plot(x, yy, color=f"C{k}", label=name)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set_title(approach, fontsize=8)
        ax.legend(fontsize=6, loc="lower right" if kind == "roc" else "lower left")
    for ax in axes[len(predictions) :]:
        ax.axis("off")
    fig.supxlabel("false positive rate" if kind == "roc" else "recall")
    fig.supylabel("true positive rate" if kind == "roc" else "precision")
    _save(fig, path)


def plot_confusion(predictions: dict[str, pd.DataFrame], path: Path) -> None:
    """Confusion matrices of `any` on the internal (OOF) studies, at each fold's inner threshold."""
    rows, cols = _grid(len(predictions))
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (approach, frame) in zip(axes, predictions.items(), strict=False):
        part = frame[frame["set"].str.startswith("internal") & frame["any"].notna()]
        truth, call = part["any"].to_numpy(int), (part["s_any"] > part["t_any"]).to_numpy(int)
        matrix = np.array([[((truth == t) & (call == c)).sum() for c in (0, 1)] for t in (0, 1)])
        ax.imshow(matrix, cmap="Blues")
        for t in (0, 1):
            for c in (0, 1):
                ax.text(c, t, str(matrix[t, c]), ha="center", va="center")
        ax.set_xticks([0, 1], ["no bleed", "bleed"], fontsize=7)
        ax.set_yticks([0, 1], ["no bleed", "bleed"], fontsize=7)
        ax.set_title(approach, fontsize=7)
    for ax in axes[len(predictions) :]:
        ax.axis("off")
    fig.supxlabel("called")
    fig.supylabel("truth")
    _save(fig, path)


def plot_strips(slices: dict[str, pd.DataFrame], path: Path, studies: int = 4) -> None:
    """For a few outer-fold studies (bleeds first), each approach's slice probability of `any` along
    z, over the slices' truth (shaded): where along the head each model fires."""
    if not slices:
        return
    first = next(iter(slices.values()))
    truth = (
        first[first["any"].notna()].groupby(["dataset", "study_id"])["any"].max().sort_values(ascending=False)
    )
    chosen = list(truth.index[: max(studies - 1, 1)]) + list(truth.index[truth == 0][:1])
    fig = Figure(figsize=(11, 2.2 * len(chosen)))
    axes = np.atleast_1d(fig.subplots(len(chosen), 1, squeeze=False)).ravel()
    for ax, (dataset, study) in zip(axes, chosen, strict=False):
        reference = first[(first["dataset"] == dataset) & (first["study_id"] == study)].sort_values("z")
        ax.fill_between(
            reference["z"], 0, reference["any"].fillna(0), step="mid", color="0.85", label="truth"
        )
        for k, (approach, frame) in enumerate(slices.items()):
            part = frame[(frame["dataset"] == dataset) & (frame["study_id"] == study)].sort_values("z")
            ax.plot(part["z"], part["prob_any"], color=f"C{k % 10}", lw=1, label=approach)
        ax.set_ylim(0, 1)
        ax.set_ylabel("p(any)")
        ax.set_title(f"{dataset} {study}", fontsize=8)
    axes[0].legend(fontsize=6, ncol=3, loc="upper left")
    axes[-1].set_xlabel("slice (z)")
    _save(fig, path)
