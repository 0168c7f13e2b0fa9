"""What is chosen on the inner split (temperature, threshold) and how scores get their intervals.

Choices are functions of inner-split predictions only; `comparison` applies them unchanged to the
outer fold and the external sets. Scores are float64 logits: a temperature divides them (it never
reorders or ties them), and every rank-based number (AUC, AP, their differences) reads them,
never a probability that float rounding may have clipped to 1. Intervals are percentile
bootstraps over patients (`bootstrap_weights`): each replicate is a vector of study
multiplicities, and a paired bootstrap uses the same vector for a model and the reference, so
their difference carries its own interval, and the one-sided p-values of the claims (`Paired`,
adjusted by `holm`) read the same replicates.

AUC is the Mann-Whitney statistic (ties averaged), identical to scikit-learn's `roc_auc_score`,
computed for all replicates at once from one sort of the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

# Float32 probabilities reach 1 - 6e-8 before they round to 1.0: clipping far below that keeps
# every stored probability's rank when it goes back to a logit.
_EPS = 1e-12
# A temperature outside [0.1, 10] is not calibration but a symptom: a split that is (nearly)
# separable drives T to 0, one with no signal drives it to infinity; both are flagged.
T_BOUNDS = (0.1, 10.0)


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, monotone in p: no two stored probabilities become one score."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def expit(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature and why it is 1 or suspicious ("" when neither)."""

    value: float
    flag: str = ""


def fit_temperature(y: np.ndarray, z: np.ndarray, min_positives: int = 5) -> Temperature:
    """The temperature T in `T_BOUNDS` minimising the log loss of sigmoid(z / T) on logits `z`.

    T = 1 (flagged) when the split has fewer than `min_positives` of either class or separates
    the classes perfectly: there T would run to 0 and every score above the gap would become
    the same probability; a fit that stops at a bound is flagged too.
    """
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_pos = int(y.sum())
    if min(n_pos, len(y) - n_pos) < min_positives:
        return Temperature(1.0, f"T=1: {n_pos} positives, {len(y) - n_pos} negatives")
    if z[y == 1].min() > z[y == 0].max():
        return Temperature(1.0, "T=1: separable")

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)  # log(1 + e^-x) for positives, log(1 + e^x) for negatives
        return float((y * np.logaddexp(0, -scaled) + (1 - y) * np.logaddexp(0, scaled)).mean())

    low, high = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    log_t = float(minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x)
    at_bound = min(log_t - low, high - log_t) < 1e-3
    return Temperature(math.exp(log_t), f"T at bound {math.exp(log_t):.2g}" if at_bound else "")


def best_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising F1 of `score > threshold` (midpoint between neighbouring scores, the
    lowest among equals; 0.5 without positives).

    Sorted once with cumulative counts, O(n log n) in time and O(n) in memory: at RSNA scale an
    inner split holds ~120k slices (a candidates x scores matrix would need ~29 GB).
    """
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if len(y) == 0 or y.sum() == 0:
        return 0.5
    order = np.argsort(-score, kind="stable")
    ranked, hits = score[order], y[order]
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the last of each run of equal scores
    values = ranked[last]  # distinct scores, descending
    tp = np.cumsum(hits)[last]
    called = (np.arange(1, len(ranked) + 1))[last]  # calls when the threshold is just below the value
    f1 = 2 * tp / (called + y.sum())
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the lowest threshold among equal F1s
    below = values[best + 1] if best + 1 < len(values) else values[best] - 2e-9
    return float((values[best] + below) / 2)


def threshold_at_specificity(y: np.ndarray, score: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose calls `score > threshold` keep at least `specificity` of the
    negatives uncalled (the most sensitive such rule): the midpoint between the negative score it must
    reach and the next score above it (NaN without negatives)."""
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    negatives = np.sort(score[y == 0])
    if not len(negatives):
        return math.nan
    value = negatives[max(math.ceil(specificity * len(negatives) - 1e-9), 1) - 1]
    above = score[score > value]
    return float((value + above.min()) / 2) if len(above) else float(value)


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


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    note: str = ""  # why there is no number ("too few positives (n+ 3)")

    @property
    def width(self) -> float:
        return self.high - self.low

    def text(self) -> str:
        if math.isnan(self.value):
            return self.note or "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def percentile_interval(value: float, replicates: np.ndarray) -> Interval:
    """The 95% percentile interval; none if any replicate is undefined (a stratified bootstrap keeps
    both classes in every replicate, so a gap means the statistic itself is undefined here)."""
    if math.isnan(value) or not np.isfinite(replicates).all():
        return Interval(value, math.nan, math.nan)
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Interval(float(value), float(low), float(high))


def bootstrap_weights(
    y: np.ndarray, replicates: int, seed: int, clusters: np.ndarray | None = None
) -> np.ndarray:
    """`(replicates, n)` multiplicities (float32, exact integers) of each study in each replicate of a
    stratified cluster bootstrap: clusters (patients; each study its own without `clusters`) are drawn
    with replacement within strata, as many as each holds. With one label `y` (n,) the strata are the
    patients with a positive study and those without; with several (n, k) they are the patients'
    patterns of labels (per label: a positive study, only known negatives, or nothing known), so that
    every label keeps both classes in every replicate. Every patient's studies travel together, so
    the intervals reflect the patients sampled, not the studies.

    Hand-written: scikit-learn's `resample(stratify=)` draws one replicate of rows, not clusters.
    Float32 halves the largest array of the comparison (2,000 x 25k studies: 200 MB) and holds every
    count exactly; the scores read it in float64 blocks (`_blocks`)."""
    table = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if not len(table):
        return np.zeros((replicates, 0), dtype=np.float32)
    keys = np.arange(len(table)) if clusters is None else np.asarray(clusters)
    _, cluster = np.unique(keys, return_inverse=True)
    cluster = cluster.reshape(-1)
    status = np.zeros((cluster.max() + 1, table.shape[1]), dtype=np.int8)
    np.maximum.at(status, cluster, np.where(table == 1, 2, np.where(table == 0, 1, 0)).astype(np.int8))
    _, stratum = np.unique(status, axis=0, return_inverse=True)
    stratum = stratum.reshape(-1)
    rng = np.random.default_rng(seed)
    counts = np.zeros((replicates, len(status)), dtype=np.float32)
    for s in range(stratum.max(), -1, -1):  # the positive patients' stratum first, as always
        members = np.flatnonzero(stratum == s)
        draws = rng.integers(0, len(members), size=(replicates, len(members)))
        draws += len(members) * np.arange(replicates)[:, None]
        counts[:, members] = np.bincount(draws.ravel(), minlength=replicates * len(members)).reshape(
            replicates, -1
        )
    return counts[:, cluster]


# Replicates scored at once: bounds every float64 temporary to BLOCK x n (25k studies: 50 MB).
BLOCK = 250


def _blocks(weights: np.ndarray) -> Iterator[np.ndarray]:
    """`weights` (R, n) or (n,) in blocks of at most BLOCK replicates (rows, as stored)."""
    w = np.atleast_2d(weights)
    for start in range(0, len(w), BLOCK):
        yield w[start : start + BLOCK]


def weighted_sums(weights: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """`(R, k)` sums of each of the `(n, k)` columns under each replicate's weights."""
    columns = np.asarray(columns, dtype=np.float64).reshape(np.shape(weights)[-1], -1)
    return np.concatenate([block.astype(np.float64) @ columns for block in _blocks(weights)])


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of `score` under each row of `weights` (R, n): the Mann-Whitney statistic with each
    study counted as often as its weight, ties half (NaN where a row lacks a class); studies whose
    label is unknown (NaN) count for neither class.

    The negatives are sorted once and each positive's place among them found once (`searchsorted`),
    whatever the number of replicates: a replicate then needs only the running sum of its negatives'
    weights, read at each positive's place (strictly below, and below or tied)."""
    y, score = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    negatives, positives = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    negatives = negatives[np.argsort(score[negatives], kind="stable")]
    below = np.searchsorted(score[negatives], score[positives], side="left")
    tied = np.searchsorted(score[negatives], score[positives], side="right")
    out = []
    for block in _blocks(weights):
        running = np.zeros((len(block), len(negatives) + 1))
        np.cumsum(block[:, negatives], axis=1, dtype=np.float64, out=running[:, 1:])
        pos = block[:, positives].astype(np.float64)
        p, n = pos.sum(1), running[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            wins = (pos * (running[:, below] + running[:, tied])).sum(1) / 2  # ties count half
            out.append(np.where((p > 0) & (n > 0), wins / (p * n), np.nan))
    return np.concatenate(out)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (a replicate without the class)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def weighted_f1(y: np.ndarray, calls: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """F1 of `calls` under each row of `weights` (NaN where a row has no positive)."""
    y, calls = np.asarray(y, dtype=np.float64), np.asarray(calls, dtype=np.float64)
    tp, called, n_pos = weighted_sums(weights, np.c_[y * calls, calls, y]).T
    return np.where(n_pos > 0, _ratio(2 * tp, called + n_pos), np.nan)


def weighted_sensitivity(y: np.ndarray, calls: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Share of the positives called under each row (NaN without positives); the specificity is the
    sensitivity of the negatives' non-calls, `weighted_sensitivity(1 - y, ~calls, weights)`."""
    y, calls = np.asarray(y, dtype=np.float64), np.asarray(calls, dtype=np.float64)
    hit, n_pos = weighted_sums(weights, np.c_[y * calls, y]).T
    return _ratio(hit, n_pos)


def weighted_brier(y: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean squared error of the probability `prob` under each row of `weights`."""
    error = (np.asarray(prob, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2
    total, n = weighted_sums(weights, np.c_[error, np.ones(len(error))]).T
    return _ratio(total, n)


def weighted_kappa(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of two binary raters under each row of `weights` (NaN where chance agreement is
    certain, one rater calling a single class throughout)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    agree, called_a, called_b, n = weighted_sums(weights, np.c_[a == b, a, b, np.ones(len(a))]).T
    pa, pb = called_a / n, called_b / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    return _ratio(agree / n - chance, np.where(chance < 1 - 1e-12, 1 - chance, 0.0))


def bootstrap(statistic: Callable[..., np.ndarray], weights: np.ndarray, *data: np.ndarray) -> Interval:
    """`statistic(*data, weights)` on the studies themselves, with the 95% interval of its replicates."""
    value = float(statistic(*data, np.ones(len(data[0])))[0])
    return percentile_interval(value, statistic(*data, weights))


def bootstrap_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> Interval:
    return bootstrap(weighted_auc, weights, y, score)


def bootstrap_f1(y: np.ndarray, calls: np.ndarray, weights: np.ndarray) -> Interval:
    return bootstrap(weighted_f1, weights, y, calls)


@dataclass(frozen=True)
class Paired:
    """A paired difference (one score minus another on the same studies) with its bootstrap replicates:
    the interval and the one-sided p-values read the same replicates, so they cannot disagree."""

    value: float
    replicates: np.ndarray

    def interval(self) -> Interval:
        return percentile_interval(self.value, self.replicates)

    def p_above(self, boundary: float) -> float:
        """Bootstrap p of H0: difference <= `boundary` (against H1: difference > `boundary`)."""
        return self._p(self.replicates <= boundary)

    def p_below(self, boundary: float) -> float:
        """Bootstrap p of H0: difference >= `boundary` (against H1: difference < `boundary`)."""
        return self._p(self.replicates >= boundary)

    def _p(self, in_null: np.ndarray) -> float:
        """(1 + replicates on the null's side) / (R + 1): the p-value that inverts the one-sided
        percentile interval, never 0 from a finite bootstrap; NaN where a replicate is undefined."""
        if math.isnan(self.value) or not np.isfinite(self.replicates).all():
            return math.nan
        return float((1 + in_null.sum()) / (len(self.replicates) + 1))


def seed_draws(replicates: int, seeds: int, seed: int) -> np.ndarray:
    """`(replicates, seeds)` training seeds drawn with replacement per bootstrap replicate (all 0 with
    one seed): with `over_seeds`, a bootstrap over patients and training seeds together."""
    return np.random.default_rng([seed, seeds]).integers(0, seeds, size=(replicates, seeds))


def over_seeds(values: np.ndarray, replicates: np.ndarray, draws: np.ndarray) -> Paired:
    """The mean over training seeds of a statistic (`values` (S,), its patient-bootstrap `replicates`
    (S, R), every seed scored on the same studies with the same weights), with replicates that also
    resample the seeds (`draws` from `seed_draws`): each replicate is the mean, over seeds drawn with
    replacement, of those seeds' values under that replicate's patients. The interval then widens
    with the spread between seeds as well as with the patients sampled (with few seeds, by the
    bootstrap's (S - 1) / S too little); one seed gives back its own replicates."""
    values, replicates = np.asarray(values, dtype=np.float64), np.atleast_2d(replicates)
    joint = replicates[draws, np.arange(replicates.shape[1])[:, None]].mean(axis=1)
    return Paired(float(values.mean()), joint)


def paired_auc_difference(
    y: np.ndarray, score: np.ndarray, reference: np.ndarray, weights: np.ndarray
) -> Paired:
    """AUC(score) - AUC(reference) on the same studies, with its paired bootstrap replicates."""
    one = np.ones(len(y))
    value = float(weighted_auc(y, score, one)[0] - weighted_auc(y, reference, one)[0])
    return Paired(value, weighted_auc(y, score, weights) - weighted_auc(y, reference, weights))


def paired_f1_difference(
    y: np.ndarray, calls: np.ndarray, reference: np.ndarray, weights: np.ndarray
) -> Paired:
    """F1(calls) - F1(reference calls) on the same studies, with its paired bootstrap replicates."""
    one = np.ones(len(y))
    value = float(weighted_f1(y, calls, one)[0] - weighted_f1(y, reference, one)[0])
    return Paired(value, weighted_f1(y, calls, weights) - weighted_f1(y, reference, weights))


def holm(p: np.ndarray, replicates: int) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values (step-down, valid under any dependence between the tests) and each one's
    Monte Carlo standard error: an adjusted p is (m - j + 1) * p_(j) for the raw bootstrap p_(j) that
    sets it, and a p estimated from `replicates` draws errs by sqrt(p (1 - p) / replicates)."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    driver = np.array([int(np.argmax(scaled[: k + 1])) for k in range(m)], dtype=int)  # first maximum so far
    adjusted, error = np.empty(m), np.empty(m)
    adjusted[order] = np.minimum(1.0, scaled[driver])
    raw = p[order][driver]
    error[order] = (m - driver) * np.sqrt(raw * (1 - raw) / replicates)
    return adjusted, error


def point_metrics(y: np.ndarray, score: np.ndarray, calls: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """AP of `score`, sensitivity and specificity of `calls` (each study at its own fold's threshold)
    and ECE of the calibrated `prob` (NaN where undefined)."""
    y, calls = np.asarray(y, dtype=np.float64), np.asarray(calls, dtype=bool)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    return {
        "ap": float(average_precision_score(y, score)) if n_pos else math.nan,
        "sensitivity": float((calls & (y == 1)).sum() / n_pos) if n_pos else math.nan,
        "specificity": float((~calls & (y == 0)).sum() / n_neg) if n_neg else math.nan,
        "ece": expected_calibration_error(y, prob),
    }
