"""The artifacts every trained model writes, whatever its family (Stage 2, 3D, ACS, 2.5CNN, thickened
2D): `predictions_studies.parquet`, `predictions_slices.parquet`, `metrics.parquet`, `metrics.json`.

Why one writer: the comparison and every later stage read these files without knowing which kind of
model made them. Metrics are computed from the prediction frames themselves, so what is scored is
exactly what is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ct25d.atomic import write_json, write_parquet
from ct25d.evaluation.tables import report_rows, summarise

SCORED_SPLITS = ("inner", "validation", "external")
COLUMNS = ["split", "dataset", "level", "method", "label", "n", "n_pos", "f1", "auc"]


def prediction_frame(
    keys: pd.DataFrame, prob: np.ndarray, truth: np.ndarray, labels: Sequence[str]
) -> pd.DataFrame:
    """`keys` plus `prob_<label>` and `<label>` (truth, NaN unknown) columns."""
    frame = keys.reset_index(drop=True).copy()
    for k, name in enumerate(labels):
        frame[f"prob_{name}"] = np.asarray(prob[:, k], dtype=np.float32)
        frame[name] = np.asarray(truth[:, k], dtype=np.float32)
    return frame


def empty_slices(labels: Sequence[str]) -> pd.DataFrame:
    """The slice table of a model that predicts whole volumes only (its slice F1 is absent, not 0)."""
    keys = pd.DataFrame(
        {
            "dataset": pd.Series(dtype=str),
            "study_id": pd.Series(dtype=str),
            "z": pd.Series(dtype=np.int64),
            "slice_id": pd.Series(dtype=str),
        }
    )
    return prediction_frame(keys, np.zeros((0, len(labels))), np.zeros((0, len(labels))), labels)


def metric_table(
    studies: pd.DataFrame, slices: pd.DataFrame, labels: Sequence[str], method: str, threshold: float = 0.5
) -> pd.DataFrame:
    """Slice- and volume-level F1/AUC per label for the validation and external studies.

    `studies` carries `split`; slices take the split of their study.
    """
    names = list(labels)
    probs, truths = [f"prob_{n}" for n in names], names
    slice_split = slices.merge(
        studies[["dataset", "study_id", "split"]], on=["dataset", "study_id"], how="left"
    )
    rows: list[dict[str, Any]] = []
    for split in SCORED_SPLITS:
        for dataset in sorted(studies.loc[studies["split"] == split, "dataset"].unique()):
            for level, frame in (("slice", slice_split), ("volume", studies)):
                part = frame[(frame["split"] == split) & (frame["dataset"] == dataset)]
                if part.empty:
                    continue
                p = part[probs].to_numpy(dtype=np.float64)
                truth = part[truths].to_numpy(dtype=np.float64)
                rows += report_rows(split, dataset, level, truth, {method: (p, p > threshold)}, names)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_outputs(
    out: Path,
    studies: pd.DataFrame,
    slices: pd.DataFrame,
    labels: Sequence[str],
    method: str,
    fold: int,
    meta: dict[str, Any],
    threshold: float = 0.5,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the four artifacts; returns the `metrics.json` summary (`extra` is merged into it)."""
    table = metric_table(studies, slices, labels, method, threshold)
    write_parquet(out / "predictions_studies.parquet", studies, meta)
    write_parquet(out / "predictions_slices.parquet", slices, meta)
    write_parquet(out / "metrics.parquet", table, meta)
    summary = {**meta, **summarise(table, fold), **(extra or {})}
    write_json(out / "metrics.json", summary)
    return summary
