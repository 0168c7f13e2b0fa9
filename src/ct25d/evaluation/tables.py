"""The long metric table every evaluation writes, and its JSON summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ct25d.evaluation.metrics import binary_report


def report_rows(
    split: str, dataset: str, level: str, truth: np.ndarray, scores: dict[str, tuple[np.ndarray, np.ndarray]],
    names: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """Long-table rows (split, dataset, level, method, label, n, n_pos, f1, auc) per method and label."""
    out = []
    for method, (score, pred) in scores.items():
        for k, name in enumerate(names):
            stats = binary_report(truth[:, k], pred[:, k], score[:, k])
            if stats["n"]:
                out.append({"split": split, "dataset": dataset, "level": level, "method": method,
                            "label": name, **stats})  # fmt: skip
    return out


def summarise(table: pd.DataFrame, fold: int) -> dict[str, Any]:
    """JSON summary per split, dataset, level, method: F1/AUC of `any`, their macro means over
    labels, and every label's F1, AUC and counts (NaN becomes null)."""
    out: dict[str, Any] = {"fold": fold, "results": {}}
    for (split, dataset, level, method), group in table.groupby(["split", "dataset", "level", "method"]):
        row = group[group["label"] == "any"]
        key = f"{split}/{dataset}/{level}/{method}"
        out["results"][key] = {
            "f1_any": float(row["f1"].iloc[0]) if len(row) else None,
            "auc_any": float(row["auc"].iloc[0]) if len(row) else None,
            "f1_macro": float(group["f1"].mean()),
            "auc_macro": float(group["auc"].mean()),
            "n": int(group["n"].max()),
            "per_label": {
                r.label: {"f1": _number(r.f1), "auc": _number(r.auc), "n": int(r.n), "n_pos": int(r.n_pos)}
                for r in group.itertuples()
            },
        }
    return out


def _number(value: float) -> float | None:
    return None if pd.isna(value) else float(value)
