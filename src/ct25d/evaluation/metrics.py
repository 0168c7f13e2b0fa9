"""Metric primitives shared by training-time validation and the stage reports.

Dependency-free apart from numpy/pandas/scikit-learn, so training code may use them too. Unknown
labels are NaN and are skipped, label by label.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score


def auc_or_nan(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC over rows with a known label; NaN unless both classes are present."""
    y_true, score = np.asarray(y_true, dtype=np.float64), np.asarray(score, dtype=np.float64)
    known = ~np.isnan(y_true)
    y = y_true[known]
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, score[known]))


def f1_or_nan(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Binary F1 over rows with a known label (0 when nothing is predicted or present, NaN if none known)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(y_true)
    if not known.any():
        return math.nan
    return float(f1_score(y_true[known].astype(int), np.asarray(pred)[known].astype(int), zero_division=0))


def binary_report(y_true: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """n, n_pos, F1 of `pred` and AUC of `score` for one label.

    A method that cannot score a label (NaN scores, e.g. a cosine rule whose training fold had no
    positive slice of it) gets NaN, not the F1 of predicting nothing.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(y_true)
    scorable = bool(np.isfinite(np.asarray(score, dtype=np.float64)[known]).all())
    return {
        "n": int(known.sum()),
        "n_pos": int(np.nansum(y_true)),
        "f1": f1_or_nan(y_true, pred) if scorable else math.nan,
        "auc": auc_or_nan(y_true, score) if scorable else math.nan,
    }


def volume_max(study_ids: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Study-level values as the max over each study's slices (the seed's volume rule).

    Returns one row per study (sorted by id), one column per input column; NaN only if all
    of a study's slices are NaN.
    """
    frame = pd.DataFrame(np.asarray(values, dtype=np.float64))
    frame.insert(0, "study_id", np.asarray(study_ids))
    return frame.groupby("study_id", sort=True).max()


class ClassMeans:
    """Running per-label means of positive and of negative embeddings (float64 sums, streamed)."""

    def __init__(self, n_labels: int, dim: int) -> None:
        self.sums = np.zeros((2, n_labels, dim), dtype=np.float64)  # [negative, positive]
        self.counts = np.zeros((2, n_labels), dtype=np.int64)

    def add(self, embeddings: np.ndarray, targets: np.ndarray) -> None:
        """Accumulate a chunk: embeddings (N, D), targets (N, C) in {0, 1, NaN}."""
        emb = np.asarray(embeddings, dtype=np.float64)
        for k, value in enumerate((0.0, 1.0)):
            hit = (np.asarray(targets) == value).astype(np.float64)  # NaN compares False
            self.sums[k] += hit.T @ emb
            self.counts[k] += hit.sum(axis=0).astype(np.int64)

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(positive (C, D), negative (C, D)); a label with no positive or negative rows is NaN."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sums / self.counts[..., None]
        return mean[1], mean[0]


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_margin(embeddings: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """cos(e, positive mean) - cos(e, negative mean) per row and label, (N, C).

    The seed's rule: a slice is positive for a label when it is closer in cosine to that label's
    positive training mean than to its negative one, i.e. when the margin is > 0. The margin is
    also the score for AUCs.
    """
    e = _unit(np.asarray(embeddings, dtype=np.float64))
    return e @ _unit(positive).T - e @ _unit(negative).T
