"""Patient-level cross-validation folds.

Studies of one patient share anatomy and often scanner and disease, so they must never sit on
both sides of a split. Folds are balanced on the study-level `any` label where the counts allow.
External datasets get fold -1: they never enter training or model selection. Predict datasets
(no labels) get fold -1 too and the split `predict`: every fold model predicts them, no metric reads them.

Nested protocol: for outer fold f, the studies of fold f are only ever scored; a patient-level
*inner* split carved from the other folds (the patients whose `inner_for` is f) is where everything
chosen is chosen (best epoch, thresholds, temperature); the rest trains. Each training patient has
one `inner_for`: a fold other than its own, spread evenly and balanced on `any` within each fold,
so each outer fold's inner split holds about 1/(folds-1) of its training patients.

Learning curves (`splits.train_fraction` < 1): the folds, and so every scored study, stay those of
the whole cohort; only a nested, seeded share of each fold's patients (stratified on `any`) is
allowed to train or select. The others get `inner_for = LEFT_OUT`: scored in their own fold, unused
in the others. A smaller fraction's patients are always a subset of a larger one's.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from ct25d.errors import ConfigError

EXTERNAL_FOLD = -1
LEFT_OUT = -2  # `inner_for` of a training patient outside `splits.train_fraction`
ROLES = ("train", "external", "predict")
SPLIT_COLUMNS = ["dataset", "role", "study_id", "patient_id", "fold", "inner_for"]
# What a study is for, given an outer fold (`study_splits`).
SPLITS = ("train", "inner", "validation", "external", "predict", "unused")


def assign_folds(studies: pd.DataFrame, folds: int, seed: int, train_fraction: float = 1.0) -> pd.DataFrame:
    """One row per study with its fold.

    `studies` needs columns dataset, role, study_id, patient_id and `any` (0/1; NA counts as 0 for
    balancing only). The result is sorted by (dataset, study_id) and does not depend on row order.
    """
    if isinstance(train_fraction, bool) or not 0 < float(train_fraction) <= 1:
        raise ConfigError(f"splits.train_fraction: must be in (0, 1], got {train_fraction!r}")
    missing = [c for c in ("dataset", "role", "study_id", "patient_id", "any") if c not in studies.columns]
    if missing:
        raise ValueError(f"assign_folds: missing column(s) {missing}")
    bad = sorted(set(studies["role"]) - set(ROLES))
    if bad:
        raise ConfigError(f"datasets.<name>.role: unknown role(s) {bad}; expected one of {list(ROLES)}")
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ConfigError(f"splits.folds: must be an integer >= 2, got {folds!r}")
    table = studies.sort_values(["dataset", "study_id"], kind="stable").reset_index(drop=True)
    if table.duplicated(["dataset", "study_id"]).any():
        dup = table.loc[table.duplicated(["dataset", "study_id"]), "study_id"].iloc[0]
        raise ValueError(f"assign_folds: study {dup} listed twice")
    fold = np.full(len(table), EXTERNAL_FOLD, dtype=np.int64)
    train = (table["role"] == "train").to_numpy()
    if train.any():
        fold[train] = _train_folds(table[train], folds, seed)
    out = table[["dataset", "role", "study_id", "patient_id"]].copy()
    out["fold"] = fold
    inner = np.full(len(table), EXTERNAL_FOLD, dtype=np.int64)
    if train.any():
        members = table[train].assign(fold=fold[train])
        kept = _kept_for_training(members, float(train_fraction), seed)
        inner_kept = np.full(len(members), LEFT_OUT, dtype=np.int64)
        inner_kept[kept] = _inner_for(members[kept], folds, seed)
        inner[train] = inner_kept
    out["inner_for"] = inner
    return out.astype({"dataset": str, "role": str, "study_id": str, "patient_id": str, "fold": "int64",
                       "inner_for": "int64"})  # fmt: skip


def _patients(train: pd.DataFrame) -> pd.DataFrame:
    """One row per training patient (sorted): their fold and whether any of their studies is positive."""
    return (
        train.assign(any=train["any"].fillna(0).astype(int))
        .groupby("patient_id", sort=True)
        .agg(fold=("fold", "first"), any=("any", "max"))
    )


def _inner_for(train: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Per study, the outer fold whose inner split its patient joins (its own fold: none)."""
    patients = _patients(train)
    rng = np.random.default_rng([seed, 0x1E7])
    patients["order"] = rng.permutation(len(patients))
    inner = pd.Series(EXTERNAL_FOLD, index=patients.index, dtype=np.int64)
    for k, group in patients.groupby("fold"):
        # Positives first, then negatives, dealt round-robin (starting past the patient's own fold):
        # each outer fold gets its share of both.
        ranked = group.sort_values(["any", "order"], ascending=[False, True]).index
        inner[ranked] = [(k + 1 + i) % folds for i in range(len(ranked))]
    return train["patient_id"].map(inner).to_numpy(dtype=np.int64)


def _kept_for_training(train: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Per study, whether its patient is in the `fraction` of its fold (and `any` stratum) that may
    train. Patients are ranked once by a seeded draw that does not depend on `fraction`, and each
    stratum keeps its first ceil(fraction * n): the subsets of increasing fractions are nested."""
    if fraction >= 1:
        return np.ones(len(train), dtype=bool)
    patients = _patients(train)
    patients["order"] = np.random.default_rng([seed, 0x5A1E]).permutation(len(patients))
    kept: set[str] = set()
    for _, group in patients.groupby(["fold", "any"]):
        n = int(np.ceil(fraction * len(group)))
        kept.update(group.sort_values("order").index[:n])
    return train["patient_id"].isin(kept).to_numpy()


def study_splits(frame: pd.DataFrame, fold: int) -> pd.Series:
    """What each row (study or slice) is for when `fold` is the outer fold: `train`, `inner` (all
    selection), `validation` (the outer fold: scored only), `external` (scored only), `predict`
    (unlabelled: predicted only) or `unused` (including patients left out by `splits.train_fraction`)."""
    train_role = (frame["role"] == "train") & (frame["fold"] >= 0)
    inner = train_role & (frame["fold"] != fold) & (frame["inner_for"] == fold)
    left_out = train_role & (frame["inner_for"] == LEFT_OUT)
    split = np.select(
        [
            train_role & (frame["fold"] == fold),
            inner,
            left_out,
            train_role,
            frame["role"] == "external",
            frame["role"] == "predict",
        ],
        ["validation", "inner", "unused", "train", "external", "predict"],
        default="unused",
    )
    return pd.Series(split, index=frame.index)


def _train_folds(train: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    # Grouping on patient_id across datasets too: one pseudonym salt makes a patient who appears in
    # two training archives one group.
    groups = train["patient_id"].astype(str).to_numpy()
    n_patients = len(np.unique(groups))
    if folds > n_patients:
        raise ConfigError(
            f"splits.folds: {folds} folds need at least {folds} patients; the training datasets "
            f"{sorted(set(train['dataset']))} have {n_patients}"
        )
    y = train["any"].fillna(0).astype(int).to_numpy()
    x = np.zeros((len(train), 1))
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) > 1 and counts.max() >= folds:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has only n members": balance where possible
            warnings.simplefilter("ignore", UserWarning)
            parts = list(splitter.split(x, y, groups))
    else:
        rng = np.random.default_rng(seed)
        # GroupKFold has no seed: relabel groups in a seeded random order to shuffle deterministically.
        names, inverse = np.unique(groups, return_inverse=True)
        shuffled = rng.permutation(len(names))[inverse]
        parts = list(GroupKFold(n_splits=folds).split(x, y, shuffled))
    fold = np.empty(len(train), dtype=np.int64)
    for k, (_, test) in enumerate(parts):
        fold[test] = k
    return fold


def splits_by_study(studies: pd.DataFrame, fold: int) -> pd.Series:
    """`study_splits` of a study table, indexed by (dataset, study_id) for lookups."""
    return study_splits(studies, fold).set_axis(pd.MultiIndex.from_frame(studies[["dataset", "study_id"]]))


def held_out_features(split: np.ndarray, patient_ids: np.ndarray) -> np.ndarray:
    """Splits for a model that must learn from features of studies Stage 1 never trained on
    (`stage2.train_features: held_out`): the inner split's patients are halved (alternately, in the
    order of their pseudonyms' hash) into `train` and `inner` (selection); Stage 1's training studies
    become `unused`; the outer fold and the external sets are unchanged."""
    out = np.where(split == "train", "unused", split).astype(object)
    inner = split == "inner"
    patients = sorted(set(patient_ids[inner]), key=lambda p: hashlib.sha256(str(p).encode()).hexdigest())
    first_half = set(patients[::2])
    out[inner] = np.where([p in first_half for p in patient_ids[inner]], "train", "inner")
    return out.astype(str)
