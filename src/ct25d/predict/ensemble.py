"""The fold models of one approach combined on unlabelled studies, as the comparison combines them
on an external set: per fold, a temperature and the F1 threshold of each label fitted on that
fold's inner split; per study, the mean of the fold models' calibrated logits, called against the
mean of their thresholds on the same scale. The comparison's own functions do it
(`scored_predictions`, `inner_choices`), so a study gets the same probability whether its archive is
registered as external or as predict.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ct25d.errors import Ct25dError
from ct25d.evaluation.scoring import expit
from ct25d.report.compare import (
    INTERNAL,
    Choice,
    Run,
    calibrate,
    fold_mean,
    inner_choices,
    resolve,
    run_keys,
    scored_predictions,
    threshold_columns,
)

log = logging.getLogger(__name__)

# The words `predict.approaches` may hold besides approach names.
CHOSEN = ("reference", "best")
SPLIT = "predict"


@dataclass(frozen=True)
class Chosen:
    """One approach that predicts: its name in the comparison, its folder name and why it was chosen."""

    approach: str
    folder: str
    why: str


def folder_name(key: str) -> str:
    """A run's config name as a folder: `resnet10t:bilstm` -> `resnet10t-bilstm`."""
    return key.replace(":", "-").replace("/", "-")


def best_internal(comparison: dict[str, Any]) -> tuple[str, float] | None:
    """The approach with the highest volume AUC of `any` on the pooled outer folds in a comparison.json
    (the first in the table's order among equals); None where no approach has one (too few positives)."""
    rows = [r for r in comparison.get("intervals", [])
            if r["metric"] == "auc" and r["set"] == INTERNAL and r["value"] is not None]  # fmt: skip
    if not rows:
        return None
    best = max(rows, key=lambda r: r["value"])  # max keeps the first of equals
    return best["approach"], float(best["value"])


def choose_approaches(
    names: list[str], runs: list[Run], reference: str | None, comparison: str | Path | None
) -> list[Chosen]:
    """The approaches `names` stand for (config names, `reference`, `best`), each once, in order."""
    key_of = {run.approach: run.key for run in runs}
    approach_of = run_keys(runs)
    picked: dict[str, list[str]] = {}
    for name in names:
        if name == "reference":
            if not reference:
                raise Ct25dError("predict.approaches: `reference`, but the comparison has no reference")
            approach, why = resolve(reference, approach_of), f"reference ({reference})"
        elif name == "best":
            if comparison is None:
                raise Ct25dError("predict.approaches: `best` needs the comparison (--comparison)")
            found = best_internal(json.loads(Path(comparison).read_text()))
            if found is None:
                if not reference:
                    raise Ct25dError(
                        f"{comparison}: no approach has an internal AUC, and there is no reference"
                    )
                approach = resolve(reference, approach_of)
                why = "best internal: no approach has an internal AUC (too few positives): the reference"
                log.warning("%s: %s", comparison, why)
            else:
                approach, why = found[0], f"best internal (volume AUC of any {found[1]:.3f}, OOF)"
        else:
            approach, why = resolve(name, approach_of), f"listed ({name})"
        picked.setdefault(approach, []).append(why)
    return [Chosen(a, folder_name(key_of[a]), "; ".join(whys)) for a, whys in picked.items()]


def _predicted(runs: list[Run], dataset: str) -> None:
    """Stop where a fold model did not predict the dataset: its mean would be over fewer folds."""
    for run in runs:
        studies = run.studies
        if not ((studies["split"] == SPLIT) & (studies["dataset"] == dataset)).any():
            raise Ct25dError(
                f"{run.folder / 'predictions_studies.parquet'}: no prediction of dataset {dataset} (split "
                f"{SPLIT}); was the run trained before {dataset} was added? Rerun it (--forcerun)"
            )


def study_ensemble(runs: list[Run], dataset: str, labels: list[str], min_positives: int = 5) -> pd.DataFrame:
    """One row per study of `dataset`: per label `s_` (the mean calibrated logit), `t_` (the mean
    threshold on that scale) and `p_` (the calibrated probability), by `scored_predictions`."""
    _predicted(runs, dataset)
    approach = {run.approach for run in runs}
    if len(approach) != 1:
        raise ValueError(f"study_ensemble: runs of several approaches {sorted(approach)}")
    scored, _ = scored_predictions(runs, labels, min_positives, splits=(SPLIT,))
    frame = scored[approach.pop()]
    return frame[frame["dataset"] == dataset].reset_index(drop=True)


def slice_ensemble(runs: list[Run], dataset: str, labels: list[str], min_positives: int = 5) -> pd.DataFrame:
    """One row per predicted slice of `dataset` (dataset, study_id, z) with `p_<label>`: each fold's
    slice logit divided by that fold's temperature (`inner_choices`, as for the studies), averaged
    over the fold models (NaN unless every fold scored the slice), as a probability. Empty for a
    model that scores whole volumes."""
    folds = []
    for run in runs:
        path = run.folder / "predictions_slices.parquet"
        slices = pd.read_parquet(path, filters=[("dataset", "==", dataset)])
        choices = inner_choices(run.studies, [n for n in labels if n in run.studies], min_positives)
        folds.append((slices, choices))
    return slice_mean(folds)


def slice_mean(folds: list[tuple[pd.DataFrame, dict[str, Choice]]]) -> pd.DataFrame:
    """Per slice (dataset, study_id, z) and label `p_`: the fold models' slice probabilities as
    calibrated logits (each over its fold's temperature), averaged over every fold (NaN unless every
    fold scored the slice), as a probability."""
    keys = ["dataset", "study_id", "z"]
    frames = []
    for slices, choices in folds:
        part = slices[[*keys, *(f"prob_{n}" for n in choices if f"prob_{n}" in slices)]].copy()
        present = {n: c for n, c in choices.items() if f"prob_{n}" in slices}
        calibrate(part, present)
        frames.append(part[[*keys, *(f"s_{n}" for n in present)]])
    table = pd.concat(frames, ignore_index=True)
    scores = [c for c in table if c.startswith("s_")]
    mean = fold_mean(table, keys, scores, len(folds))
    out = mean[keys].copy()
    for column in scores:
        out[f"p_{column[2:]}"] = expit(mean[column].to_numpy(float))
    return out.sort_values(keys, ignore_index=True)


def study_mean(folds: list[tuple[pd.DataFrame, dict[str, Choice]]]) -> pd.DataFrame:
    """`study_ensemble` for fold predictions held in memory (a bundle's): per study (dataset,
    study_id) and label the mean calibrated logit `s_`, the mean thresholds on that scale and `p_`."""
    frames = []
    for studies, choices in folds:
        part = studies.copy()
        calibrate(part, choices)
        frames.append(part)
    names = list(dict.fromkeys(n for _, choices in folds for n in choices))
    numeric = [c for n in names for c in (f"s_{n}", *threshold_columns(n))]
    mean = fold_mean(pd.concat(frames, ignore_index=True), ["dataset", "study_id"], numeric, len(folds))
    for name in names:
        mean[f"p_{name}"] = expit(mean[f"s_{name}"].to_numpy(float))
    return mean


def calls(studies: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Per label the calibrated probability, the threshold as a probability and the call (1 where the
    mean calibrated logit exceeds the mean threshold, as the comparison calls an external study; NA
    where a fold had no threshold)."""
    out = studies[["dataset", "study_id"]].copy()
    for name in labels:
        if f"s_{name}" not in studies:
            continue
        s, t = studies[f"s_{name}"].to_numpy(float), studies[f"t_{name}"].to_numpy(float)
        out[f"prob_{name}"] = expit(s)
        out[f"threshold_{name}"] = expit(t)
        out[f"call_{name}"] = pd.array(np.where(np.isnan(t), None, s > t), dtype="Int8")
    return out
