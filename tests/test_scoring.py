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
    Paired,
    auc_rows,
    best_threshold,
    bootstrap_auc,
    bootstrap_weights,
    expected_calibration_error,
    expit,
    fit_temperature,
    holm,
    logit,
    paired_auc_difference,
    paired_f1_difference,
    weighted_auc,
    weighted_f1,
)
from ct25d.labels import RSNA_LABELS
from ct25d.report.compare import (
    INTERNAL,
    Resampler,
    claim_verdict,
    comparison,
    inner_choices,
    load_runs,
    write_comparison,
)

rng = np.random.default_rng(0)


def test_auc_and_f1_match_scikit_learn_with_ties_and_weights() -> None:
    y = rng.integers(0, 2, size=(20, 50))
    p = np.round(rng.random((20, 50)), 1)  # many ties
    expected = [roc_auc_score(a, b) for a, b in zip(y, p, strict=True)]
    np.testing.assert_allclose(auc_rows(y, p), expected)
    assert np.isnan(auc_rows(np.ones(5), np.arange(5))[0])  # one class: undefined, not 0.5
    # A replicate's weights count each study that often: the same as scoring the repeated rows.
    w = rng.integers(0, 3, size=(20, 50))
    for row in range(20):
        ys, ps, ws = np.repeat(y[row], w[row]), np.repeat(p[row], w[row]), w[row][None]
        assert weighted_auc(y[row], p[row], ws)[0] == pytest.approx(roc_auc_score(ys, ps))
        assert weighted_f1(y[row], p[row] > 0.5, ws)[0] == pytest.approx(f1_score(ys, ps > 0.5))
    assert np.isnan(weighted_f1(np.zeros(5), np.ones(5), np.ones((1, 5)))[0])  # no positive: undefined, not 0


def test_the_bootstrap_draws_patients_within_classes() -> None:
    """Every replicate keeps both classes; a patient's studies are drawn together, as often as the patient."""
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0.0])  # one positive study: an unstratified draw often loses it
    patients = np.array(["a", "a", "b", "b", "c", "d", "e", "f", "g", "h"])
    w = bootstrap_weights(y, 500, 0, patients)
    assert w.shape == (500, 10) and (w[:, 0] > 0).all()  # the positive patient is in every replicate
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 2], w[:, 3])
    assert (w[:, 2:].sum(1) > 0).all() and w.sum(1).min() > 0
    np.testing.assert_array_equal(w, bootstrap_weights(y, 500, 0, patients))  # seeded


def test_bootstrap_is_reproducible_for_a_seed_and_brackets_the_value() -> None:
    y = rng.integers(0, 2, 80).astype(float)
    p = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    a = bootstrap_auc(y, p, bootstrap_weights(y, 500, seed=4))
    b = bootstrap_auc(y, p, bootstrap_weights(y, 500, seed=4))
    c = bootstrap_auc(y, p, bootstrap_weights(y, 500, seed=5))
    assert a == b and a != c
    assert a.low < a.value < a.high and a.value == pytest.approx(roc_auc_score(y, p))
    four = np.array([0, 0, 1, 1.0])
    perfect = bootstrap_auc(four, np.array([0.1, 0.2, 0.8, 0.9]), bootstrap_weights(four, 200, 0))
    assert (perfect.value, perfect.high) == (1.0, 1.0)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    y = rng.integers(0, 2, 60).astype(float)
    p = rng.random(60)
    same = paired_auc_difference(y, p, p, bootstrap_weights(y, 300, 1)).interval()
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    better = paired_auc_difference(y, y * 0.5 + p * 0.5, p, bootstrap_weights(y, 300, 1)).interval()
    assert better.excludes_zero() and better.low > 0
    same_f1 = paired_f1_difference(y, p > 0.5, p > 0.5, bootstrap_weights(y, 300, 1)).interval()
    assert (same_f1.value, same_f1.low, same_f1.high) == (0.0, 0.0, 0.0)
    assert (
        paired_f1_difference(y, y > 0.5, p > 0.5, bootstrap_weights(y, 300, 1)).interval().low > 0
    )  # perfect calls win


def test_bootstrap_p_counts_the_replicates_on_the_nulls_side() -> None:
    delta = Paired(0.02, np.array([-0.03, -0.01, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06]))
    assert delta.p_above(0.0) == pytest.approx(4 / 10)  # H0: D <= 0 holds for 3 replicates (0 included)
    assert delta.p_above(-0.05) == pytest.approx(1 / 10)  # none at or below -0.05: 1 / (R + 1), never 0
    assert delta.p_below(0.05) == pytest.approx(3 / 10)
    assert delta.interval() == Interval(0.02, *np.percentile(delta.replicates, [2.5, 97.5]))
    assert np.isnan(Paired(0.1, np.array([0.1, np.nan])).p_above(0.0))  # an undefined replicate: no p


def test_holm_matches_the_hand_computed_step_down() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    adjusted, error = holm(p, 1000)
    # sorted 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1, but never below the 0.06 before it)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(error[[1, 2]], 2 * np.sqrt(0.03 * 0.97 / 1000))  # both set by p = 0.03
    np.testing.assert_allclose(error[3], 4 * np.sqrt(0.005 * 0.995 / 1000))
    assert holm(np.array([0.4, 0.9]), 100)[0].tolist() == [0.8, 0.9]
    assert holm(np.array([0.7, 0.9]), 100)[0].tolist() == [1.0, 1.0]  # capped at 1
    assert len(holm(np.zeros(0), 100)[0]) == 0


def test_paired_bootstrap_p_keeps_its_level_and_finds_a_real_gain() -> None:
    """Two models of the same quality on 300 clustered cohorts: the one-sided superiority p falls at or
    below 0.05 in about 5% of them; a model with a real gain is found in most."""
    r = np.random.default_rng(7)
    below, found = 0, 0
    for draw in range(300):
        y, _, patients = _clustered_cohort(r, 150)
        a, b, sharper = (y + r.normal(0, sd, len(y)) for sd in (1.5, 1.5, 0.8))  # AUC ~0.68, ~0.68, ~0.82
        weights = bootstrap_weights(y, 400, draw, patients)
        below += paired_auc_difference(y, a, b, weights).p_above(0.0) <= 0.05
        found += paired_auc_difference(y, sharper, b, weights).p_above(0.0) <= 0.05
    assert 0.02 <= below / 300 <= 0.09, below
    assert found / 300 > 0.8, found


def test_temperature_recovers_overconfidence_and_keeps_the_auc() -> None:
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(float)
    overconfident = 3 * z
    t = fit_temperature(y, overconfident)
    assert t.value == pytest.approx(3.0, rel=0.1) and t.flag == ""
    calibrated = expit(overconfident / t.value)
    assert roc_auc_score(y, calibrated) == pytest.approx(roc_auc_score(y, overconfident))
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, expit(overconfident)) / 3


def test_temperature_falls_back_to_one_where_it_cannot_be_fitted() -> None:
    z = np.array([-3.0, -2, -1, 1, 2, 3, 4, 5, 6, 7])
    y = (z > 0).astype(float)
    separable = fit_temperature(y, z, min_positives=2)
    assert (separable.value, separable.flag) == (1.0, "T=1: separable")
    assert fit_temperature(y, z).flag == "T=1: 7 positives, 3 negatives"  # min_positives 5 by default
    uninformative = np.repeat(np.linspace(-3, 3, 50), 2)  # each score once positive, once negative
    flat = fit_temperature(np.tile([0.0, 1.0], 50), uninformative)  # no signal: T runs to the top
    assert flat.value == pytest.approx(10.0, rel=1e-3) and flat.flag.startswith("T at bound")


def test_logits_keep_every_float32_probability_apart() -> None:
    p = np.array([0.5, 0.99, 0.9999, 1 - 6e-8, 1.0], dtype=np.float32)
    z = logit(p)
    assert np.all(np.diff(z) > 0) and np.isfinite(z).all()


def test_threshold_search_matches_the_exhaustive_one() -> None:
    for _ in range(20):
        y = rng.integers(0, 2, 300).astype(float)
        p = np.round(rng.random(300), 2)  # ties
        values = np.unique(p)
        candidates = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]])
        pred = p[None, :] > candidates[:, None]
        f1 = 2 * (pred & (y == 1)).sum(1) / (pred.sum(1) + y.sum())
        assert best_threshold(y, p) == pytest.approx(candidates[int(np.argmax(f1))])


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
    good = [("b:good", fake_run(tmp_path / f"good{f}", f, "good", 0.6, f)) for f in (0, 1)]
    weak = [fake_run(tmp_path / f"weak{f}", f, "weak", 0.05, 10 + f) for f in (0, 1)]
    runs = load_runs([], good, weak)
    long, predictions = comparison(runs, list(RSNA_LABELS), "2.5D: Stage 2 good", Resampler(200, 0))
    internal = long[(long["set"] == INTERNAL)].set_index("approach")
    assert internal.loc["2.5D: Stage 2 good", "n"] == 24  # 12 outer-fold studies from each of 2 folds
    external = predictions["3D: weak"].query("set == 'cq500'")
    assert len(external) == 15 and external["study_id"].is_unique  # each external study once
    delta = internal.loc["3D: weak", "delta_auc"]
    assert delta.value < 0 and delta.excludes_zero()
    table = write_comparison([], good, tmp_path / "out", weak, reference="good", replicates=200)
    assert {"volume AUC (OOF)", "volume AUC (cq500)", "ΔAUC vs ref (OOF)", "ΔF1 vs ref (OOF)"} <= set(
        table.columns
    )
    spread = table.set_index("approach").loc["3D: weak", "fold AUCs (cq500)"]
    assert len(spread.split(", ")) == 2  # each fold model alone, beside the averaged score
    f1s = [float(f) for f in table.set_index("approach").loc["3D: weak", "fold F1s (cq500)"].split(", ")]
    for run, f1 in zip(runs[2:], f1s, strict=True):  # each fold model at its own inner-split threshold
        cq500 = run.studies.query("split == 'external' and dataset == 'cq500'")
        calls = logit(cq500["prob_any"].to_numpy()) > inner_choices(run.studies, ["any"])["any"].threshold
        assert f1 == pytest.approx(f1_score(cq500["any"], calls), abs=5e-4)
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


def test_operating_points_use_each_folds_inner_thresholds(tmp_path: Path) -> None:
    """Sensitivity at 90% / 95% specificity: each fold's threshold keeps that share of its inner
    negatives uncalled and is applied unchanged to its outer fold; the table shows it beside the F1
    of calling every study positive, the Brier score with its interval and the macro AUC's labels."""
    from ct25d.evaluation.scoring import threshold_at_specificity

    paths = [fake_run(tmp_path / f"m{f}", f, "m", 0.3, f) for f in (0, 1)]
    runs = load_runs([], [], paths)
    long, _ = comparison(runs, list(RSNA_LABELS), None, Resampler(200, 0))
    row = long[long["set"] == INTERNAL].iloc[0]
    for target, k in ((0.9, 90), (0.95, 95)):
        truth, calls = [], []
        for run in runs:
            inner = run.studies[run.studies["split"] == "inner"]
            threshold = threshold_at_specificity(inner["any"], logit(inner["prob_any"].to_numpy()), target)
            outer = run.studies[run.studies["split"] == "validation"]
            truth.append(outer["any"].to_numpy())
            calls.append(logit(outer["prob_any"].to_numpy()) > threshold)
        y, called = np.concatenate(truth), np.concatenate(calls)
        assert row[f"sens_at_{k}"].value == pytest.approx(called[y == 1].mean())
        assert row[f"spec_at_{k}"] == pytest.approx(1 - called[y == 0].mean())
    assert row["f1_all_positive"] == pytest.approx(f1_score(y, np.ones_like(y)))  # pooled truth, as above
    assert row["macro_labels"] == "6 of 6"
    table = write_comparison([], [], tmp_path / "out", paths, replicates=200)
    text = pd.read_csv(tmp_path / "out" / "comparison.csv").iloc[0]
    for where in ("OOF", "cq500"):
        for column in ("F1 all positive", "sens @ 90% spec", "sens @ 95% spec", "spec reached @ 90 / 95",
                       "macro AUC", "macro labels", "volume F1", "volume AUC"):  # fmt: skip
            assert f"{column} ({where})" in table.columns
    assert text["F1 all positive (OOF)"] == pytest.approx(0.667)
    assert "[" in text["Brier (OOF)"] and "[" in text["sens @ 90% spec (OOF)"]
    assert "treat each fold's threshold as fixed" in (tmp_path / "out" / "comparison.md").read_text()
    findings = pd.read_csv(tmp_path / "out" / "findings.csv", dtype=str)
    assert findings.set_index("set")["ICH n+"].to_dict() == {"cq500": "7", INTERNAL: "12"}  # not 12.0


def test_claims_are_decided_on_their_primary_set_with_holm(tmp_path: Path) -> None:
    good = [("b:good", fake_run(tmp_path / f"good{f}", f, "good", 0.6, f)) for f in (0, 1)]
    weak = [fake_run(tmp_path / f"weak{f}", f, "weak", 0.05, 10 + f) for f in (0, 1)]
    claims = [
        {"claim": "good wins", "better": "good", "than": "weak"},  # the old fields alone: superiority
        {"claim": "weak wins", "better": "weak", "than": "good", "metric": "f1"},
        {
            "claim": "weak no worse",
            "better": "weak",
            "than": "good",
            "kind": "non_inferiority",
            "margin": 0.05,
        },
        {"claim": "good is good", "better": "good", "than": "b:good", "kind": "equivalence", "margin": 0.01},
        {"claim": "good wins outside", "better": "good", "than": "weak", "primary": "cq500"},
        {"claim": "nowhere", "better": "good", "than": "weak", "primary": "elsewhere"},
    ]
    write_comparison([], good, tmp_path / "out", weak, replicates=1000, claims=claims)
    table = pd.read_csv(tmp_path / "out" / "claims.csv", keep_default_na=False)
    primary = table[table["role"] == "primary"].set_index("claim")
    assert primary["set"].to_dict() == {
        **dict.fromkeys(["good wins", "weak wins", "weak no worse", "good is good"], INTERNAL),
        "good wins outside": "cq500",
        "nowhere": "elsewhere",
    }
    assert primary.loc["good wins", "kind"] == "superiority" and primary.loc["good wins", "H1"] == "D > 0"
    assert primary.loc["good wins", "better"] == "2.5D: Stage 2 good" and primary.loc["good wins", "n"] == 24
    # Five tests in the family ("nowhere" has none): the smallest p (1 / 1001) is multiplied by 5,
    # far enough from 0.05 for its Monte Carlo error (5 sqrt(p (1 - p) / 1000) = 0.005).
    assert float(primary.loc["good wins", "p"]) == pytest.approx(1 / 1001, rel=1e-3)
    assert float(primary.loc["good wins", "p (Holm)"]) == pytest.approx(5 / 1001, rel=2e-3)
    assert primary.loc["good wins", "verdict"] == "supported"
    assert primary.loc["weak wins", "verdict"] == "not supported"
    assert primary.loc["weak no worse", "verdict"] == "not supported"
    # Identical scores: every replicate's difference is 0, inside any margin.
    assert primary.loc["good is good", "difference"] == "0.000 [0.000, 0.000]"
    assert primary.loc["good is good", "verdict"] == "supported"
    assert primary.loc["nowhere", "verdict"].startswith("undecided")
    assert primary.loc["nowhere", "p (Holm)"] == "n/a"
    holm_p = primary["p (Holm)"].replace("n/a", "nan").astype(float)
    assert (holm_p.dropna() >= primary["p"].replace("n/a", "nan").astype(float).dropna()).all()
    exploratory = table[table["role"] == "exploratory"]
    assert set(exploratory["set"]) == {INTERNAL, "cq500"}  # each claim's other set
    assert (exploratory["p (Holm)"] == "n/a").all() and exploratory["verdict"].str.startswith(
        "exploratory"
    ).all()
    text = (tmp_path / "out" / "claims.md").read_text()
    assert "## Primary tests" in text and "## Exploratory" in text
    assert (
        "1000 replicates" in text and "5 primary tests" in text and "0.0069" in text
    )  # sqrt(.05 .95 / 1000)
    with pytest.raises(ConfigError, match="'nope' names 0 approaches"):
        write_comparison(
            [], good, tmp_path / "o2", weak, replicates=200, claims=[{**claims[0], "than": "nope"}]
        )
    with pytest.raises(ConfigError, match="kind equivalence needs margin > 0"):
        write_comparison([], good, tmp_path / "o3", weak, replicates=200,
                         claims=[{**claims[0], "kind": "equivalence"}])  # fmt: skip


def test_a_study_in_two_outer_folds_stops_the_comparison(tmp_path: Path) -> None:
    paths = [fake_run(tmp_path / f"m{f}", f, "m", 0.5, f) for f in (0, 1)]
    file = paths[1].parent / "predictions_studies.parquet"
    studies = pd.read_parquet(file)
    studies["study_id"] = studies["study_id"].str.replace("-f1-", "-f0-")  # fold 1 scores fold 0's studies
    studies.to_parquet(file)
    with pytest.raises(
        ValueError, match=r"3D: m: 24 rows for 12 studies in two outer folds .*folds \[0, 1\]"
    ):
        comparison(load_runs([], [], paths), list(RSNA_LABELS), None, Resampler(20, 0))


@pytest.mark.parametrize(
    ("args", "verdict"),
    [
        (("primary", 0.001, 0.004, 0.001), "supported"),
        (("primary", 0.03, 0.09, 0.01), "not supported"),
        (
            ("primary", 0.02, 0.045, 0.003),
            "supported (borderline: adjusted p within 2 Monte Carlo SE (0.003) of 0.05)",
        ),
        (
            ("primary", 0.02, 0.055, 0.003),
            "not supported (borderline: adjusted p within 2 Monte Carlo SE (0.003) of 0.05)",
        ),
        (("primary", float("nan"), float("nan"), float("nan")), "undecided: no test (see the difference)"),
        (("exploratory", 0.01, float("nan"), float("nan")), "exploratory: unadjusted p <= 0.05"),
        (("exploratory", 0.2, float("nan"), float("nan")), "exploratory: unadjusted p > 0.05"),
    ],
)
def test_claim_verdicts(args: tuple, verdict: str) -> None:
    assert claim_verdict(*args, 0.05) == verdict


def test_two_backbones_make_two_stage2_approaches_and_one_name_stops(tmp_path: Path) -> None:
    """The same Stage-2 model on two backbones is two approaches, each named and resolvable by its
    backbone; runs that share a name (as they did before) stop the comparison instead of being merged."""
    runs = {b: [(f"{b}:lstm", fake_run(tmp_path / f"{b}{f}", f, "lstm", q, f + 5 * len(b))) for f in (0, 1)]
            for b, q in (("r10", 0.6), ("mnv3", 0.3))}  # fmt: skip
    claims = [{"claim": "backbones", "better": "r10:lstm", "than": "mnv3:lstm"}]
    write_comparison([], runs["r10"] + runs["mnv3"], tmp_path / "out", replicates=50, claims=claims,
                     reference="mnv3:lstm")  # fmt: skip
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert sorted(table["approach"]) == ["2.5D mnv3: Stage 2 lstm", "2.5D r10: Stage 2 lstm"]
    assert table.set_index("approach")["ΔAUC vs ref (OOF)"].notna().tolist() == [True, False]
    tested = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert (
        tested.loc[0, "better"] == "2.5D r10: Stage 2 lstm"
        and tested.loc[0, "than"] == "2.5D mnv3: Stage 2 lstm"
    )
    with pytest.raises(ConfigError, match="'lstm' names 2 approaches"):
        write_comparison([], runs["r10"] + runs["mnv3"], tmp_path / "o2", replicates=50,
                         claims=[{**claims[0], "than": "lstm"}])  # fmt: skip
    merged = [("lstm", path) for _, path in runs["r10"] + runs["mnv3"]]
    with pytest.raises(
        ValueError,
        match=r"2.5D: Stage 2 lstm: 108 rows for 54 studies scored twice by one fold .* one row per",
    ):
        write_comparison([], merged, tmp_path / "o3", replicates=50)


def test_kappa_with_each_cq500_reader_on_the_same_studies(tmp_path: Path) -> None:
    """Readers and approaches are compared on the studies every approach scored (reads.csv may hold
    more), each kappa with an interval from one bootstrap shared by all raters."""
    from sklearn.metrics import cohen_kappa_score

    from ct25d.dicom.headers import pseudonym
    from ct25d.report.compare import reader_kappas

    r1 = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0])
    r2 = np.array([1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1])
    unscored = np.array([0, 1, 1, 0])  # four more studies no approach scored: R1 and R2 disagree on all
    reads = pd.DataFrame(
        {
            "name": [f"CQ500-CT-{n}" for n in range(16)],
            "R1:ICH": np.r_[r1, unscored],
            "R2:ICH": np.r_[r2, 1 - unscored],
            "R3:ICH": np.r_[r1, unscored],
        }
    )
    reads.to_csv(tmp_path / "reads.csv", index=False)
    ids = [pseudonym(f"CQ500CT{n} CQ500CT{n}", "salt", "st-") for n in range(12)]
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.6, 0.3, 0.1, 0.8, 0.4, 0.2, 0.9])
    frame = pd.DataFrame({"set": "cq500", "study_id": ids, "s_any": logit(p), "t_any": 0.0})
    table = reader_kappas({"model": frame}, "cq500", tmp_path / "reads.csv", "salt", Resampler(300, 0))
    table = table.set_index("rater")
    call = (p > 0.5).astype(int)
    assert (table["studies"] == 12).all()  # the readers too: not the 16 rows of reads.csv
    for rater, reader, expected in (("model", "R1", cohen_kappa_score(r1, call)),
                                    ("model", "R2", cohen_kappa_score(r2, call)),
                                    ("reader R1", "R2", cohen_kappa_score(r1, r2))):  # fmt: skip
        kappa = table.loc[rater, f"κ vs {reader}"]
        assert kappa.value == pytest.approx(expected) and kappa.low < kappa.value < kappa.high
    assert table.loc["reader R1", "κ vs R3"] == Interval(1.0, 1.0, 1.0)


def test_weighted_kappa_brier_and_sensitivity_count_each_study_as_often_as_its_weight() -> None:
    from sklearn.metrics import brier_score_loss, cohen_kappa_score, recall_score

    from ct25d.evaluation.scoring import weighted_brier, weighted_kappa, weighted_sensitivity

    for _ in range(20):
        a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
        p = rng.random(40)
        w = rng.integers(0, 3, 40)
        ra, rb, rp = np.repeat(a, w), np.repeat(b, w), np.repeat(p, w)
        assert weighted_kappa(a, b, w[None])[0] == pytest.approx(cohen_kappa_score(ra, rb))
        assert weighted_brier(a, p, w[None])[0] == pytest.approx(brier_score_loss(ra, rp))
        assert weighted_sensitivity(a, b, w[None])[0] == pytest.approx(recall_score(ra, rb))
        assert weighted_sensitivity(1 - a, b == 0, w[None])[0] == pytest.approx(
            recall_score(ra, rb, pos_label=0)
        )
    assert np.isnan(weighted_kappa(np.ones(4), np.ones(4), np.ones((1, 4)))[0])  # chance agreement is 1


def test_cq500_findings_are_scored_on_their_own_labels_with_integer_counts() -> None:
    from ct25d.report.compare import FINDINGS, findings_table, label_scores

    assert FINDINGS == {"ICH": "any", "IPH": "intraparenchymal", "IVH": "intraventricular",
                        "SDH": "subdural", "EDH": "epidural", "SAH": "subarachnoid"}  # fmt: skip
    n = 40
    frame = pd.DataFrame({"set": "cq500", "dataset": "cq500", "study_id": [f"s{i}" for i in range(n)]})
    for k, label in enumerate(FINDINGS.values()):
        frame[label] = (np.arange(n) % (k + 2) == 0).astype(float)
        frame[f"s_{label}"] = rng.random(n)
    frame["epidural"] = (np.arange(n) < 3).astype(float)  # 3 positives: too few for an AUC
    frame["s_subdural"] = frame["subdural"] * 0.5 + 0.25  # only SDH is predicted perfectly
    long = pd.DataFrame([{"approach": "m", "set": "cq500", **label_scores(frame, list(FINDINGS.values()),
                                                                          Resampler(100, 0))}])  # fmt: skip
    table = findings_table(long).set_index("approach")
    assert table.loc["m", "SDH AUC"].value == 1.0
    assert table.loc["m", "SDH n+"] == int(frame["subdural"].sum())
    assert all(table.loc["m", f"{f} AUC"].value < 1.0 for f in FINDINGS if f not in ("SDH", "EDH"))
    assert table.loc["m", "EDH AUC"].note == "too few positives (n+ 3, n 40)"
    assert table["EDH n+"].dtype == "Int64" and table.map(str).loc["m", "EDH n+"] == "3"


def test_macro_auc_averages_a_fixed_label_set_with_an_interval() -> None:
    """The macro AUC of a set averages the configured labels that have enough positives there, names
    them, and its interval comes from replicates in which every one of them keeps both classes."""
    from ct25d.report.compare import label_scores

    n = 300
    labels = ["a", "b", "rare", "absent"]
    frame = pd.DataFrame({"dataset": "x", "study_id": [f"s{i}" for i in range(n)]})
    frame["a"] = (rng.random(n) < 0.3).astype(float)
    frame["b"] = (rng.random(n) < 0.1).astype(float)
    frame["rare"] = (np.arange(n) < 6).astype(float)  # 6 positives: enters with min_positives 5 ...
    for name in ("a", "b", "rare"):
        frame[f"s_{name}"] = frame[name] + rng.normal(0, 1, n)
    scores = label_scores(frame, labels, Resampler(400, 0))
    expected = np.mean([roc_auc_score(frame[x], frame[f"s_{x}"]) for x in ("a", "b", "rare")])
    macro = scores["macro_auc"]
    assert macro.value == pytest.approx(expected) and macro.low < macro.value < macro.high
    assert scores["macro_labels"] == "3 of 4; not absent (not scored)"
    fewer = label_scores(frame, labels, Resampler(400, 0), min_positives=7)  # ... and not with 7
    assert fewer["macro_labels"] == "2 of 4; not rare (n+ 6), absent (not scored)"
    assert fewer["macro_auc"].value == pytest.approx(
        np.mean([roc_auc_score(frame[x], frame[f"s_{x}"]) for x in ("a", "b")])
    )
    assert fewer["auc_rare"].note.startswith("too few positives") and fewer["n_pos_rare"] == 6


def test_the_pattern_bootstrap_keeps_every_labels_classes_in_every_replicate() -> None:
    y = np.zeros((60, 3))
    y[:20, 0] = 1
    y[:2, 1] = 1  # one positive patient: lost in a third of the replicates stratified by label 0 alone
    y[40:, 2] = np.nan  # unknown for a third of the studies
    y[30:40, 2] = 1
    patients = np.repeat(np.arange(30), 2)
    w = bootstrap_weights(y, 500, 0, patients)
    for k in range(3):
        known = ~np.isnan(y[:, k])
        assert ((w[:, known] * y[known, k]).sum(1) > 0).all() and (
            (w[:, known] * (1 - y[known, k])).sum(1) > 0
        ).all()
    np.testing.assert_array_equal(w[:, ::2], w[:, 1::2])  # patients travel together
    one = y[:, 0]
    np.testing.assert_array_equal(
        bootstrap_weights(one, 50, 3, patients), bootstrap_weights(one[:, None], 50, 3, patients)
    )


def test_replicates_are_scored_in_blocks_without_changing_them() -> None:
    from ct25d.evaluation.scoring import BLOCK

    y = rng.integers(0, 2, 120).astype(float)
    y[::9] = np.nan  # unknown labels count for neither class
    score = np.round(rng.random(120), 1)
    w = bootstrap_weights(np.nan_to_num(y), 2 * BLOCK + 7, 0)
    known = ~np.isnan(y)
    one_by_one = [weighted_auc(y[known], score[known], row[known][None])[0] for row in w]
    np.testing.assert_allclose(weighted_auc(y, score, w), one_by_one)
    calls = score[known] > 0.5
    np.testing.assert_allclose(
        weighted_f1(y[known], calls, w[:, known]),
        [weighted_f1(y[known], calls, row[known][None])[0] for row in w],
    )


def test_threshold_at_specificity_is_the_most_sensitive_that_keeps_it() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1.0])
    score = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 8.5, 9.5, 11.0])
    from ct25d.evaluation.scoring import threshold_at_specificity

    assert threshold_at_specificity(y, score, 0.9) == pytest.approx(9.25)  # 9 of 10 negatives at or below
    assert threshold_at_specificity(y, score, 0.95) == pytest.approx(10.5)  # 19/20 needs all 10
    assert np.isnan(threshold_at_specificity(np.ones(3), np.arange(3.0), 0.9))
    for _ in range(20):
        y = rng.integers(0, 2, 200).astype(float)
        score = np.round(rng.normal(y, 1), 1)  # ties
        for target in (0.9, 0.95):
            t = threshold_at_specificity(y, score, target)
            assert (score[y == 0] <= t).mean() >= target
            lower = np.unique(score[score <= t])  # any lower cut between scores loses the specificity
            if len(lower) > 1:
                assert (score[y == 0] <= lower[-2]).mean() < target


def test_resampler_draws_one_matrix_per_set_of_studies_and_shares_it() -> None:
    frame = pd.DataFrame({"dataset": "x", "study_id": [f"s{i}" for i in range(50)],
                          "any": (np.arange(50) % 3 == 0).astype(float)})  # fmt: skip
    resampler = Resampler(100, 0)
    first = resampler.weights(frame, ["any"])
    assert resampler.weights(frame.copy(), ["any"]) is first  # another approach, the same studies
    np.testing.assert_array_equal(first, bootstrap_weights(frame["any"].to_numpy(), 100, 0))
    other = resampler.weights(frame.iloc[1:], ["any"])
    assert other.shape == (100, 49)
    resampler.weights(frame.assign(any=1 - frame["any"]), ["any"])  # a third: the first is dropped
    assert resampler.weights(frame, ["any"]) is not first


def test_a_separable_inner_split_leaves_every_auc_and_difference_unchanged(tmp_path: Path) -> None:
    """Inner splits the models separate perfectly (where a free temperature runs to ~0 and turns
    every score above the gap into the same probability): T stays 1, flagged, and every AUC and ΔAUC
    is the one of the models' own scores."""
    paths = {}
    for name, quality in (("a", 0.3), ("b", 0.15)):
        paths[name] = [
            fake_run(tmp_path / f"{name}{f}", f, name, quality, 20 * f + len(name)) for f in (0, 1)
        ]
        for path in paths[name]:
            file = path.parent / "predictions_studies.parquet"
            studies = pd.read_parquet(file)
            inner = studies["split"] == "inner"
            gap = np.where(studies.loc[inner, "any"] == 1, 0.6, 0.0) + 0.4 * rng.random(inner.sum())
            for label in RSNA_LABELS:
                studies.loc[inner, f"prob_{label}"] = gap.astype(np.float32)
            studies.to_parquet(file)
    runs = load_runs([], [("b:a", path) for path in paths["a"]], paths["b"])
    long, _ = comparison(runs, list(RSNA_LABELS), "2.5D: Stage 2 a", Resampler(50, 0))
    raw = {}
    for run in runs:
        studies = run.studies[run.studies["split"].isin(["validation", "external"])]
        raw.setdefault(run.approach, []).append(studies.assign(z=logit(studies["prob_any"].to_numpy())))
    for approach, frames in raw.items():
        frame = pd.concat(frames)
        internal = frame[frame["split"] == "validation"]
        external = frame[frame["split"] == "external"].groupby("study_id")[["any", "z"]].mean()
        expected = {INTERNAL: roc_auc_score(internal["any"], internal["prob_any"]),
                    "cq500": roc_auc_score(external["any"], external["z"])}  # fmt: skip
        rows = long[long["approach"] == approach].set_index("set")
        for name, auc in expected.items():
            assert rows.loc[name, "auc"].value == pytest.approx(auc, abs=1e-12)
        assert "separable" in rows.iloc[0]["calibration"]
    a = long[long["approach"] == "2.5D: Stage 2 a"].set_index("set")["auc"]
    b = long[long["approach"] == "3D: b"].set_index("set")
    for name in (INTERNAL, "cq500"):
        assert b.loc[name, "delta_auc"].value == pytest.approx(
            b.loc[name, "auc"].value - a[name].value, abs=1e-12
        )


def _clustered_cohort(r: np.random.Generator, patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-5 studies per patient sharing a patient effect that raises the label's odds and lowers the
    score: studies of one patient are not independent, as RSNA's and CQ500's are not."""
    k = r.integers(1, 6, patients)
    u = np.repeat(r.normal(0, 1, patients), k)
    y = (r.random(len(u)) < 1 / (1 + np.exp(0.5 - 2.0 * u))).astype(float)
    return y, y - 0.7 * u + r.normal(0, 1, len(u)), np.repeat(np.arange(patients), k)


def test_patient_bootstrap_intervals_cover_the_true_auc() -> None:
    """Over 200 cohorts of 300 patients, the 95% interval covers the population AUC in 93-97% of
    draws; resampling studies as if independent does not (too narrow)."""
    y, score, _ = _clustered_cohort(np.random.default_rng(0), 300_000)
    truth = roc_auc_score(y, score)
    r = np.random.default_rng(1)
    covered = {"patients": 0, "studies": 0}
    for draw in range(200):
        y, score, patients = _clustered_cohort(r, 300)
        for name, clusters in (("patients", patients), ("studies", None)):
            interval = bootstrap_auc(y, score, bootstrap_weights(y, 1000, draw, clusters))
            covered[name] += interval.low <= truth <= interval.high
    assert 0.93 <= covered["patients"] / 200 <= 0.97, covered
    assert covered["studies"] / 200 < 0.93, covered


def test_reading_notes_name_too_wide_sets_and_arms_that_learned_nothing() -> None:
    """The table's header warns where intervals cannot rank (median width above the limit) and names
    an approach whose last-epoch training AUC stayed at chance; a decisive set and a trained arm get
    no note."""
    from ct25d.report.compare import reading_notes

    long = pd.DataFrame(
        [
            {
                "approach": "a",
                "set": "internal (OOF)",
                "n": 400,
                "auc": Interval(0.8, 0.75, 0.85),
                "train_auc_max": 0.95,
            },
            {
                "approach": "b",
                "set": "internal (OOF)",
                "n": 400,
                "auc": Interval(0.5, 0.44, 0.56),
                "train_auc_max": 0.52,
            },
            {"approach": "a", "set": "tiny", "n": 12, "auc": Interval(0.7, 0.3, 1.0), "train_auc_max": 0.95},
            {"approach": "b", "set": "tiny", "n": 12, "auc": Interval(0.4, 0.1, 0.8), "train_auc_max": 0.52},
        ]
    )
    text = "\n".join(reading_notes(long))
    assert "**tiny**: the median AUC interval is 0.70 wide" in text and "internal (OOF)**:" not in text
    assert "**b**: its training AUC" in text and "**a**:" not in text
    assert reading_notes(long.iloc[:1]) == []
