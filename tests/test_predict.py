"""Predicting on unlabelled studies: the fold models combine as on an external set (the mean of their
calibrated logits, called against the mean of their inner-split thresholds), each slice likewise,
and the same studies get the same probabilities whether registered as external or as predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ct25d.errors import Ct25dError
from ct25d.evaluation.predictions import prediction_frame
from ct25d.evaluation.scoring import expit, fit_temperature, logit
from ct25d.predict.ensemble import (
    best_internal,
    calls,
    choose_approaches,
    slice_ensemble,
    study_ensemble,
)
from ct25d.report.compare import Run, scored_predictions

LABELS = ["any"]


def z(p: list[float] | float) -> np.ndarray:
    """The logit of a probability as stored (float32), as the comparison reads it."""
    return logit(np.asarray(p, dtype=np.float32))


# Five inner studies per fold, two positive: too few to fit a temperature (T = 1), and the F1
# threshold lies between the second positive and the first negative above it (ranks: 1 1 0 0 0).
INNER_Y = [1, 0, 0, 1, 0]
INNER_P = {0: [0.9, 0.2, 0.6, 0.7, 0.1], 1: [0.8, 0.3, 0.4, 0.95, 0.35]}
THRESHOLD = {0: (z(0.7) + z(0.6)) / 2, 1: (z(0.8) + z(0.4)) / 2}
NEW_P = {0: [0.5, 0.2, 0.9], 1: [0.7, 0.1, 0.65]}  # studies a, b, c of the unlabelled set
NEW_SLICES = {0: [0.1, 0.6, 0.3], 1: [0.2, 0.8, 0.4]}  # study a's slices z = 0, 1, 2


def write_run(folder: Path, fold: int, inner_p: list[float] | None = None, inner_y: list[int] | None = None,
              new: str = "new", split: str = "predict", slices: bool = True) -> Run:  # fmt: skip
    """One fold's predictions: its inner split and three studies of an unlabelled set."""
    inner_p, inner_y = inner_p or INNER_P[fold], inner_y or INNER_Y
    keys = pd.DataFrame({
        "dataset": ["rsna"] * len(inner_p) + [new] * 3,
        "study_id": [f"st-{fold}-{i}" for i in range(len(inner_p))] + ["a", "b", "c"],
        "split": ["inner"] * len(inner_p) + [split] * 3,
    })  # fmt: skip
    truth = np.r_[inner_y, [np.nan] * 3][:, None]
    folder.mkdir(parents=True)
    prediction_frame(keys, np.r_[inner_p, NEW_P[fold]][:, None], truth, LABELS).to_parquet(
        folder / "predictions_studies.parquet"
    )
    slice_keys = pd.DataFrame({"dataset": new, "study_id": "a", "z": [0, 1, 2], "slice_id": ["x", "y", "z"]})
    if not slices:
        slice_keys = slice_keys.iloc[:0]
    prob = np.asarray(NEW_SLICES[fold][: len(slice_keys)], dtype=float)[:, None]
    prediction_frame(slice_keys, prob, np.full_like(prob, np.nan), LABELS).to_parquet(
        folder / "predictions_slices.parquet"
    )
    return Run("2.5D: Stage 2 m", "stage2", fold, folder, key="bb:m")


def test_fold_models_combine_as_the_mean_calibrated_logit_against_the_mean_threshold(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / f"f{f}", f) for f in (0, 1)]
    studies = study_ensemble(runs, "new", LABELS).set_index("study_id")
    s = (z(NEW_P[0]) + z(NEW_P[1])) / 2  # T = 1 in both folds
    t = (THRESHOLD[0] + THRESHOLD[1]) / 2
    np.testing.assert_allclose(studies.loc[["a", "b", "c"], "s_any"], s, rtol=1e-12)
    np.testing.assert_allclose(studies["t_any"], t, rtol=1e-9)
    table = calls(studies.reset_index(), LABELS).set_index("study_id")
    np.testing.assert_allclose(table.loc[["a", "b", "c"], "prob_any"], expit(s), rtol=1e-12)
    np.testing.assert_allclose(table["threshold_any"], expit(t), rtol=1e-9)
    assert table.loc[["a", "b", "c"], "call_any"].tolist() == [0, 0, 1]  # s 0.42, -1.79, 1.41 vs t 0.56
    # not the mean of the probabilities: a mean of logits
    assert abs(table.loc["c", "prob_any"] - np.mean([0.9, 0.65])) > 0.01


def test_each_fold_is_calibrated_by_its_own_temperature(tmp_path: Path) -> None:
    """A fold whose inner split can be fitted divides its logits (and threshold) by its own T."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(20)].astype(int)
    p = expit(3.0 * (y - 0.5) + rng.normal(0, 2.5, 40))  # overconfident: T > 1
    runs = [write_run(tmp_path / "f0", 0, list(p), list(y)), write_run(tmp_path / "f1", 1)]
    temperature = fit_temperature(y, z(p)).value
    assert abs(temperature - 1) > 0.05
    studies = study_ensemble(runs, "new", LABELS).set_index("study_id")
    expected = (z(NEW_P[0]) / temperature + z(NEW_P[1])) / 2
    np.testing.assert_allclose(studies.loc[["a", "b", "c"], "s_any"], expected, rtol=1e-12)
    slices = slice_ensemble(runs, "new", LABELS)
    per_slice = (z(NEW_SLICES[0]) / temperature + z(NEW_SLICES[1])) / 2
    np.testing.assert_allclose(slices["p_any"], expit(per_slice), rtol=1e-12)


def test_a_slice_not_scored_by_every_fold_has_no_probability(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "f0", 0), write_run(tmp_path / "f1", 1)]
    kept = pd.read_parquet(runs[1].folder / "predictions_slices.parquet")
    kept[kept["z"] != 2].to_parquet(runs[1].folder / "predictions_slices.parquet")
    slices = slice_ensemble(runs, "new", LABELS).set_index("z")
    assert slices.loc[[0, 1], "p_any"].notna().all() and np.isnan(slices.loc[2, "p_any"])
    whole = [write_run(tmp_path / f"v{f}", f, slices=False) for f in (0, 1)]
    assert slice_ensemble(whole, "new", LABELS).empty  # a whole-volume model: no slice scores


def test_the_same_studies_score_the_same_as_external_or_as_predict(tmp_path: Path) -> None:
    external = [write_run(tmp_path / f"e{f}", f, new="hospital", split="external") for f in (0, 1)]
    predicted = [write_run(tmp_path / f"p{f}", f) for f in (0, 1)]
    scored, _ = scored_predictions(external, LABELS)
    outside = scored["2.5D: Stage 2 m"].query("set == 'hospital'").set_index("study_id")
    mine = study_ensemble(predicted, "new", LABELS).set_index("study_id")
    for column in ("s_any", "t_any", "p_any"):
        np.testing.assert_array_equal(mine.loc[["a", "b", "c"], column], outside.loc[["a", "b", "c"], column])


def test_a_fold_model_that_did_not_predict_the_set_stops(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "f0", 0), write_run(tmp_path / "f1", 1, new="other")]
    with pytest.raises(Ct25dError, match=r"f1/predictions_studies.parquet: no prediction of dataset new"):
        study_ensemble(runs, "new", LABELS)


def test_reference_and_best_name_approaches_once(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "f0", 0)]
    head = Run("2D bb: thresholded head", "stage1", 0, tmp_path / "f0", key="bb:head")
    intervals = [
        {"approach": "2.5D: Stage 2 m", "set": "internal (OOF)", "metric": "auc", "value": 0.80},
        {"approach": "2D bb: thresholded head", "set": "internal (OOF)", "metric": "auc", "value": 0.85},
        {"approach": "2D bb: thresholded head", "set": "hospital", "metric": "auc", "value": 0.99},
        {"approach": "2.5D: Stage 2 m", "set": "internal (OOF)", "metric": "f1", "value": 0.95},
    ]
    (tmp_path / "comparison.json").write_text(json.dumps({"intervals": intervals}))
    assert best_internal({"intervals": intervals}) == ("2D bb: thresholded head", 0.85)
    chosen = choose_approaches(["reference", "best", "m"], [*runs, head], "m", tmp_path / "comparison.json")
    assert [(c.approach, c.folder) for c in chosen] == [("2.5D: Stage 2 m", "bb-m"),
                                                        ("2D bb: thresholded head", "bb-head")]  # fmt: skip
    assert chosen[0].why == "reference (m); listed (m)" and chosen[1].why.startswith(
        "best internal (volume AUC"
    )
    none = {"intervals": [{**intervals[0], "value": None}]}
    (tmp_path / "none.json").write_text(json.dumps(none))
    fallback = choose_approaches(["best"], [*runs, head], "m", tmp_path / "none.json")
    assert fallback[0].approach == "2.5D: Stage 2 m" and "the reference" in fallback[0].why


def test_an_unlabelled_set_moves_no_training_study_in_the_volume_order() -> None:
    """A volume's position keys its augmentation draws: the predict studies go last, so adding a
    dataset of role predict (here one that sorts first) leaves every other study where it was."""
    from ct25d.training.baseline import BaselineSettings, _Inputs

    def studies(with_new: bool) -> pd.DataFrame:
        rows = [("rsna", "train", f"st-{i}", i % 3, -1) for i in range(6)] + [
            ("cq500", "external", "cq-0", -1, -1)
        ]
        rows += [("aaa_new", "predict", f"nw-{i}", -1, -1) for i in range(3)] if with_new else []
        frame = pd.DataFrame(rows, columns=["dataset", "role", "study_id", "fold", "inner_for"])
        labels = pd.array([1, 0] * 3 + [1] + [pd.NA] * (len(frame) - 7), dtype="Int8")
        return frame.assign(patient_id=frame["study_id"], any=labels)

    def inputs(frame: pd.DataFrame) -> _Inputs:
        volumes = frame[["dataset", "study_id"]].assign(store="x.zarr", pad_to=8, from_slices=True)
        return _Inputs("volume", frame, 0, BaselineSettings(labels=("any",)), volumes, None)

    alone, both = inputs(studies(False)), inputs(studies(True))
    assert both.keys.iloc[: len(alone.keys)].equals(alone.keys)
    assert both.keys["dataset"].iloc[len(alone.keys) :].eq("aaa_new").all()
    assert list(both.split[len(alone.keys) :]) == ["predict"] * 3


def test_each_study_carries_what_ingest_recorded_of_it() -> None:
    """studies.csv's ingest columns: the converted series, tilt corrected only under `tilt: correct`,
    gaps from the spacing flag, files set aside at ingest or at scan inside the study's folder, and
    why a study has no prediction."""
    from ct25d.predict.scans import study_records

    scanned = pd.DataFrame({"study_id": ["s1", "s2", "s3", "s4"], "name": ["P1/a", "P1/b", "P2/a", "P3/a"]})
    manifest = pd.DataFrame({
        "study_id": ["s1", "s2", "s4"],
        "n_slices": [30, 31, 28],
        "tilt_deg": [12.0, 0.0, 0.0],
        "flags": ["gantry tilt 12.0 deg", "irregular slice spacing: 2 gap(s), 0 short step(s)", ""],
    })  # fmt: skip
    choice = pd.DataFrame({
        "study_id": ["s1", "s1", "s2", "s3", "s4"],
        "unit": ["P1/a/2_Head", "P1/a/3_Bone", "P1/b/2_Head", "P2/a/2_Head", "P3/a/2_Head"],
        "series_description": "Head",
        "series_class": ["plain", "bone", "plain", "plain", "plain"],
        "slice_thickness": "5.0",
        "kernel": "UB",
        "outcome": ["converted", "excluded", "converted", "failed: x", "converted"],
    })  # fmt: skip
    rejections = pd.DataFrame({
        "level": ["file", "file", "file", "study"],
        "study_id": ["", "", "s2", "s3"],
        "path": ["P1/a/9_Screen/IM1", "P1/ab/IM1", "P1/b/2_Head/IM7", ""],
        "reason": ["Secondary Capture", "no pixel data", "duplicate of IM6", "no series could be converted"],
    })  # fmt: skip
    skipped = pd.DataFrame({"study_id": ["s4"], "reason": "all air"})
    table = study_records(scanned, manifest, choice, rejections, skipped, "correct").set_index("study_id")
    assert table["series"].fillna("").tolist() == ["P1/a/2_Head", "P1/b/2_Head", "", "P3/a/2_Head"]
    assert table["tilt_corrected"].tolist() == [True, False, False, False]
    assert table["gaps"].tolist() == [2 if s == "s2" else 0 for s in table.index]
    assert table["files_rejected"].tolist() == [1, 1, 0, 0]  # "P1/ab/IM1" is in no study's folder
    assert (
        table.loc["s3", "problem"] == "no series could be converted"
        and table.loc["s4", "problem"] == "all air"
    )
    kept = study_records(scanned, manifest, choice, rejections, skipped, "keep")
    assert not kept["tilt_corrected"].any()  # `tilt: keep` stores the sheared grid: nothing corrected
