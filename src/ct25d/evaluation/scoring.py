"""What is chosen on the inner split (temperature, threshold) and how scores get their intervals.

Choices are functions of inner-split predictions only; `comparison` applies them unchanged to the
outer fold and the external sets. Intervals are percentile bootstraps over studies: every
replicate resamples studies with replacement (seeded), and a paired bootstrap resamples the same
studies for a model and the reference, so their difference carries its own interval.

AUC is computed from ranks (the Mann-Whitney statistic, ties averaged): identical to scikit-learn's
`roc_auc_score`, but vectorised over all bootstrap replicates at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(logit(p) / T) (1.0 without both classes)."""
    z, y = logit(p), np.asarray(y, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        q = np.clip(1 / (1 + np.exp(-z / math.exp(log_t))), _EPS, 1 - _EPS)
        return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())

    return float(math.exp(minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x))


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    return 1 / (1 + np.exp(-logit(p) / temperature))


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising F1 (midpoint between neighbouring scores; 0.5 without positives)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.sum() == 0 or len(y) == 0:
        return 0.5
    values = np.unique(p)
    candidates = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]])
    pred = p[None, :] > candidates[:, None]
    tp = (pred & (y == 1)).sum(1)
    f1 = 2 * tp / np.maximum(pred.sum(1) + y.sum(), 1)
    return float(candidates[int(np.argmax(f1))])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-width bins, weighted by bin size."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if not len(y):
        return math.nan
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        members = which == b
        total += members.sum() * abs(y[members].mean() - p[members].mean())
    return total / len(y)


def auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of `(R, n)` label and score matrices (NaN where a row lacks a class)."""
    y, p = np.atleast_2d(y).astype(np.float64), np.atleast_2d(p).astype(np.float64)
    ranks = rankdata(p, axis=1)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def f1_rows(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of each row (NaN where a row has no positive: F1 is undefined, not 0)."""
    y, pred = np.atleast_2d(y).astype(bool), np.atleast_2d(pred).astype(bool)
    tp, n_pos = (y & pred).sum(1), y.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (pred.sum(1) + n_pos)
    return np.where(n_pos > 0, f1, np.nan)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def text(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _percentiles(value: float, replicates: np.ndarray) -> Interval:
    finite = replicates[np.isfinite(replicates)]
    if math.isnan(value) or len(finite) < 0.5 * len(replicates):
        return Interval(value, math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(value), float(low), float(high))


def resample(n: int, replicates: int, seed: int) -> np.ndarray:
    """`(replicates, n)` study indices drawn with replacement: one stream per seed."""
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def bootstrap_auc(y: np.ndarray, p: np.ndarray, index: np.ndarray) -> Interval:
    return _percentiles(float(auc_rows(y, p)[0]), auc_rows(y[index], p[index]))


def bootstrap_f1(y: np.ndarray, pred: np.ndarray, index: np.ndarray) -> Interval:
    return _percentiles(float(f1_rows(y, pred)[0]), f1_rows(y[index], pred[index]))


def paired_auc_difference(y: np.ndarray, p: np.ndarray, reference: np.ndarray, index: np.ndarray) -> Interval:
    """AUC(p) - AUC(reference) on the same studies, with the paired bootstrap interval."""
    value = float(auc_rows(y, p)[0] - auc_rows(y, reference)[0])
    return _percentiles(value, auc_rows(y[index], p[index]) - auc_rows(y[index], reference[index]))


def paired_f1_difference(
    y: np.ndarray, pred: np.ndarray, reference: np.ndarray, index: np.ndarray
) -> Interval:
    """F1(pred) - F1(reference calls) on the same studies, with the paired bootstrap interval."""
    value = float(f1_rows(y, pred)[0] - f1_rows(y, reference)[0])
    return _percentiles(value, f1_rows(y[index], pred[index]) - f1_rows(y[index], reference[index]))


def point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """AP, sensitivity, specificity and ECE at one threshold (NaN where undefined)."""
    y = np.asarray(y, dtype=np.float64)
    pred = p > threshold
    n_pos, n_neg = y.sum(), (1 - y).sum()
    return {
        "ap": float(average_precision_score(y, p)) if n_pos else math.nan,
        "sensitivity": float((pred & (y == 1)).sum() / n_pos) if n_pos else math.nan,
        "specificity": float((~pred & (y == 0)).sum() / n_neg) if n_neg else math.nan,
        "ece": expected_calibration_error(y, p),
    }
