"""Patient-level folds: no leakage across folds, external data outside training, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ct25d.datasets.splits import EXTERNAL_FOLD, assign_folds, study_splits
from ct25d.errors import ConfigError


def cohort(seed: int = 0, n_patients: int = 30) -> pd.DataFrame:
    """Train patients with 1-3 studies each (some positive), plus an external dataset."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for s in range(int(rng.integers(1, 4))):
            rows.append(("rsna", "train", f"st-{p}-{s}", f"pt-{p}", int(rng.random() < 0.4)))
    for p in range(8):
        rows.append(("cq500", "external", f"cq-{p}", f"pq-{p}", int(p % 2)))
    return pd.DataFrame(rows, columns=["dataset", "role", "study_id", "patient_id", "any"])


def test_no_patient_on_both_sides_and_external_outside_training() -> None:
    studies = cohort()
    folds = assign_folds(studies, 5, seed=1)
    assert len(folds) == len(studies)
    assert list(folds.columns) == ["dataset", "role", "study_id", "patient_id", "fold", "inner_for"]
    train = folds[folds["role"] == "train"]
    assert train.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (folds.loc[folds["role"] == "external", "fold"] == EXTERNAL_FOLD).all()
    assert not (train["fold"] == EXTERNAL_FOLD).any()
    positives = train.merge(studies, on=["dataset", "study_id"]).groupby("fold")["any"].sum()
    assert (positives > 0).all()  # balanced on `any` where the counts allow


def test_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    studies = cohort()
    a = assign_folds(studies, 4, seed=7)
    b = assign_folds(studies.sample(frac=1.0, random_state=3), 4, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = assign_folds(studies, 4, seed=8)
    assert not a["fold"].equals(c["fold"])


def test_single_class_still_splits_by_patient() -> None:
    studies = cohort().assign(any=0)
    folds = assign_folds(studies, 3, seed=0)
    train = folds[folds["role"] == "train"]
    assert train.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(train["fold"].unique()) == [0, 1, 2]


def test_more_folds_than_patients_is_an_error() -> None:
    studies = cohort(n_patients=3)
    with pytest.raises(ConfigError, match=r"splits\.folds.*4 folds.*3"):
        assign_folds(studies, 4, seed=0)
    with pytest.raises(ConfigError, match=r"splits\.folds"):
        assign_folds(studies, 1, seed=0)
    with pytest.raises(ConfigError, match="role"):
        assign_folds(studies.assign(role="validation"), 2, seed=0)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_inner_split_is_patient_level_and_apart_from_the_outer_fold(k: int) -> None:
    """For every outer fold: train, inner and outer share no patient; externals are only scored;
    every inner split holds positives and about 1/k of the training patients."""
    studies = cohort()
    folds = assign_folds(studies, k, seed=3).merge(studies[["dataset", "study_id", "any"]])
    for fold in range(k):
        split = study_splits(folds, fold)
        patients = {
            name: set(folds.loc[split == name, "patient_id"]) for name in ("train", "inner", "validation")
        }
        assert not patients["train"] & patients["inner"]
        assert not (patients["train"] | patients["inner"]) & patients["validation"]
        assert set(split[folds["role"] == "external"]) == {"external"}
        assert (folds.loc[split == "validation", "fold"] == fold).all()
        assert folds.loc[split == "inner", "any"].sum() > 0
        share = len(patients["inner"]) / (len(patients["train"]) + len(patients["inner"]))
        assert abs(share - 1 / k) < 0.1, share


def test_held_out_features_halve_the_inner_split_by_patient() -> None:
    from ct25d.datasets.splits import held_out_features

    studies = cohort()
    folds = assign_folds(studies, 4, seed=3)
    split = study_splits(folds, 1).to_numpy()
    out = held_out_features(split, folds["patient_id"].to_numpy())
    assert set(out[split == "train"]) == {"unused"}  # Stage 1 trained on them: never Stage 2's features
    kept = np.isin(split, ["validation", "external"])
    np.testing.assert_array_equal(out[kept], split[kept])
    inner = split == "inner"
    assert set(out[inner]) == {"train", "inner"}
    halves = {name: set(folds.loc[inner & (out == name), "patient_id"]) for name in ("train", "inner")}
    assert not halves["train"] & halves["inner"] and abs(len(halves["train"]) - len(halves["inner"])) <= 1


def test_train_fraction_keeps_the_scored_studies_and_nests_the_training_ones() -> None:
    """Learning curves: every fraction scores the same studies in the same folds; the patients
    allowed to train or select grow with the fraction (nested), in every fold and `any` stratum;
    a left-out patient is validation in its own fold and unused in every other."""
    from ct25d.datasets.splits import LEFT_OUT

    studies = cohort(n_patients=80)
    full = assign_folds(studies, 3, seed=2)
    allowed = {}
    for fraction in (0.25, 0.5, 1.0):
        folds = assign_folds(studies, 3, seed=2, train_fraction=fraction)
        pd.testing.assert_series_equal(folds["fold"], full["fold"])
        allowed[fraction] = set(folds.loc[folds["inner_for"] >= 0, "patient_id"])
        for fold in range(3):
            split = study_splits(folds, fold)
            assert set(split[folds["fold"] == fold]) == {"validation"}
            out = (folds["inner_for"] == LEFT_OUT) & (folds["fold"] != fold)
            assert set(split[out]) <= {"unused"}
            training = ~out & (folds["fold"] != fold) & (folds["role"] == "train")
            assert set(split[training]) == {"train", "inner"}
        per_fold = folds[folds["role"] == "train"].groupby("fold")["patient_id"].nunique()
        kept = folds[folds["inner_for"] >= 0].groupby("fold")["patient_id"].nunique()
        assert ((kept / per_fold - fraction).abs() < 0.12).all(), (fraction, kept / per_fold)
    assert allowed[0.25] < allowed[0.5] < allowed[1.0]
    assert (full["inner_for"] != LEFT_OUT).all()
    with pytest.raises(ConfigError, match=r"splits\.train_fraction"):
        assign_folds(studies, 3, seed=2, train_fraction=0)


def test_an_unlabelled_dataset_is_predicted_by_every_fold_and_changes_no_fold() -> None:
    """Role predict: fold -1, never an inner split, `predict` for every outer fold; adding it leaves
    the training studies' folds and inner splits as they were."""
    studies = cohort()
    new = pd.DataFrame({"dataset": "new", "role": "predict", "study_id": [f"nw-{p}" for p in range(6)],
                        "patient_id": [f"pn-{p}" for p in range(6)], "any": pd.NA})  # fmt: skip
    both = assign_folds(pd.concat([studies, new], ignore_index=True), 5, seed=1)
    alone = assign_folds(studies, 5, seed=1)
    predict = both[both["role"] == "predict"]
    assert (predict["fold"] == EXTERNAL_FOLD).all() and (predict["inner_for"] == EXTERNAL_FOLD).all()
    pd.testing.assert_frame_equal(both[both["role"] != "predict"].reset_index(drop=True), alone)
    for k in range(5):
        split = study_splits(both, k)
        assert set(split[both["role"] == "predict"]) == {"predict"}
        assert "predict" not in set(split[both["role"] != "predict"])
