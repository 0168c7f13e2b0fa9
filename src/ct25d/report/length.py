"""Does an approach score the bleed or the study's length? A network that sees a padded or cropped
volume can learn how many slices a study has; where length and label go together in the training
set, that is a shortcut, and on a set where they go together the other way its AUC falls below
chance (the study's 3D nets on the hospital set, issue 19). Per approach and set: the AUC of the
slice count alone, the rank correlation of the approach's score with it, and its AUC within studies
of equal length (per slice count, or its quantile bins where a set has many), over the pairs
within them: a pooled AUC that differs from the within-length one is partly length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ct25d.atomic import atomic_path, write_csv

EXACT = 12  # at most this many distinct slice counts: one stratum per count; else this many quantile bins


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def length_strata(n_slices: np.ndarray) -> np.ndarray:
    """A stratum per study: its slice count where a set has few distinct counts (then no length is
    left inside a stratum), else its quantile bin of the count (`EXACT` bins)."""
    counts = pd.Series(n_slices)
    if counts.nunique() <= EXACT:
        return counts.to_numpy()
    return pd.qcut(counts.rank(method="first"), EXACT, labels=False).to_numpy()


def within_length_auc(y: np.ndarray, s: np.ndarray, n_slices: np.ndarray) -> float:
    """The AUC of `s` over the positive-negative pairs of equal or similar `n_slices` only
    (`length_strata`): each stratum's AUC weighted by its pairs, n+ x n-, so that a stratum with one
    class adds nothing; NaN where no stratum has both classes."""
    strata = length_strata(n_slices)
    aucs, pairs = [], []
    for k in np.unique(strata):
        part = strata == k
        positives = int((y[part] == 1).sum())
        if 0 < positives < part.sum():
            aucs.append(_auc(y[part], s[part]))
            pairs.append(positives * (int(part.sum()) - positives))
    return float(np.average(aucs, weights=pairs)) if aucs else float("nan")


def length_check(
    predictions: dict[str, pd.DataFrame], studies: pd.DataFrame, label: str = "any"
) -> pd.DataFrame:
    """One row per approach and set of the comparison's scored studies (`predictions`: per approach the
    frame `scored_predictions` gives) with `n_slices` from the study table (dataset, study_id)."""
    lengths = studies[["dataset", "study_id", "n_slices"]]
    rows = []
    for approach, frame in predictions.items():
        scored = frame.drop(columns="n_slices", errors="ignore").merge(lengths, on=["dataset", "study_id"])
        for name, part in scored.groupby("set", sort=True):
            part = part[part[label].notna() & part[f"s_{label}"].notna()]
            y, s, n = (part[label].to_numpy(float), part[f"s_{label}"].to_numpy(float),
                       part["n_slices"].to_numpy(float))  # fmt: skip
            rows.append({
                "approach": approach, "set": name, "n": len(part),
                "auc": _auc(y, s),
                "auc within length": within_length_auc(y, s, n),
                "auc of length alone": _auc(y, n),
                "rank r (score, length)": float(spearmanr(s, n).statistic) if len(part) > 2 else float("nan"),
            })  # fmt: skip
    return pd.DataFrame(rows)


def write_length_check(table: pd.DataFrame, out: Path) -> None:
    """length_check.csv and length_check.md in the comparison folder."""
    write_csv(out / "length_check.csv", table.round(3))
    text = (
        "Does an approach score the bleed or the study's length? Per set: its AUC of `any`; its AUC "
        f"within studies of equal slice count (of similar count where a set has more than {EXACT} "
        "different counts: its quantile bins), over the positive-negative pairs within them; the AUC "
        "of the slice count alone; the rank correlation of the approach's score with it. A pooled AUC "
        "away from the within-length one, with a strong correlation, is partly the study's length: a "
        "shortcut that reverses on a set where length and label go together the other way.\n\n"
        + table.round(3).to_markdown(index=False)
        + "\n"
    )
    with atomic_path(out / "length_check.md") as tmp:
        tmp.write_text(text)
