"""Learning curves: the workflow once per training fraction, every comparison gathered into one table
and one plot (`comparison/data_size.png`).

Each fraction is a complete run with `splits.train_fraction` set. The folds, and so every scored
study (pooled outer folds and external sets), are the same at every fraction; only the patients
allowed to train and select grow (nested). A point therefore moves with the training data alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ct25d.atomic import atomic_path, write_csv, write_json
from ct25d.datasets.splits import study_splits
from ct25d.errors import Ct25dError
from ct25d.evaluation.scoring import Interval
from ct25d.provenance import stamp

INTERNAL_PREFIX = "internal"


def training_sizes(folds: pd.DataFrame) -> dict[str, Any]:
    """Studies and patients that train or select (train + inner split) in each outer fold."""
    outer = sorted(int(f) for f in folds.loc[folds["role"] == "train", "fold"].unique())
    per_fold = []
    for fold in outer:
        used = folds[study_splits(folds, fold).isin(["train", "inner"])]
        per_fold.append({"fold": fold, "studies": len(used), "patients": int(used["patient_id"].nunique())})
    return {
        "per_fold": per_fold,
        "studies_mean": float(np.mean([p["studies"] for p in per_fold])) if per_fold else math.nan,
        "scored_internal": int((folds["role"] == "train").sum()),
    }


def gather(points: list[tuple[float, Path]], approaches: list[str] | None = None) -> pd.DataFrame:
    """One row per (fraction, approach, set): training studies per fold and the AUC of `any` with its
    interval, read from each fraction's saved `comparison.json` and `sizes.json`."""
    rows = []
    for fraction, folder in sorted(points):
        comparison, sizes = folder / "comparison" / "comparison.json", folder / "sizes.json"
        for path in (comparison, sizes):
            if not path.is_file():
                raise Ct25dError(f"sweep: {path} is missing; run the fraction {fraction:g} again")
        records = json.loads(comparison.read_text()).get("intervals")
        if records is None:
            raise Ct25dError(f"sweep: {comparison} has no 'intervals' (older ct25d); rerun compare")
        size = json.loads(sizes.read_text())
        for r in records:
            if r["metric"] != "auc" or (approaches and r["approach"] not in approaches):
                continue
            rows.append({"fraction": fraction, "train_studies": size["studies_mean"],
                         "approach": r["approach"], "set": r["set"], "auc": r["value"], "low": r["low"],
                         "high": r["high"], "note": r["note"]})  # fmt: skip
    columns = ["fraction", "train_studies", "approach", "set", "auc", "low", "high", "note"]
    return pd.DataFrame(rows, columns=columns).astype({"auc": float, "low": float, "high": float})


def plot_data_size(table: pd.DataFrame, path: Path) -> None:
    """AUC of `any` with its 95% interval against training studies per fold, one panel per set."""
    sets = sorted(table["set"].unique(), key=lambda s: (not s.startswith(INTERNAL_PREFIX), s))
    fig = Figure(figsize=(4.2 * max(len(sets), 1), 4.2))
    axes = np.atleast_1d(fig.subplots(1, max(len(sets), 1), squeeze=False)).ravel()
    approaches = list(dict.fromkeys(table["approach"]))
    for ax, name in zip(axes, sets, strict=False):
        for k, approach in enumerate(approaches):
            part = table[(table["set"] == name) & (table["approach"] == approach)].dropna(subset=["auc"])
            part = part.sort_values("train_studies")
            if part.empty:
                continue
            # Approaches side by side at each size, so that overlapping intervals stay readable.
            x = part["train_studies"].to_numpy() * 1.03 ** (k - (len(approaches) - 1) / 2)
            y = part["auc"].to_numpy()
            err = np.vstack([y - part["low"].to_numpy(), part["high"].to_numpy() - y])
            ax.errorbar(x, y, yerr=err, fmt="o-", ms=4, capsize=2, color=f"C{k}", label=approach)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0.3, 1.0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training studies per fold (train + inner split)")
    axes[0].set_ylabel("volume AUC of 'any' (95% interval)")
    # One legend under the panels: inside a panel it hides the points it names.
    # Gathered over every panel: a set where an approach has no AUC (a single class) still names it.
    named = {}
    for ax in axes:
        named.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    if named:
        fig.legend(list(named.values()), list(named), loc="lower center", ncol=min(len(named), 3), fontsize=8)
    fig.suptitle("Where does 3D catch up? The same scored studies at every training size")
    fig.tight_layout(rect=(0, 0.05 + 0.04 * (max(len(named) - 1, 0) // 3), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def write_data_size(
    points: list[tuple[float, Path]], out_dir: Path, approaches: list[str] | None = None
) -> pd.DataFrame:
    """data_size.csv / .md / .png / .json in `out_dir` from the saved fractions."""
    table = gather(points, approaches)
    if table.empty:
        raise Ct25dError(f"sweep: no AUC rows for approaches {approaches} in {[str(p) for _, p in points]}")
    write_csv(out_dir / "data_size.csv", table)
    text = table.assign(
        auc=[
            Interval(a, lo, hi, note).text()
            for a, lo, hi, note in zip(table["auc"], table["low"], table["high"], table["note"], strict=True)
        ]
    ).drop(columns=["low", "high", "note"])
    wide = text.pivot_table(index=["approach", "set"], columns="train_studies", values="auc", aggfunc="first")
    wide.columns = [f"{c:.0f} studies" for c in wide.columns]
    with atomic_path(out_dir / "data_size.md") as tmp:
        tmp.write_text(
            "Volume AUC of `any` (95% interval, bootstrap over patients) against the training studies per "
            "fold (train + inner split, mean over folds); the same scored studies at every size.\n\n"
            + wide.reset_index().to_markdown(index=False)
            + "\n"
        )
    write_json(out_dir / "data_size.json", {**stamp("sweep", {"approaches": approaches}),
                                            "fractions": [f for f, _ in sorted(points)]})  # fmt: skip
    plot_data_size(table, out_dir / "data_size.png")
    return table
