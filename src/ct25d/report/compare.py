"""The comparison: every approach scored the same way, with intervals, against one reference.

Each run (one approach on one outer fold) wrote its study predictions with their split. Here, per
run and label, a temperature and thresholds (the F1's, and those keeping 90% and 95% specificity)
are fitted on the *inner* split only and applied unchanged to the outer fold and the external
sets. Internal scores pool the outer folds' predictions (out-of-fold); external sets are scored by
the mean of the fold models' calibrated logits (each study once, by every fold). Ranks (AUC, AP,
ΔAUC) read float64 logits, which a temperature never ties. Every score carries a 95% interval from
a bootstrap over patients, stratified so that every replicate holds both classes, and each
approach's AUC is compared with the reference's by a paired bootstrap on the same studies: an
interval that contains 0 means the data cannot tell the two apart. A set with fewer than
`min_positives` positives gets no AUC.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ct25d.atomic import atomic_path, write_csv, write_json, write_parquet
from ct25d.errors import ConfigError
from ct25d.evaluation.scoring import (
    Interval,
    Paired,
    Temperature,
    auc_rows,
    best_threshold,
    bootstrap,
    bootstrap_auc,
    bootstrap_f1,
    bootstrap_weights,
    expit,
    fit_temperature,
    holm,
    logit,
    over_seeds,
    paired_auc_difference,
    paired_f1_difference,
    percentile_interval,
    point_metrics,
    seed_draws,
    threshold_at_specificity,
    weighted_auc,
    weighted_brier,
    weighted_f1,
    weighted_kappa,
    weighted_sensitivity,
)
from ct25d.provenance import stamp

# How the table names a baseline by what it reads.
FAMILIES = {"volume": "3D", "embeddings": "2.5D stacked embeddings", "slices": "2D thickened"}
INTERNAL = "internal (OOF)"
# Operating points a clinician reads: sensitivity where the inner split keeps this specificity.
SPECIFICITIES = (0.90, 0.95)
# What the slice F1 and the strips read of a slice table (the rest of it is never loaded).
SLICE_COLUMNS = ["dataset", "study_id", "z", "any", "prob_any"]


@dataclass
class Run:
    """One approach on one outer fold: where its predictions are and how the table names it."""

    approach: str
    stage: str
    fold: int
    folder: Path
    extra: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the config's name for it: a Stage-2 or baseline entry, `<backbone>:head|cosine`

    @functools.cached_property
    def studies(self) -> pd.DataFrame:
        """The run's study predictions (read once, shared by every score and picture)."""
        return pd.read_parquet(self.folder / "predictions_studies.parquet")

    def embedded(self) -> dict[str, Any]:
        """A Stage-2 run's embedding settings: `checkpoint` (the Stage-1 network whose embeddings it
        read, as the workflow names it) and `tta_flip`, from `<results>/stage1/<backbone>/fold<k>/
        embeddings/settings.json` (the run is `<results>/stage2/<model>/<backbone>/fold<k>`)."""
        if self.stage != "stage2":
            raise ValueError(f"{self.folder}: a {self.stage} run reads no embeddings")
        backbone = self.folder.parent.name
        embeddings = self.folder.parents[3] / "stage1" / backbone / self.folder.name / "embeddings"
        return json.loads((embeddings / "settings.json").read_text())["settings"]

    def slices(self) -> pd.DataFrame:
        """The run's slice predictions of `any` with their study's split (empty for volume models).
        Read when asked, never kept: at RSNA scale a run holds ~350k slices."""
        path = self.folder / "predictions_slices.parquet"
        if not set(SLICE_COLUMNS) <= set(pq.read_schema(path).names):
            return pd.DataFrame(columns=[*SLICE_COLUMNS, "split"])
        slices = pd.read_parquet(path, columns=SLICE_COLUMNS)
        return slices.merge(self.studies[["dataset", "study_id", "split"]], on=["dataset", "study_id"])


def load_runs(
    stage1: list[str | Path], stage2: list[tuple[str, str | Path]], baselines: list[str | Path]
) -> list[Run]:
    """Runs from their `metrics.json` files (the predictions lie beside them).

    Stage-2 runs come as (`<backbone>:<model>`, path): the same model on another Stage-1 backbone is
    another approach. Its name carries the backbone where the Stage-2 runs read several
    (`2.5D resnet10t: Stage 2 bilstm`), and stays `2.5D: Stage 2 bilstm` where they read one."""
    several = len({name.rpartition(":")[0] for name, _ in stage2}) > 1
    entries = [
        *(("stage1", "", path) for path in stage1),
        *(("stage2", name, path) for name, path in stage2),
        *(("baseline", "", path) for path in baselines),
    ]
    runs = []
    for kind, name, path in entries:
        summary = json.loads(Path(path).read_text())
        method = (
            next(iter(summary["results"])).split("/")[-1] if summary["results"] else Path(path).parent.name
        )
        key = method
        if kind == "stage1":
            rule = "thresholded head" if method == "head" else "cosine to class means"
            approach = f"2D {summary['backbone']}: {rule}"
            key = f"{summary['backbone']}:{method}"
        elif kind == "stage2":
            backbone, _, model = name.rpartition(":")
            approach = f"2.5D {backbone}: Stage 2 {model}" if several else f"2.5D: Stage 2 {model}"
            key = name
        else:
            approach = f"{FAMILIES[summary['inputs']]}: {method}"
        kept = (
            "parameters",
            "seconds_per_epoch",
            "train_auc_any_last",
            "volume_shape",
            "volume_from_slices",
            "crop_depth",
        )
        extra = {k: summary[k] for k in kept if k in summary}
        folder = Path(path).parent
        # The training job's `benchmark:` file: Stage-1 rules share their backbone's training run.
        bench = (folder.parent.parent if kind == "stage1" else folder) / "benchmark.tsv"
        if bench.is_file():
            row = pd.read_csv(bench, sep="\t").iloc[-1]
            extra.update(train_s=float(row["s"]), peak_mb=float(row["max_rss"]))
        runs.append(Run(approach, kind, int(summary["fold"]), folder, extra, key))
    return runs


@dataclass(frozen=True)
class Choice:
    """What one run chose for one label on its inner split, on the raw logit: the temperature, the
    threshold maximising F1, and per `SPECIFICITIES` entry the lowest threshold keeping that
    specificity there (NaN without inner negatives)."""

    temperature: Temperature
    threshold: float
    at_specificity: tuple[float, ...]


def threshold_columns(name: str) -> list[str]:
    """The scored frame's threshold columns of a label: `t_` (F1), then `t90_`, `t95_` (specificity)."""
    return [f"t_{name}", *(f"t{round(100 * s)}_{name}" for s in SPECIFICITIES)]


def inner_choices(studies: pd.DataFrame, labels: list[str], min_positives: int = 5) -> dict[str, Choice]:
    """Per label, the `Choice` fitted on the inner split's studies only.

    Thresholds are chosen on the raw logits (F1 and specificity depend on the ranks only), so a
    temperature can never move a call."""
    inner = studies[studies["split"] == "inner"]
    choices = {}
    for name in labels:
        known = inner[name].notna()
        y, z = inner.loc[known, name].to_numpy(float), logit(inner.loc[known, f"prob_{name}"].to_numpy())
        temperature = (
            fit_temperature(y, z, min_positives) if len(y) else Temperature(1.0, "T=1: no inner studies")
        )
        choices[name] = Choice(
            temperature,
            best_threshold(y, z) if len(y) else 0.0,
            tuple(threshold_at_specificity(y, z, s) for s in SPECIFICITIES),
        )
    return choices


def scored_predictions(
    runs: list[Run], labels: list[str], min_positives: int = 5, patients: pd.DataFrame | None = None,
    splits: tuple[str, ...] = ("validation", "external"),
) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:  # fmt: skip
    """Per approach: one row per scored study (`set`: internal or an external dataset) with `s_<label>`
    (the calibrated logit, float64: ranks as the model's own score), `t_<label>`, `t90_<label>` and
    `t95_<label>` (the inner split's thresholds on that scale: F1, specificity) and `p_<label>` (the
    calibrated probability, for calibration only);
    and per approach the calibration flags of its runs. `patient_id` comes from `patients`
    (dataset, study_id, patient_id; each study its own patient without it): the bootstrap's cluster.

    An external study is scored by the mean of the fold models' calibrated logits, each study by
    every fold model: one missing from a fold stops the comparison rather than averaging fewer, and so
    does a study scored twice by one approach (two runs under one name, or one study in two outer
    folds) rather than counting it twice. `splits`: the studies scored; `("predict",)` gives the
    unlabelled sets, each combined over the fold models as an external set is (`ct25d.predict`)."""
    by_approach: dict[str, list[pd.DataFrame]] = {}
    flags: dict[str, list[str]] = {}
    for run in runs:
        studies = run.studies
        present = [n for n in labels if n in studies]
        choices = inner_choices(studies, present, min_positives)
        scored = studies[studies["split"].isin(splits)].copy()
        scored["set"] = np.where(scored["split"] == "validation", INTERNAL, scored["dataset"])
        for message in calibrate(scored, choices):
            flags.setdefault(run.approach, []).append(f"fold {run.fold} {message}")
        by_approach.setdefault(run.approach, []).append(scored.assign(fold=run.fold))
    out = {}
    for approach, frames in by_approach.items():
        frame = pd.concat(frames, ignore_index=True)
        one_row_per(frame, ["set", "dataset", "study_id", "fold"], approach, "scored twice by one fold")
        internal = frame[frame["set"] == INTERNAL]
        outside = frame[frame["set"] != INTERNAL]
        folds = sorted(frame["fold"].unique())
        seen = outside.groupby(["set", "study_id"])["fold"].nunique()
        if (seen < len(folds)).any():
            (dataset, study), _ = next(iter(seen[seen < len(folds)].items()))
            have = set(outside.loc[(outside["set"] == dataset) & (outside["study_id"] == study), "fold"])
            missing = [f for f in folds if f not in have]
            raise ValueError(
                f"{approach}: external study {dataset}/{study} has no prediction from fold(s) {missing}"
            )
        numeric = [c for n in labels if n in frame for c in (n, f"s_{n}", *threshold_columns(n))]
        external = fold_mean(outside, ["set", "dataset", "study_id"], numeric, len(folds))
        scored = pd.concat([internal, external], ignore_index=True).drop(
            columns="patient_id", errors="ignore"
        )
        one_row_per(scored, ["set", "dataset", "study_id"], approach, "in two outer folds")
        if patients is not None:
            scored = scored.merge(patients[["dataset", "study_id", "patient_id"]], on=["dataset", "study_id"],
                                  how="left", validate="many_to_one")  # fmt: skip
        missing = (
            scored["patient_id"].isna() if "patient_id" in scored else pd.Series(True, index=scored.index)
        )
        scored.loc[missing, "patient_id"] = (
            scored.loc[missing, "dataset"] + "/" + scored.loc[missing, "study_id"]
        )
        for name in labels:
            if f"s_{name}" in scored:
                scored[f"p_{name}"] = expit(scored[f"s_{name}"].to_numpy(float))
        out[approach] = scored.sort_values(["set", "dataset", "study_id"])
    return out, flags


def calibrate(scored: pd.DataFrame, choices: dict[str, Choice]) -> list[str]:
    """Add to one run's study (or slice) predictions, per label, `s_` (the logit over the run's
    temperature) and the threshold columns on that scale; returns the temperature flags."""
    flags = []
    for name, choice in choices.items():
        temperature = choice.temperature
        scored[f"s_{name}"] = logit(scored[f"prob_{name}"].to_numpy()) / temperature.value
        for column, threshold in zip(threshold_columns(name), (choice.threshold, *choice.at_specificity),
                                     strict=True):  # fmt: skip
            scored[column] = threshold / temperature.value
        if temperature.flag:
            flags.append(f"{name}: {temperature.flag}")
    return flags


def fold_mean(frame: pd.DataFrame, keys: list[str], numeric: list[str], n_folds: int) -> pd.DataFrame:
    """Per `keys` group of fold rows the mean of `numeric`: over every fold model or none (NaN), so a
    fold without a value (no threshold without inner negatives, a study it did not score) leaves the
    mean undefined rather than averaged over the other folds."""
    groups = frame.groupby(keys, as_index=False)[numeric]
    mean = groups.mean()
    mean[numeric] = mean[numeric].where(groups.count()[numeric].to_numpy() == n_folds)
    return mean


def one_row_per(frame: pd.DataFrame, keys: list[str], approach: str, where: str) -> None:
    """Stop where `frame` holds a study twice: a paired bootstrap needs one row per study and approach."""
    twice = frame[frame.duplicated(keys, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        raise ValueError(
            f"{approach}: {len(twice)} rows for {twice.drop_duplicates(keys).shape[0]} studies {where} "
            f"(first: {first['set']} {first['dataset']}/{first['study_id']}, folds "
            f"{sorted(int(f) for f in twice.loc[twice['study_id'] == first['study_id'], 'fold'].dropna())}): "
            "one row per (approach, set, study) is needed; do two runs share this approach's name "
            "(e.g. one Stage-2 model on two backbones)?"
        )


def fold_scores(runs: list[Run]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(AUC, F1) of `any` of each fold model alone on each external set, the F1 at that model's own
    inner-split threshold: the spread behind the ensemble's score, i.e. how much of the external
    number is ensembling rather than the models (the internal set has no ensemble)."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run in runs:
        studies = run.studies
        threshold = inner_choices(studies, ["any"])["any"].threshold
        for dataset, part in studies[(studies["split"] == "external") & studies["any"].notna()].groupby(
            "dataset"
        ):
            y, z = part["any"].to_numpy(float), logit(part["prob_any"].to_numpy())
            one = np.ones(len(y))
            score = (float(auc_rows(y, z)[0]), float(weighted_f1(y, z > threshold, one)[0]))
            out.setdefault((run.approach, dataset), []).append(score)
    return out


def patients_of(frame: pd.DataFrame) -> np.ndarray | None:
    """The bootstrap's clusters: each study's patient (None: each study its own)."""
    return frame["patient_id"].to_numpy() if "patient_id" in frame else None


def too_few(y: np.ndarray, min_positives: int) -> Interval | None:
    """A placeholder interval where a set holds fewer than `min_positives` positives (or negatives)."""
    n_pos = int(np.sum(y))
    if min(n_pos, len(y) - n_pos) >= min_positives:
        return None
    return Interval(math.nan, math.nan, math.nan, f"too few positives (n+ {n_pos}, n {len(y)})")


class Resampler:
    """Bootstrap weights made once per set of studies and stratification, and shared.

    Every approach is scored on the same studies with the same seed, so each would draw the same
    matrix (paired differences and claims need exactly that); at RSNA scale one is 2,000 x 21k
    studies, and one per approach, label and table would be drawn hundreds of times. The last
    `keep` matrices are kept: the comparison asks for two per set (by `any`, by the labels' pattern).
    """

    def __init__(self, replicates: int, seed: int, keep: int = 2) -> None:
        self.replicates, self.seed, self.keep = replicates, seed, keep
        self._made: OrderedDict[str, np.ndarray] = OrderedDict()

    def weights(self, part: pd.DataFrame, labels: list[str]) -> np.ndarray:
        """`bootstrap_weights` of `part`'s studies, stratified by `labels`, clustered by patient."""
        keys = [c for c in ("dataset", "study_id", "patient_id") if c in part]
        rows = pd.util.hash_pandas_object(part[keys + labels], index=False).to_numpy()
        key = hashlib.sha256(rows.tobytes()).hexdigest() + "|".join(labels)
        if key not in self._made:
            while len(self._made) >= self.keep:
                self._made.popitem(last=False)  # before drawing: never one more matrix than `keep`
            y = part[labels].to_numpy(float)
            self._made[key] = bootstrap_weights(y, self.replicates, self.seed, patients_of(part))
        self._made.move_to_end(key)
        return self._made[key]


def _one_set(
    frame: pd.DataFrame,
    reference: pd.DataFrame | None,
    labels: list[str],
    resampler: Resampler,
    min_positives: int = 5,
) -> dict[str, Any]:
    """Scores of one approach on one set of studies (`any` with intervals, the operating points, the
    labels' AUCs, difference): ranks from the calibrated logits `s_`, calls at each study's own fold
    threshold `t_` (`t90_`, `t95_` for the specificity points), calibration from `p_`, intervals from
    a stratified bootstrap over patients.

    The intervals of F1, sensitivity and ΔF1 hold each fold's threshold fixed, as they hold its
    weights: they answer "how would this trained model, threshold included, do on other patients
    like these", the question a deployment asks. Choosing the threshold again per replicate (on a
    bootstrap of each fold's inner split) would add the threshold's own uncertainty but not the
    weights', a mix that answers neither question; the table's header says which one it answers."""
    known = frame["any"].notna().to_numpy()
    part = frame[known]
    y, score = part["any"].to_numpy(float), part["s_any"].to_numpy(float)
    calls = score > part["t_any"].to_numpy(float)
    weights = resampler.weights(part, ["any"])
    few = too_few(y, min_positives)
    n_pos = int(y.sum())
    row: dict[str, Any] = {
        "n": len(part),
        "n_pos": n_pos,
        "patients": int(part["patient_id"].nunique()) if "patient_id" in part else len(part),
        "auc": few or bootstrap_auc(y, score, weights),
        "f1": few or bootstrap_f1(y, calls, weights),
        # Calling every study positive: the F1 that a rule must beat to have learned anything.
        "f1_all_positive": 2 * n_pos / (len(y) + n_pos) if n_pos else math.nan,
        **point_metrics(y, score, calls, part["p_any"].to_numpy(float)),
        "brier": bootstrap(weighted_brier, weights, y, part["p_any"].to_numpy(float)),
    }
    for specificity, column in zip(SPECIFICITIES, threshold_columns("any")[1:], strict=True):
        threshold = part[column].to_numpy(float)
        at = score > threshold
        k = round(100 * specificity)
        undefined = Interval(math.nan, math.nan, math.nan, "a fold had no inner negatives")
        row[f"sens_at_{k}"] = few or (
            undefined if np.isnan(threshold).any() else bootstrap(weighted_sensitivity, weights, y, at)
        )
        row[f"spec_at_{k}"] = float((~at & (y == 0)).sum() / (y == 0).sum()) if (y == 0).any() else math.nan
    row.update(label_scores(frame, labels, resampler, min_positives))
    if reference is not None:
        deltas = paired_differences(part, reference, weights)
        row.update({k: few or v.interval() for k, v in deltas.items()})
    return row


def label_scores(
    frame: pd.DataFrame, labels: list[str], resampler: Resampler, min_positives: int = 5
) -> dict[str, Any]:
    """Per configured label in `frame`: `n_pos_<label>` and `auc_<label>` with its interval; and
    `macro_auc`, the mean AUC over the labels with at least `min_positives` positives and negatives
    in this set (the same labels for every approach scored on it, named in `macro_labels`).

    One bootstrap for all of them, stratified by each patient's pattern of those labels: every label
    keeps both classes in every replicate, so each replicate's macro average is over the same labels
    (a plain class bootstrap would lose a rare label's positives in some replicates)."""
    counts = {n: (int(frame[n].sum()), int(frame[n].notna().sum())) for n in labels if n in frame}
    entered = [n for n, (pos, known) in counts.items() if min(pos, known - pos) >= min_positives]
    row: dict[str, Any] = {f"n_pos_{n}": pos for n, (pos, _) in counts.items()}
    weights = resampler.weights(frame, entered) if entered else None
    values, replicates = [], []
    for name in counts:
        if name not in entered:
            row[f"auc_{name}"] = too_few(frame.loc[frame[name].notna(), name].to_numpy(float), min_positives)
            continue
        y, score = frame[name].to_numpy(float), frame[f"s_{name}"].to_numpy(float)
        values.append(float(weighted_auc(y, score, np.ones(len(y)))[0]))
        replicates.append(weighted_auc(y, score, weights))
        row[f"auc_{name}"] = percentile_interval(values[-1], replicates[-1])
    row["macro_auc"] = (
        percentile_interval(float(np.mean(values)), np.mean(replicates, axis=0))
        if entered
        else Interval(math.nan, math.nan, math.nan, f"no label with {min_positives} positives and negatives")
    )
    left_out = [f"{n} (n+ {counts[n][0]})" if n in counts else f"{n} (not scored)" for n in labels
                if n not in entered]  # fmt: skip
    row["macro_labels"] = f"{len(entered)} of {len(labels)}" + (
        f"; not {', '.join(left_out)}" if left_out else ""
    )
    return row


def paired_differences(part: pd.DataFrame, other: pd.DataFrame, weights: np.ndarray) -> dict[str, Paired]:
    """`delta_auc` and `delta_f1` (volume, `any`) of `part` minus `other` on the same studies (the
    rows of `part` with a known label), paired bootstrap with `weights`; empty if `other` lacks some."""
    y, score = part["any"].to_numpy(float), part["s_any"].to_numpy(float)
    matched = part[["dataset", "study_id"]].merge(
        other[["dataset", "study_id", "s_any", "t_any"]], on=["dataset", "study_id"], how="left"
    )
    if not len(matched) or matched["s_any"].isna().any():
        return {}
    other_score = matched["s_any"].to_numpy(float)
    return {
        "delta_auc": paired_auc_difference(y, score, other_score, weights),
        "delta_f1": paired_f1_difference(
            y, score > part["t_any"].to_numpy(float), other_score > matched["t_any"].to_numpy(float), weights
        ),
    }


def comparison(
    runs: list[Run],
    labels: list[str],
    reference: str | None,
    resampler: Resampler,
    min_positives: int = 5,
    patients: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(long table: one row per approach and set of studies; the scored predictions per approach).

    Scored set by set, every approach in turn, so that one set's bootstrap weights serve them all."""
    predictions, flags = scored_predictions(runs, labels, min_positives, patients)
    meta: dict[str, dict[str, Any]] = {}
    train_aucs: dict[str, dict[int, float]] = {}
    for run in runs:
        entry = meta.setdefault(run.approach, {"stage": run.stage, "folds": set(), "train_s": 0.0,
                                               "peak_mb": math.nan})  # fmt: skip
        entry["folds"].add(run.fold)
        per_fold = ("train_s", "peak_mb", "train_auc_any_last")
        entry.update({k: v for k, v in run.extra.items() if k not in per_fold})
        if "train_auc_any_last" in run.extra:
            train_aucs.setdefault(run.approach, {})[run.fold] = run.extra["train_auc_any_last"]
        entry["train_s"] += run.extra.get("train_s", math.nan)  # all folds' training jobs
        peak = run.extra.get("peak_mb", math.nan)
        entry["peak_mb"] = peak if math.isnan(entry["peak_mb"]) else max(entry["peak_mb"], peak)
    spread = fold_scores(runs)
    sets = sorted({name for frame in predictions.values() for name in frame["set"].unique()})
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name in sets:
        ref = None
        if reference and reference in predictions:
            ref = predictions[reference][predictions[reference]["set"] == name]
        for approach, frame in predictions.items():
            part = frame[frame["set"] == name]
            if part.empty:
                continue
            rows[approach, name] = {
                "approach": approach,
                "set": name,
                **meta[approach],
                "folds": ", ".join(map(str, sorted(meta[approach]["folds"]))),
                **_one_set(part, None if approach == reference else ref, labels, resampler, min_positives),
                "fold AUCs": ", ".join(f"{a:.3f}" for a, _ in spread.get((approach, name), [])),
                "fold F1s": ", ".join(f"{f:.3f}" for _, f in spread.get((approach, name), [])),
                "calibration": "; ".join(flags.get(approach, [])),
                "train AUCs": ", ".join(f"{a:.2f}" for _, a in sorted(train_aucs.get(approach, {}).items())),
                "train_auc_max": max(train_aucs.get(approach, {}).values(), default=math.nan),
            }
    order = list(predictions)
    long = pd.DataFrame([rows[key] for key in sorted(rows, key=lambda k: (order.index(k[0]), k[1]))])
    counts = [c for c in long if c in ("n", "n_pos", "patients") or c.startswith("n_pos_")]
    long[counts] = long[counts].astype("Int64")  # a label one approach lacks must not make n+ 1.0
    return long, predictions


def slice_f1(runs: list[Run]) -> dict[str, float]:
    """The seed's slice F1 of `any` on the pooled outer folds, each run's threshold chosen on its inner
    slices (approaches without slice predictions are absent)."""
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run in runs:
        slices = run.slices()
        if slices.empty:
            continue
        inner = slices[(slices["split"] == "inner") & slices["any"].notna()]
        threshold = best_threshold(inner["any"].to_numpy(float), inner["prob_any"].to_numpy(float))
        outer = slices[(slices["split"] == "validation") & slices["any"].notna()]
        pooled.setdefault(run.approach, []).append(
            (outer["any"].to_numpy(float), outer["prob_any"].to_numpy() > threshold)
        )
    out = {}
    for approach, parts in pooled.items():
        y, pred = np.concatenate([a for a, _ in parts]).astype(bool), np.concatenate([b for _, b in parts])
        out[approach] = float(2 * (y & pred).sum() / max(pred.sum() + y.sum(), 1)) if y.any() else math.nan
    return out


def outer_slices(runs: list[Run], fold: int | None = None) -> dict[str, pd.DataFrame]:
    """Slice predictions on one outer fold (the first run's), per approach that predicts slices."""
    out = {}
    for run in runs:
        fold = run.fold if fold is None else fold
        if run.fold != fold:
            continue
        slices = run.slices()
        if slices.empty:
            continue
        out[run.approach] = slices[slices["split"] == "validation"]
    return out


def wide_table(
    long: pd.DataFrame,
    slice_scores: dict[str, float],
    reference: str | None,
    pointing: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """One row per approach: the seed's columns plus AUCs with intervals and the paired differences,
    and with `pointing` ({(approach, set): cell}, `ct25d.report.pointing`) the pointing game per set."""
    rows = []
    for approach, group in long.groupby("approach", sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {"approach": approach, "stage": first["stage"], "folds": first["folds"]}
        row["slice F1 (OOF)"] = slice_scores.get(approach, math.nan)
        for _, r in group.sort_values("set", key=lambda s: s != INTERNAL).iterrows():
            where = "OOF" if r["set"] == INTERNAL else r["set"]
            row[f"volume F1 ({where})"] = r["f1"]
            row[f"F1 all positive ({where})"] = r["f1_all_positive"]
            row[f"volume AUC ({where})"] = r["auc"]
            points = [round(100 * s) for s in SPECIFICITIES]
            for k in points:
                row[f"sens @ {k}% spec ({where})"] = r[f"sens_at_{k}"]
            row[f"spec reached @ {' / '.join(map(str, points))} ({where})"] = _slash(
                *(r[f"spec_at_{k}"] for k in points)
            )
            if where != "OOF" and "," in str(r["folds"]):
                row[f"fold AUCs ({where})"] = r["fold AUCs"]  # each fold model alone, for the spread
                row[f"fold F1s ({where})"] = r["fold F1s"]  # at each fold model's own threshold
            row[f"macro AUC ({where})"] = r["macro_auc"]
            row[f"macro labels ({where})"] = r["macro_labels"]
            if pointing is not None:
                row[f"pointing game ({where})"] = pointing.get((approach, r["set"]), "n/a")
            if where == "OOF":
                row["sens / spec (OOF)"] = _slash(r["sensitivity"], r["specificity"])
                row["ECE (OOF)"] = r["ece"]
                row["Brier (OOF)"] = r["brier"]
            if reference and isinstance(r.get("delta_auc"), Interval):
                row[f"ΔAUC vs ref ({where})"] = r["delta_auc"]
                row[f"ΔF1 vs ref ({where})"] = r["delta_f1"]
        parameters = first.get("parameters")
        row["parameters"] = (
            int(parameters) if isinstance(parameters, numbers.Number) and parameters == parameters else None
        )
        # The training AUC of `any` at each fold's last epoch: an arm that memorised nothing shows it.
        row["calibration flags"] = first.get("calibration") or None
        row["train AUC, last epoch"] = first.get("train AUCs") or None
        row["s/epoch"] = first.get("seconds_per_epoch")
        row["training s (all folds)"] = first.get("train_s")
        row["peak RSS GB"] = first.get("peak_mb", math.nan) / 1024
        rows.append(row)
    table = pd.DataFrame(rows)
    table["parameters"] = table["parameters"].astype("Int64")
    return table


def _slash(*values: float) -> str:
    """Rates side by side to two decimals ("0.91 / 0.95"), n/a where undefined."""
    return " / ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in values)


# The CQ500 paper's findings and the labels they are scored as (readers' majority, ct25d.labels).
FINDINGS = {"ICH": "any", "IPH": "intraparenchymal", "IVH": "intraventricular", "SDH": "subdural",
            "EDH": "epidural", "SAH": "subarachnoid"}  # fmt: skip


def findings_table(long: pd.DataFrame) -> pd.DataFrame:
    """Study-level AUC per finding (as the CQ500 paper scores it) with its n+, per approach and set of
    studies, read from the long table's per-label scores (`label_scores`); a finding with too few
    positives says so, and one not among the compared labels is left out."""
    rows = []
    for r in long.to_dict(orient="records"):
        row: dict[str, Any] = {"approach": r["approach"], "set": r["set"]}
        for finding, label in FINDINGS.items():
            if f"auc_{label}" in r:
                row[f"{finding} AUC"] = r[f"auc_{label}"]
                row[f"{finding} n+"] = r[f"n_pos_{label}"]
        rows.append(row)
    table = pd.DataFrame(rows)
    counts = [c for c in table if c.endswith(" n+")]
    table[counts] = table[counts].astype("Int64")
    return table


def reader_kappas(
    predictions: dict[str, pd.DataFrame], dataset: str, reads: str | Path, salt: str, resampler: Resampler
) -> pd.DataFrame:
    """Cohen's kappa of each approach's ICH call (calibrated `any` above its inner threshold) with each
    CQ500 reader, beside the readers' kappas with each other (the CQ500 paper reports the latter), all
    on the same studies (those every approach scored) and with 95% intervals from one bootstrap over
    patients stratified by the readers' majority."""
    from ct25d.dicom.headers import pseudonym
    from ct25d.labels import CQ500_READERS

    raw = pd.read_csv(reads)
    numbers = raw["name"].astype(str).str.extract(r"CQ500-CT-(\d+)$")[0]
    # A CQ500 study is its folder `CQ500CT<N> CQ500CT<N>` (ct25d.dicom.scan), pseudonymised at ingest.
    raw["study_id"] = [pseudonym(f"CQ500CT{n} CQ500CT{n}", salt, "st-") for n in numbers]
    parts = {a: frame[frame["set"] == dataset].set_index("study_id") for a, frame in predictions.items()}
    parts = {a: part for a, part in parts.items() if part.index.isin(raw["study_id"]).any()}
    shared = set(raw["study_id"])
    for part in parts.values():
        shared &= set(part.index)
    common = raw[raw["study_id"].isin(shared)]
    calls = {r: common[f"{r}:ICH"].to_numpy(int) for r in CQ500_READERS}
    studies = pd.DataFrame({"study_id": common["study_id"].to_numpy(),
                            "majority": (sum(calls.values()) >= 2).astype(float)})  # fmt: skip
    if parts and "patient_id" in next(iter(parts.values())):
        studies["patient_id"] = next(iter(parts.values())).loc[studies["study_id"], "patient_id"].to_numpy()
    weights = resampler.weights(studies, ["majority"])
    rows: list[dict[str, Any]] = []
    for a in CQ500_READERS:
        row: dict[str, Any] = {"rater": f"reader {a}", "studies": len(studies)}
        row.update({f"κ vs {b}": bootstrap(weighted_kappa, weights, calls[a], calls[b])
                    for b in CQ500_READERS if b != a})  # fmt: skip
        rows.append(row)
    for approach, part in parts.items():
        part = part.loc[studies["study_id"]]
        call = (part["s_any"] > part["t_any"]).to_numpy(int)
        row = {"rater": approach, "studies": len(part)}
        row.update({f"κ vs {r}": bootstrap(weighted_kappa, weights, calls[r], call) for r in CQ500_READERS})
        rows.append(row)
    return pd.DataFrame(rows)


def cell_text(value: Any) -> Any:
    if value is pd.NA or value is None:
        return "n/a"
    if isinstance(value, Interval):
        return value.text()
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else round(value, 3)
    return value


def interval_records(long: pd.DataFrame) -> list[dict[str, Any]]:
    """Every interval of the long table as numbers (approach, set, metric, value, low, high, note), for
    tools that read comparisons back (`ct25d sweep`) without parsing "0.700 [0.652, 0.747]"."""
    records = []
    for row in long.to_dict(orient="records"):
        for metric, value in row.items():
            if isinstance(value, Interval):
                records.append({"approach": row["approach"], "set": row["set"], "metric": metric,
                                "value": None if math.isnan(value.value) else value.value,
                                "low": None if math.isnan(value.low) else value.low,
                                "high": None if math.isnan(value.high) else value.high,
                                "note": value.note})  # fmt: skip
    return records


def volume_note(runs: list[Run]) -> str:
    """What the 3D rows read, for the table's header: a resized volume shows fewer pixels than the
    2D rows do, and the reader must know it."""
    shapes = {(tuple(r.extra["volume_shape"]), r.extra.get("volume_from_slices", ""),
               r.extra.get("crop_depth")) for r in runs if "volume_shape" in r.extra}  # fmt: skip
    notes = [
        " x ".join(map(str, shape))
        + {
            True: " (each study's own slices at the slice store's pixels, padded or cropped to that depth)",
            False: " (resized: fewer pixels than the 2D rows see, one label per study)",
            "": "",  # a run from before the store said
        }[from_slices]
        + (f", trained on runs of {crop} slices and scored on whole studies" if crop else "")
        for shape, from_slices, crop in sorted(shapes, key=str)
    ]
    if not notes:
        return ""
    return f"3D rows read volumes of {'; '.join(notes)} (channels x depth x height x width). "


def verdicts(long: pd.DataFrame, reference: str | None) -> list[str]:
    """What the paired intervals say, one line per approach and set."""
    lines = []
    for r in long.itertuples():
        delta = getattr(r, "delta_auc", None)
        if not isinstance(delta, Interval) or math.isnan(delta.value):
            continue
        if math.isnan(delta.low):
            verdict = "too few studies for an interval"
        elif delta.width == 0 and delta.value == 0:
            verdict = "orders these studies' positives and negatives exactly as"
        elif delta.excludes_zero():
            verdict = "better than" if delta.low > 0 else "worse than"
        else:
            verdict = f"cannot be told apart from (interval {delta.width:.2f} wide, contains 0)"
        lines.append(f"- {r.approach} on {r.set}: ΔAUC {delta.text()}: {verdict} {reference}")
    return lines


def reading_notes(long: pd.DataFrame, too_wide: float = 0.3, learned: float = 0.6) -> list[str]:
    """What a reader must know before reading the table: sets whose AUC intervals are too wide to rank
    anything (a small cohort such as the demo's), and approaches that learned nothing from their own
    training data (a row at chance that says "not trained enough", not "this family cannot work")."""
    notes = []
    for name, part in long.groupby("set", sort=True):
        widths = [a.width for a in part["auc"] if isinstance(a, Interval) and not math.isnan(a.low)]
        if widths and float(np.median(widths)) > too_wide:
            notes.append(
                f"- **{name}**: the median AUC interval is {np.median(widths):.2f} wide, too wide to rank "
                f"these approaches on this set (n = {int(part['n'].max())} studies)."
            )
    unlearned = long.loc[long["train_auc_max"] < learned, "approach"].unique()
    for approach in unlearned:
        notes.append(
            f"- **{approach}**: its training AUC at the last epoch stayed below {learned} in every fold: "
            "it learned nothing from its own training data in these epochs, so its scores are chance, "
            "not a verdict on its family (a longer run, more data or config/study.yaml)."
        )
    return ["**Read with care:**", *notes, ""] if notes else []


def run_keys(runs: list[Run]) -> dict[str, str]:
    """Config name -> approach: a baseline entry, `<backbone>:<Stage-2 model>`, `<backbone>:head|cosine`."""
    return {run.key: run.approach for run in runs}


def resolve(name: str, keys: dict[str, str]) -> str:
    """The approach a config name stands for (`keys`: `run_keys`): a baseline entry,
    `<backbone>:<Stage-2 model>`, `<backbone>:head|cosine`, a Stage-2 model or `head` / `cosine` alone
    where one backbone ran, or the approach's own name in the table."""
    if name in keys:
        return keys[name]
    if name in keys.values():
        return name
    matches = {a for k, a in keys.items() if k.endswith(f":{name}")}
    if len(matches) != 1:
        known = ", ".join(sorted(keys))
        raise ConfigError(f"compare: {name!r} names {len(matches)} approaches of this run ({known})")
    return matches.pop()


KINDS = ("superiority", "non_inferiority", "equivalence")


@dataclass(frozen=True)
class Claim:
    """One pre-registered hypothesis on the paired difference D = `better` minus `than` in `metric`,
    decided on its `primary` set of studies (the others are exploratory):
    superiority H1: D > margin; non-inferiority H1: D > -margin; equivalence H1: -margin < D < margin."""

    claim: str
    better: str
    than: str
    metric: str = "auc"
    kind: str = "superiority"
    margin: float = 0.0
    primary: str = INTERNAL

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"compare.claims: {self.claim!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.metric not in ("auc", "f1"):
            raise ConfigError(f"compare.claims: {self.claim!r}: metric {self.metric!r} is not auc or f1")
        if self.margin < 0 or (self.kind != "superiority" and self.margin == 0):
            need = "margin >= 0" if self.kind == "superiority" else "margin > 0"
            raise ConfigError(
                f"compare.claims: {self.claim!r}: kind {self.kind} needs {need} (got {self.margin})"
            )

    @property
    def alternative(self) -> str:
        """H1 in words, for claims.md."""
        return {"superiority": f"D > {self.margin:g}", "non_inferiority": f"D > -{self.margin:g}",
                "equivalence": f"-{self.margin:g} < D < {self.margin:g}"}[self.kind]  # fmt: skip

    def p(self, delta: Paired) -> float:
        """The bootstrap p of this claim's null (equivalence: two one-sided tests, the larger p)."""
        if self.kind == "superiority":
            return delta.p_above(self.margin)
        if self.kind == "non_inferiority":
            return delta.p_above(-self.margin)
        return max(delta.p_above(-self.margin), delta.p_below(self.margin))


CLAIM_COLUMNS = ["claim", "kind", "better", "than", "metric", "set", "role", "n", "difference", "margin",
                 "H1", "p", "p (Holm)", "verdict"]  # fmt: skip


def aligned(frame: pd.DataFrame, name: str, order: pd.DataFrame | None = None) -> pd.DataFrame:
    """`frame`'s studies of set `name` with a known `any`, in `order`'s (dataset, study_id) order when
    given: every training seed's scores must be on the same studies for a paired, seed-pooled test."""
    part = frame[(frame["set"] == name) & frame["any"].notna()]
    if order is None:
        return part
    keys = ["dataset", "study_id"]
    out = order[keys].merge(part, on=keys, how="left", validate="one_to_one")
    if out["s_any"].isna().any() or len(part) != len(order):
        raise ValueError(f"training seeds scored different studies of {name}: a paired test needs the same")
    return out


def claims_table(
    claims: list[dict[str, Any]],
    keys: dict[str, str],
    predictions: list[dict[str, pd.DataFrame]],
    resampler: Resampler,
    min_positives: int = 5,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Each claim tested by the paired patient bootstrap of better minus than on the same studies, on
    every scored set: its primary set decides it, with Holm's adjustment across the primary tests;
    the other sets are exploratory (raw p, no verdict). A primary set without a test (too few
    positives, or not scored) leaves the claim undecided and out of the family.

    `predictions`: one scored-predictions dict per training seed. With several, D is the mean over
    seeds and its replicates resample patients and seeds together (`over_seeds`), so that a claim must
    hold across training runs, not in one; `per seed` lists each seed's own D."""
    draws = seed_draws(resampler.replicates, len(predictions), resampler.seed)
    rows = []
    for entry in claims:
        claim = Claim(**entry)
        better, than = resolve(claim.better, keys), resolve(claim.than, keys)
        base = {"claim": claim.claim, "kind": claim.kind, "better": better, "than": than,
                "metric": f"volume {claim.metric.upper()}", "margin": claim.margin,
                "H1": claim.alternative}  # fmt: skip
        tested = []
        for name in sorted(predictions[0][better]["set"].unique()):
            part = aligned(predictions[0][better], name)
            deltas = []
            for scored in predictions:
                mine = aligned(scored[better], name, part)
                weights = resampler.weights(mine, ["any"])
                other = scored[than][scored[than]["set"] == name]
                deltas.append(paired_differences(mine, other, weights).get(f"delta_{claim.metric}"))
            if any(d is None for d in deltas):
                continue
            delta = over_seeds([d.value for d in deltas], np.stack([d.replicates for d in deltas]), draws)
            few = too_few(part["any"].to_numpy(float), min_positives)
            tested.append({**base, "set": name, "role": "primary" if name == claim.primary else "exploratory",
                           "n": len(part), "difference": few or delta.interval(),
                           "p": math.nan if few else claim.p(delta)})  # fmt: skip
            if len(predictions) > 1:
                tested[-1]["per seed"] = ", ".join(f"{d.value:+.3f}" for d in deltas)
        if not any(row["role"] == "primary" for row in tested):
            note = f"no studies of {claim.primary} scored by both"
            tested.insert(0, {**base, "set": claim.primary, "role": "primary", "n": 0, "p": math.nan,
                              "difference": Interval(math.nan, math.nan, math.nan, note)})  # fmt: skip
        rows += sorted(tested, key=lambda row: row["role"] != "primary")
    columns = CLAIM_COLUMNS if len(predictions) == 1 else [*CLAIM_COLUMNS[:9], "per seed", *CLAIM_COLUMNS[9:]]
    table = pd.DataFrame(rows, columns=columns)
    primary = (table["role"] == "primary") & table["p"].notna()
    adjusted, error = holm(table.loc[primary, "p"].to_numpy(float), resampler.replicates)
    table.loc[primary, "p (Holm)"] = adjusted
    errors = pd.Series(error, index=table.index[primary]).reindex(table.index)
    table["verdict"] = [
        claim_verdict(*row, alpha)
        for row in zip(table["role"], table["p"], table["p (Holm)"], errors, strict=True)
    ]
    return table


def claim_verdict(role: str, p: float, adjusted: float, error: float, alpha: float) -> str:
    """Supported where the primary test's Holm-adjusted p is at most `alpha`, marked borderline where
    it lies within two Monte Carlo standard errors (`error`) of `alpha`; exploratory rows only say
    where their raw p falls."""
    if math.isnan(p):
        return f"{'undecided' if role == 'primary' else 'exploratory'}: no test (see the difference)"
    if role != "primary":
        return f"exploratory: unadjusted p {'<=' if p <= alpha else '>'} {alpha:g}"
    verdict = "supported" if adjusted <= alpha else "not supported"
    if abs(adjusted - alpha) <= 2 * error:
        verdict += f" (borderline: adjusted p within 2 Monte Carlo SE ({error:.3g}) of {alpha:g})"
    return verdict


def claims_text(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as written: p-values to three significant digits (a bootstrap p can be
    1 / (R + 1), far below the 0.001 that other numbers are rounded to)."""
    text = table.map(cell_text)
    for column in ("p", "p (Holm)"):
        text[column] = table[column].map(lambda p: "n/a" if pd.isna(p) else f"{p:.3g}")
    return text


def claims_markdown(table: pd.DataFrame, replicates: int, seed: int, alpha: float) -> str:
    """claims.md: how the claims were tested, the primary tests, then the exploratory ones."""
    primary = table["role"] == "primary"
    family = int((primary & table["p"].notna()).sum())
    error = math.sqrt(alpha * (1 - alpha) / replicates)
    text = claims_text(table)
    intro = (
        f"Each claim is a pre-registered hypothesis on D = `better` minus `than` in its metric, tested "
        f"by the paired bootstrap over patients (stratified by class; {replicates} replicates, seed "
        f"{seed}) on the same studies: superiority H1: D > margin, non-inferiority H1: D > -margin, "
        f"equivalence H1: -margin < D < margin (two one-sided tests, p the larger of the two). A one-sided "
        f"p is (1 + replicates on the null's side of the boundary) / ({replicates} + 1), the p that "
        f"inverts the one-sided percentile interval. Each claim is decided on its primary set only: "
        f"supported where its Holm-adjusted p (step-down across the {family} primary tests that could "
        f"be run) is at most alpha = {alpha:g}; the other sets are exploratory (unadjusted p, no "
        f"verdict). Intervals are the two-sided 95% percentile intervals of D (an equivalence at alpha "
        f"matches the {1 - 2 * alpha:.0%} interval lying within ±margin). Monte Carlo error: a p near "
        f"alpha estimated from {replicates} replicates errs by about {error:.4f} (sqrt(alpha (1 - "
        f"alpha) / R)); an adjusted p errs by (m - j + 1) times its raw p's error. A verdict whose "
        f"adjusted p lies within two of its Monte Carlo standard errors of alpha is marked borderline: "
        f"more replicates (`compare.bootstrap`) could flip it."
    )
    return (
        f"{intro}\n\n## Primary tests\n\n{text[primary].to_markdown(index=False)}\n\n"
        f"## Exploratory (other sets)\n\n{text[~primary].drop(columns='p (Holm)').to_markdown(index=False)}\n"
    )


def score_table(
    predictions: dict[str, pd.DataFrame], labels: list[str], keys: dict[str, str]
) -> pd.DataFrame:
    """Every approach's scored studies in one frame (comparison/scores.parquet): the approach's config
    `key` (`keys`: `run_keys`), the truth, the calibrated logit `s_`, the thresholds and the
    probability `p_` of each label, the set and the patient. What a later step needs to test claims
    again over other runs' scores (training seeds: `ct25d.report.seeds`) without the runs' folders."""
    key_of = {approach: key for key, approach in keys.items()}
    keep = ["set", "dataset", "study_id", "patient_id"]
    frames = []
    for approach, frame in predictions.items():
        columns = [c for n in labels if n in frame for c in (n, f"s_{n}", *threshold_columns(n), f"p_{n}")]
        frames.append(frame[keep + columns].assign(approach=approach, key=key_of.get(approach, approach)))
    table = pd.concat(frames, ignore_index=True)
    return table[["approach", "key", *(c for c in table if c not in ("approach", "key"))]]


def write_comparison(
    stage1: list[str | Path],
    stage2: list[tuple[str, str | Path]],
    out_dir: str | Path,
    baselines: list[str | Path] = (),
    labels: list[str] | None = None,
    reference: str | None = None,
    replicates: int = 1000,
    seed: int = 0,
    readers: dict[str, str] | None = None,
    salt: str = "",
    claims: list[dict[str, Any]] | None = None,
    min_positives: int = 5,
    patients: str | Path | pd.DataFrame | None = None,
    alpha: float = 0.05,
    pointing: list[str | Path] | None = None,
    studies: str | Path | pd.DataFrame | None = None,
) -> pd.DataFrame:
    """comparison.csv / .md (wide table + verdicts against `reference`, a config or approach name as
    `resolve` reads it), comparison_long.csv, claims.csv / .md (each of `claims` tested, Holm across
    the primary tests at `alpha`), findings.csv / .md (per finding), readers.csv (kappa with each
    CQ500 reader, for `readers` {dataset: reads.csv}),
    comparison.png (intervals), reliability.png, roc.png, pr.png, confusion.png and strips.png;
    with `pointing` (the saliency runs' pointing.parquet files) a pointing-game column per set, its
    numbers among comparison.json's intervals (metric `pointing_game`; none below `min_positives`
    scored calls); with `studies` (the index's study table) length_check.csv / .md
    (`ct25d.report.length`: does an approach score the bleed or the study's length)."""
    from ct25d.labels import RSNA_LABELS

    labels = list(labels or RSNA_LABELS)
    out = Path(out_dir)
    runs = load_runs(stage1, stage2, baselines)
    keys = run_keys(runs)
    reference = resolve(reference, keys) if reference else None
    if patients is not None and not isinstance(patients, pd.DataFrame):
        patients = pd.read_parquet(patients, columns=["dataset", "study_id", "patient_id"])
    resampler = Resampler(replicates, seed)
    long, predictions = comparison(runs, labels, reference, resampler, min_positives, patients)
    cells, pointing_note, pointing_intervals = None, "", []
    if pointing is not None:
        from ct25d.report.pointing import (
            header,
            missing_cells,
            pointing_cells,
            pointing_records,
            pointing_scores,
            read_pointing,
        )

        pointing_note = header(min_positives)
        calls = read_pointing(pointing, keys, INTERNAL)
        scores = pointing_scores(calls, replicates, seed, min_positives)
        missing_cells(scores, list(predictions), sorted(long["set"].unique()))
        cells, pointing_intervals = pointing_cells(scores), pointing_records(scores)
    table = wide_table(long, slice_f1(runs), reference, cells)
    write_csv(out / "comparison.csv", table.map(cell_text))
    write_csv(out / "comparison_long.csv", long.map(cell_text))
    lines = [
        f"Scores: internal = pooled outer folds (OOF); external = mean of the fold models. Thresholds "
        f"and temperatures chosen on each fold's inner split (T = 1 where it cannot be fitted: "
        f"`calibration flags`); AUCs from the models' own scores. 95% intervals from a bootstrap over "
        f"patients, stratified by class ({replicates} replicates, seed {seed}); no AUC below "
        f"{min_positives} positives. ΔAUC: paired "
        f"bootstrap against the reference ({reference or 'none'}). Sens / spec at each fold's own threshold. "
        f"F1 all positive: the F1 of calling every study of the set positive (2 n+ / (n + n+)), the F1 a "
        f"rule must beat. Sens @ 90% / 95% spec: at the lowest threshold that leaves 90% / 95% of each "
        f"fold's inner-split negatives uncalled, applied unchanged to its outer fold (external sets: the "
        f"mean of the fold models' thresholds, as of their scores); `spec reached` is the specificity "
        f"these thresholds reach on the set itself. The intervals of F1, sensitivity and ΔF1 treat each "
        f"fold's threshold as fixed, part of the trained model as its weights are: they cover the "
        f"patients sampled, not choosing the threshold again. Macro AUC: the mean AUC over the "
        f"configured labels ({', '.join(labels)}) with at least {min_positives} positives and negatives "
        f"in the set (`macro labels`: how many entered, and which did not), its interval from one "
        f"bootstrap stratified by each patient's pattern of those labels. Brier with its interval. "
        f"Training s: the approach's own training jobs over all folds (Stage-2 and 2.5CNN rows exclude the "
        f"Stage-1 run they read); peak RSS from the same `benchmark:` files. {volume_note(runs)}"
        + pointing_note,
        "",
        *reading_notes(long),
        table.map(cell_text).to_markdown(index=False),
        "",
        *verdicts(long, reference),
    ]
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(
        out / "comparison.json",
        {
            **stamp(
                "compare", {"reference": reference, "replicates": replicates, "seed": seed, "labels": labels}
            ),
            "runs": [str(run.folder) for run in runs],
            "rows": json.loads(long.map(cell_text).to_json(orient="records")),
            "intervals": interval_records(long) + pointing_intervals,
        },
    )
    from ct25d.report.figures import (
        plot_confusion,
        plot_curves,
        plot_intervals,
        plot_reliability,
        plot_strips,
    )

    if studies is not None:
        from ct25d.report.length import length_check, write_length_check

        if not isinstance(studies, pd.DataFrame):
            studies = pd.read_parquet(studies, columns=["dataset", "study_id", "n_slices"])
        write_length_check(length_check(predictions, studies), out)
    write_parquet(out / "scores.parquet", score_table(predictions, labels, keys),
                  stamp("compare", {"reference": reference, "labels": labels}))  # fmt: skip
    tested = claims_table(list(claims or []), keys, [predictions], resampler, min_positives, alpha)
    write_csv(out / "claims.csv", claims_text(tested))
    with atomic_path(out / "claims.md") as tmp:
        tmp.write_text(claims_markdown(tested, replicates, seed, alpha))
    findings = findings_table(long).map(cell_text)
    write_csv(out / "findings.csv", findings)
    with atomic_path(out / "findings.md") as tmp:
        tmp.write_text(
            "Study-level AUC per finding (CQ500 paper's names; labels: the majority of the three readers), "
            "95% intervals from one bootstrap over patients per set, stratified by each patient's pattern "
            "of the findings with enough cases (that of the macro AUC; comparison.md's ICH interval is "
            f"stratified by ICH alone); none below {min_positives} positives.\n\n"
            + findings.to_markdown(index=False)
            + "\n"
        )
    kappas = [
        reader_kappas(predictions, d, path, salt, resampler).assign(dataset=d)
        for d, path in (readers or {}).items()
    ]
    table_k = pd.concat(kappas, ignore_index=True) if kappas else pd.DataFrame(columns=["rater", "dataset"])
    write_csv(out / "readers.csv", table_k.map(cell_text))
    plot_intervals(long, out / "comparison.png")
    plot_reliability(predictions, out / "reliability.png")
    plot_curves(predictions, out / "roc.png", "roc")
    plot_curves(predictions, out / "pr.png", "pr")
    plot_confusion(predictions, out / "confusion.png")
    plot_strips(outer_slices(runs), out / "strips.png")
    return table
