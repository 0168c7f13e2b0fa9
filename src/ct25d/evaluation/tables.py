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
    """JSON summary: F1/AUC of `any` (or the macro mean over classes) per split, dataset, level, method."""
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
        }
    return out
