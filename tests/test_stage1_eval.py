"""Stage 1 evaluation: the cosine-to-class-mean rule and volume = max over slices, on hand-made
embeddings whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from ct25d.evaluation.metrics import ClassMeans, cosine_margin, volume_max
from ct25d.evaluation.stage1 import EmbeddingMismatchError, evaluate_stage1
from ct25d.evaluation.tables import summarise
from ct25d.labels import RSNA_LABELS


def test_cosine_rule_ignores_magnitude() -> None:
    means = ClassMeans(n_labels=1, dim=2)
    means.add(np.array([[10.0, 0.0], [12.0, 0.0], [0.0, 1.0], [0.0, 1.2]]), np.array([[1], [1], [0], [0]]))
    positive, negative = means.means()
    np.testing.assert_allclose(positive, [[11.0, 0.0]])
    np.testing.assert_allclose(negative, [[0.0, 1.1]])
    # (1, 0.9) is nearer the negative mean in Euclidean distance but nearer the positive one in angle.
    margin = cosine_margin(np.array([[1.0, 0.9], [0.9, 1.0], [1.0, 1.0]]), positive, negative)
    assert list(margin[:, 0] > 0) == [True, False, False]  # a tie is negative
    assert abs(margin[2, 0]) < 1e-12


def test_unknown_labels_do_not_enter_the_means() -> None:
    means = ClassMeans(n_labels=2, dim=2)
    means.add(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1, np.nan], [0, np.nan]]))
    positive, negative = means.means()
    assert np.isnan(positive[1]).all() and np.isnan(negative[1]).all()
    assert means.counts.tolist() == [[1, 0], [1, 0]]


def test_volume_is_max_over_slices() -> None:
    out = volume_max(np.array(["b", "a", "a", "b", "c"]), np.array([[0.0], [0.2], [0.9], [0.1], [np.nan]]))
    assert list(out.index) == ["a", "b", "c"]
    np.testing.assert_allclose(out[0].to_numpy()[:2], [0.9, 0.1])
    assert np.isnan(out[0]["c"])


def fake_embeddings(root: Path, index: pd.DataFrame, emb: np.ndarray, logits: np.ndarray) -> Path:
    """An embedding store in `ct25d embed`'s layout, holding the given rows in index order."""
    rows = index.assign(shard="s0", row=np.arange(len(index)))
    rows.to_parquet(root / "rows.parquet")
    group = zarr.open_group(root / "s0.zarr", mode="w", zarr_format=3)
    group.attrs.update({"class_names": list(RSNA_LABELS),
                        "provenance": {"settings": {"model": {"task": "multilabel"}}}})  # fmt: skip
    group.create_array("embedding", data=emb.astype(np.float16), chunks=(3, emb.shape[1]))
    group.create_array("logits", data=logits.astype(np.float32), chunks=(3, logits.shape[1]))
    return root


def slices(study: str, dataset: str, role: str, fold: int, any_labels: list, vectors: list,
           inner_for: int = 1) -> list[dict]:  # fmt: skip
    return [
        {"dataset": dataset, "role": role, "study_id": study, "patient_id": study, "z": z, "store": "st",
         "fold": fold, "inner_for": inner_for if role == "train" else -1,
         **dict.fromkeys(RSNA_LABELS[:-1], 0 if y is not pd.NA else pd.NA), "any": y, "vec": v}
        for z, (y, v) in enumerate(zip(any_labels, vectors, strict=True))
    ]  # fmt: skip


def test_evaluate_head_and_cosine_at_slice_and_volume_level(tmp_path: Path) -> None:
    pos, neg = [10.0, 0.0], [0.0, 1.0]
    rows = (
        slices("t1", "rsna", "train", 1, [1, 0], [pos, neg])  # training: class means (10,0) / (0,1)
        + slices("t2", "rsna", "train", 1, [1, 0], [pos, neg])
        + slices("v1", "rsna", "train", 0, [0, 1, 0], [[0, 1], [1, 0.9], [0.1, 1]])  # validation
        + slices("v2", "rsna", "train", 0, [0, 0, 0], [[0, 1], [0, 2], [0.2, 1]])
        + slices("v3", "rsna", "train", 0, [0, 1, 0], [[0, 1], [0.1, 1], [0, 1]])  # cosine misses
        + slices("e1", "cq500", "external", -1, [pd.NA] * 2, [[0, 1], [3, 1]])
        + slices("e2", "cq500", "external", -1, [pd.NA] * 2, [[0, 1], [0, 1]])
    )
    index = pd.DataFrame(rows).astype({label: "Int8" for label in RSNA_LABELS})
    emb = np.array(index.pop("vec").tolist())
    # The head says "any" (logit +5) on exactly v1 slice 0 and v2 slice 1, and e2 slice 0.
    logits = np.full((len(index), 6), -5.0)
    for study, z in (("v1", 0), ("v2", 1), ("e2", 0)):
        logits[((index["study_id"] == study) & (index["z"] == z)).to_numpy(), 5] = 5.0
    studies = (
        index.groupby(["dataset", "role", "study_id", "patient_id", "fold", "inner_for"])[list(RSNA_LABELS)]
        .max()
        .reset_index()
    )
    studies.loc[studies["study_id"] == "e1", "any"] = 1
    studies.loc[studies["study_id"] == "e2", "any"] = 0
    store = fake_embeddings(tmp_path, index, emb, logits)

    table, means, predictions = evaluate_stage1(index, studies, store, fold=0)
    np.testing.assert_allclose(means["positive"][5], [10.0, 0.0])
    f1 = table[table["label"] == "any"].set_index(["split", "level", "method"])["f1"]
    # Slices: cosine finds v1/z1 (TP), misses v3/z1 (FN), no FP -> F1 = 2/3. Head: 0 TP, 2 FP -> 0.
    assert f1["validation", "slice", "cosine"] == pytest.approx(2 / 3)
    assert f1["validation", "slice", "head"] == 0.0
    # Volumes (max over slices): cosine v1 TP, v3 FN -> 2/3; head calls v1 (TP) and v2 (FP), v3 FN -> 1/2.
    assert f1["validation", "volume", "cosine"] == pytest.approx(2 / 3)
    assert f1["validation", "volume", "head"] == pytest.approx(1 / 2)
    # External studies: only study labels exist, so there is no slice level there.
    assert ("external", "slice", "cosine") not in f1.index
    assert f1["external", "volume", "cosine"] == 1.0  # e1 has (3, 1) -> positive; e2 negative
    assert f1["external", "volume", "head"] == 0.0  # head calls only e2, which is negative
    summary = summarise(table, fold=0)
    assert summary["results"]["validation/rsna/volume/cosine"]["f1_any"] == pytest.approx(2 / 3)
    # The prediction files the comparison scores: the same rules, study = max over its slices.
    study_frame, slice_frame = predictions["cosine"]
    assert set(study_frame["study_id"]) == {"v1", "v2", "v3", "e1", "e2"}  # never the training studies
    by_study = study_frame.set_index("study_id")
    assert by_study.loc["e1", "split"] == "external" and by_study.loc["v1", "split"] == "validation"
    assert (by_study.loc[["v1", "e1"], "prob_any"] > 0.5).all() and by_study.loc["v3", "prob_any"] < 0.5
    maxima = slice_frame.groupby("study_id")["prob_any"].max()
    np.testing.assert_allclose(by_study["prob_any"].sort_index(), maxima.sort_index())
    assert by_study.loc["e1", "any"] == 1 and by_study.loc["e2", "any"] == 0  # study labels, not slices

    with pytest.raises(EmbeddingMismatchError):
        evaluate_stage1(index.assign(z=index["z"] + 100), studies, store, fold=0)


def test_a_label_the_method_cannot_score_reports_nan() -> None:
    from ct25d.evaluation.metrics import binary_report

    truth = np.array([0.0, 1.0, 0.0, np.nan])
    report = binary_report(truth, np.array([False, False, False, False]), np.array([np.nan] * 4))
    assert report["n"] == 3 and report["n_pos"] == 1
    assert np.isnan(report["f1"]) and np.isnan(report["auc"])
