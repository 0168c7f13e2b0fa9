"""Scores, intervals and choices of the comparison: against scikit-learn and hand-computed cases; choices
that never see the outer fold or the external sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from ct25d.errors import ConfigError
from ct25d.evaluation.predictions import prediction_frame
from ct25d.evaluation.scoring import (
    Interval,
    apply_temperature,
    auc_rows,
    best_threshold,
    bootstrap_auc,
    expected_calibration_error,
    f1_rows,
    fit_temperature,
    paired_auc_difference,
    paired_f1_difference,
    resample,
)
from ct25d.labels import RSNA_LABELS
from ct25d.report.compare import (
    INTERNAL,
    claim_verdict,
    comparison,
    inner_choices,
    load_runs,
    write_comparison,
)

rng = np.random.default_rng(0)


def test_auc_and_f1_match_scikit_learn_with_ties() -> None:
    y = rng.integers(0, 2, size=(20, 50))
    p = np.round(rng.random((20, 50)), 1)  # many ties
    expected = [roc_auc_score(a, b) for a, b in zip(y, p, strict=True)]
    np.testing.assert_allclose(auc_rows(y, p), expected)
    pred = p > 0.5
    np.testing.assert_allclose(f1_rows(y, pred), [f1_score(a, b) for a, b in zip(y, pred, strict=True)])
    assert np.isnan(auc_rows(np.ones(5), np.arange(5))[0])  # one class: undefined, not 0.5
    assert np.isnan(f1_rows(np.zeros(5), np.ones(5))[0])  # no positive: F1 undefined, not 0


def test_bootstrap_is_reproducible_for_a_seed_and_brackets_the_value() -> None:
    y = rng.integers(0, 2, 80).astype(float)
    p = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    a = bootstrap_auc(y, p, resample(80, 500, seed=4))
    b = bootstrap_auc(y, p, resample(80, 500, seed=4))
    c = bootstrap_auc(y, p, resample(80, 500, seed=5))
    assert a == b and a != c
    assert a.low < a.value < a.high and a.value == pytest.approx(roc_auc_score(y, p))
    perfect = bootstrap_auc(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.2, 0.8, 0.9]), resample(4, 200, 0))
    assert (perfect.value, perfect.high) == (1.0, 1.0)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    y = rng.integers(0, 2, 60).astype(float)
    p = rng.random(60)
    same = paired_auc_difference(y, p, p, resample(60, 300, 1))
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    better = paired_auc_difference(y, y * 0.5 + p * 0.5, p, resample(60, 300, 1))
    assert better.excludes_zero() and better.low > 0
    same_f1 = paired_f1_difference(y, p > 0.5, p > 0.5, resample(60, 300, 1))
    assert (same_f1.value, same_f1.low, same_f1.high) == (0.0, 0.0, 0.0)
    assert paired_f1_difference(y, y > 0.5, p > 0.5, resample(60, 300, 1)).low > 0  # perfect calls win


def test_temperature_recovers_overconfidence_and_keeps_the_auc() -> None:
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(float)
    overconfident = 1 / (1 + np.exp(-3 * z))
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    calibrated = apply_temperature(overconfident, t)
    assert roc_auc_score(y, calibrated) == pytest.approx(roc_auc_score(y, overconfident))
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, overconfident) / 3


def test_threshold_and_ece_hand_cases() -> None:
    assert best_threshold(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.3, 0.35, 0.9])) == pytest.approx(0.325)
    assert best_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.5
    p = np.full(10, 0.8)
    assert expected_calibration_error(np.array([1.0] * 8 + [0.0] * 2), p) == pytest.approx(0.0)
    assert expected_calibration_error(np.zeros(10), p) == pytest.approx(0.8)


def fake_run(folder: Path, fold: int, method: str, quality: float, seed: int) -> Path:
    """A run folder as every trainer writes it: inner, outer (validation) and external studies."""
    r = np.random.default_rng(seed)
    rows = []
    for split, n, dataset in (
        ("train", 10, "rsna"),
        ("inner", 12, "rsna"),
        ("validation", 12, "rsna"),
        ("external", 15, "cq500"),
    ):
        for i in range(n):
            study = f"{dataset}-{split if split != 'validation' else f'f{fold}'}-{i}"
            if split == "external":
                study = f"cq-{i}"
            rows.append({"dataset": dataset, "study_id": study, "split": split, "truth": i % 2})
    keys = pd.DataFrame(rows)
    truth = np.repeat(keys[["truth"]].to_numpy(float), len(RSNA_LABELS), axis=1)
    prob = np.clip(quality * truth + (1 - quality) * r.random(truth.shape), 0.01, 0.99)
    studies = prediction_frame(keys.drop(columns="truth"), prob, truth, RSNA_LABELS)
    folder.mkdir(parents=True)
    studies.to_parquet(folder / "predictions_studies.parquet")
    prediction_frame(
        pd.DataFrame({"dataset": [], "study_id": [], "z": [], "slice_id": []}),
        np.zeros((0, 6)),
        np.zeros((0, 6)),
        RSNA_LABELS,
    ).to_parquet(folder / "predictions_slices.parquet")
    key = f"validation/rsna/volume/{method}"
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "fold": fold,
                "results": {key: {}},
                "inputs": "volume",
                "parameters": 10,
                "seconds_per_epoch": 1.0,
            }
        )
    )
    return folder / "metrics.json"


def test_choices_never_see_the_outer_fold_or_external_predictions(tmp_path: Path) -> None:
    studies = pd.read_parquet(
        Path(fake_run(tmp_path / "r", 0, "m", 0.4, 1)).parent / "predictions_studies.parquet"
    )
    choices = inner_choices(studies, list(RSNA_LABELS))
    scored = studies["split"].isin(["validation", "external"]).to_numpy()
    for column in [f"prob_{n}" for n in RSNA_LABELS]:
        studies.loc[scored, column] = rng.random(scored.sum()).astype(np.float32)  # anything at all
    assert inner_choices(studies, list(RSNA_LABELS)) == choices
    studies.loc[studies["split"] == "inner", "prob_any"] = rng.random(12).astype(np.float32)
    assert inner_choices(studies, list(RSNA_LABELS))["any"] != choices["any"]  # the inner split does decide


def test_comparison_pools_outer_folds_and_averages_external_models(tmp_path: Path) -> None:
    good = [fake_run(tmp_path / f"good{f}", f, "good", 0.6, f) for f in (0, 1)]
    weak = [fake_run(tmp_path / f"weak{f}", f, "weak", 0.05, 10 + f) for f in (0, 1)]
    runs = load_runs([], good, weak)
    long, predictions = comparison(runs, list(RSNA_LABELS), "2.5D: Stage 2 good", replicates=200)
    internal = long[(long["set"] == INTERNAL)].set_index("approach")
    assert internal.loc["2.5D: Stage 2 good", "n"] == 24  # 12 outer-fold studies from each of 2 folds
    external = predictions["3D: weak"].query("set == 'cq500'")
    assert len(external) == 15 and external["study_id"].is_unique  # each external study once
    delta = internal.loc["3D: weak", "delta_auc"]
    assert delta.value < 0 and delta.excludes_zero()
    table = write_comparison([], good, tmp_path / "out", weak, reference="2.5D: Stage 2 good", replicates=200)
    assert {"volume AUC (OOF)", "volume AUC (cq500)", "ΔAUC vs ref (OOF)", "ΔF1 vs ref (OOF)"} <= set(
        table.columns
    )
    spread = table.set_index("approach").loc["3D: weak", "fold AUCs (cq500)"]
    assert len(spread.split(", ")) == 2  # each fold model alone, beside the averaged score
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "3D: weak on internal (OOF): ΔAUC" in text and "worse than 2.5D: Stage 2 good" in text
    for name in (
        "comparison.png",
        "reliability.png",
        "roc.png",
        "pr.png",
        "confusion.png",
        "comparison.csv",
        "comparison_long.csv",
        "findings.md",
        "readers.csv",
    ):
        assert (tmp_path / "out" / name).is_file()


def test_claims_are_tested_both_ways_on_every_set_by_config_name(tmp_path: Path) -> None:
    good = [fake_run(tmp_path / f"good{f}", f, "good", 0.6, f) for f in (0, 1)]
    weak = [fake_run(tmp_path / f"weak{f}", f, "weak", 0.05, 10 + f) for f in (0, 1)]
    claims = [
        {"claim": "good wins", "better": "good", "than": "weak", "metric": "auc"},
        {"claim": "weak wins", "better": "weak", "than": "good", "metric": "f1"},
    ]
    write_comparison([], good, tmp_path / "out", weak, replicates=200, claims=claims)
    table = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert set(table["set"]) == {INTERNAL, "cq500"}
    internal = table[table["set"] == INTERNAL].set_index("claim")
    assert internal.loc["good wins", "verdict"] == "supported"
    assert internal.loc["weak wins", "verdict"].startswith("contradicted")
    assert (
        internal.loc["good wins", "better"] == "2.5D: Stage 2 good" and internal.loc["good wins", "n"] == 24
    )
    with pytest.raises(ConfigError, match="'nope' names 0 approaches"):
        write_comparison(
            [], good, tmp_path / "o2", weak, replicates=200, claims=[{**claims[0], "than": "nope"}]
        )


@pytest.mark.parametrize(
    ("delta", "verdict"),
    [
        (Interval(0.1, 0.02, 0.2), "supported"),
        (Interval(-0.1, -0.2, -0.01), "contradicted: the other way round"),
        (Interval(0.01, -0.03, 0.04), "no difference beyond ±0.05"),
        (Interval(0.05, -0.1, 0.2), "undecided: interval 0.30 wide, contains 0"),
        (Interval(0.05, float("nan"), float("nan")), "undecided: too few studies for an interval"),
        (Interval(0.0, 0.0, 0.0), "undecided: identical on these studies, no interval"),
    ],
)
def test_claim_verdicts(delta: Interval, verdict: str) -> None:
    assert claim_verdict(delta) == verdict


def test_kappa_with_each_cq500_reader(tmp_path: Path) -> None:
    from sklearn.metrics import cohen_kappa_score

    from ct25d.dicom.headers import pseudonym
    from ct25d.report.compare import reader_kappas

    r1 = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    r2 = np.array([1, 0, 0, 0, 1, 0, 1, 1])
    reads = pd.DataFrame(
        {"name": [f"CQ500-CT-{n}" for n in range(8)], "R1:ICH": r1, "R2:ICH": r2, "R3:ICH": r1}
    )
    reads.to_csv(tmp_path / "reads.csv", index=False)
    ids = [pseudonym(f"CQ500CT{n} CQ500CT{n}", "salt", "st-") for n in range(8)]
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.6, 0.3, 0.1])
    frame = pd.DataFrame({"set": "cq500", "study_id": ids, "p_any": p, "t_any": 0.5})
    table = reader_kappas({"model": frame}, "cq500", tmp_path / "reads.csv", "salt").set_index("rater")
    call = (p > 0.5).astype(int)
    assert table.loc["model", "κ vs R1"] == pytest.approx(cohen_kappa_score(r1, call))
    assert table.loc["model", "κ vs R2"] == pytest.approx(cohen_kappa_score(r2, call))
    assert table.loc["reader R1", "κ vs R3"] == 1.0
    assert table.loc["reader R1", "κ vs R2"] == pytest.approx(cohen_kappa_score(r1, r2))


def test_cq500_findings_are_scored_on_their_own_labels() -> None:
    from ct25d.report.compare import FINDINGS, findings_table

    assert FINDINGS == {"ICH": "any", "IPH": "intraparenchymal", "IVH": "intraventricular",
                        "SDH": "subdural", "EDH": "epidural", "SAH": "subarachnoid"}  # fmt: skip
    n = 40
    frame = pd.DataFrame({"set": "cq500", "dataset": "cq500", "study_id": [f"s{i}" for i in range(n)]})
    for k, label in enumerate(FINDINGS.values()):
        frame[label] = (np.arange(n) % (k + 2) == 0).astype(float)
        frame[f"p_{label}"] = rng.random(n)
    frame["p_subdural"] = frame["subdural"] * 0.5 + 0.25  # only SDH is predicted perfectly
    table = findings_table({"m": frame}, replicates=100, seed=0).set_index("approach")
    assert table.loc["m", "SDH AUC"].value == 1.0
    assert table.loc["m", "SDH n+"] == int(frame["subdural"].sum())
    assert all(table.loc["m", f"{f} AUC"].value < 1.0 for f in FINDINGS if f != "SDH")
