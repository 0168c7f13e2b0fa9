"""Stage 1 report: the thresholded head vs cosine similarity to training class-mean embeddings.

The seed found the head poorly calibrated (slice F1 0.460) while the embeddings were good: a slice
is called positive for a label when its embedding is closer (cosine) to the mean embedding of that
label's positive training slices than to the mean of its negative ones (slice F1 0.837, volume F1
0.893 with volume = max over slices). Both rules are scored on the fold's validation patients
(slice and volume level) and on every external dataset (volume level: their labels are per study).

Embeddings are read shard by shard, chunk by chunk, so memory stays flat in the dataset size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ct25d.datasets.slice_dataset import multiclass_targets, multilabel_targets
from ct25d.datasets.splits import study_splits
from ct25d.errors import Ct25dError
from ct25d.evaluation.metrics import ClassMeans, cosine_margin, volume_max
from ct25d.evaluation.predictions import prediction_frame
from ct25d.evaluation.tables import report_rows
from ct25d.training.embed import read_embeddings

METHODS = ("head", "cosine")


class EmbeddingMismatchError(Ct25dError):
    """The embedding store does not cover the index rows being evaluated."""


def _locate(index: pd.DataFrame, embeddings_dir: Path) -> pd.DataFrame:
    """The index with each row's `shard` and `row` in the embedding store."""
    rows = pd.read_parquet(
        embeddings_dir / "rows.parquet", columns=["store", "study_id", "z", "shard", "row"]
    )
    keys = ["store", "study_id", "z"]
    frame = (
        index.reset_index(drop=True).astype({"store": str}).merge(rows, on=keys, how="left", validate="1:1")
    )
    missing = frame["row"].isna()
    if missing.any():
        first = frame.loc[missing].iloc[0]
        raise EmbeddingMismatchError(
            f"{missing.sum()} index rows have no embedding in {embeddings_dir}, e.g. "
            f"study {first['study_id']} slice {first['z']}; rerun `ct25d embed`"
        )
    return frame.astype({"row": np.int64})


def _chunks(
    frame: pd.DataFrame, embeddings_dir: Path, shard: str
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """(rows, their embeddings) for `frame`'s rows in one shard, one zarr chunk at a time."""
    array = read_embeddings(embeddings_dir, shard)["embedding"]
    step = array.chunks[0]
    rows = frame[frame["shard"] == shard].sort_values("row")
    positions = rows["row"].to_numpy()
    for start in range(0, array.shape[0], step):
        lo, hi = np.searchsorted(positions, [start, start + step])
        if hi > lo:
            block = np.asarray(array[start : start + step], dtype=np.float32)
            yield rows.iloc[lo:hi], block[positions[lo:hi] - start]


def _targets(frame: pd.DataFrame, model: dict[str, Any], names: list[str]) -> np.ndarray:
    """(N, C) truth in {0, 1, NaN}: the labels, or the one-hot class of a multiclass model."""
    if model.get("task", "multilabel") == "multilabel":
        return multilabel_targets(frame, names)
    classes = multiclass_targets(frame, model["label_column"])
    return np.where(classes[:, None] >= 0, np.eye(len(names))[classes], np.nan).astype(np.float32)


def _head_scores(
    logits: np.ndarray, model: dict[str, Any], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(score, prediction) of the classifier head: sigmoid > threshold, or the argmax class."""
    if model.get("task", "multilabel") == "multilabel":
        prob = 1 / (1 + np.exp(-logits))
        return prob, prob > threshold
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    return prob, np.eye(logits.shape[1], dtype=bool)[prob.argmax(1)]


def evaluate_stage1(
    index: pd.DataFrame,
    studies: pd.DataFrame,
    embeddings_dir: str | os.PathLike[str],
    fold: int,
    threshold: float = 0.5,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Score both rules; returns (long table: split, dataset, level, method, label, n, n_pos, f1,
    auc) and the class means `{positive, negative, n_positive, n_negative}`."""
    embeddings_dir = Path(embeddings_dir)
    frame = _locate(index, embeddings_dir)
    shards = sorted(frame["shard"].unique())
    attrs = read_embeddings(embeddings_dir, shards[0])["attrs"]
    names, model = list(attrs["class_names"]), attrs["provenance"]["settings"]["model"]
    truth = _targets(frame, model, names)

    split = study_splits(frame, fold).to_numpy()
    is_train = split == "train"  # the class means see the training split only, like the head
    means = ClassMeans(len(names), 0)
    for shard in shards:
        for rows, emb in _chunks(frame[is_train], embeddings_dir, shard):
            if means.sums.shape[-1] == 0:
                means = ClassMeans(len(names), emb.shape[1])
            means.add(emb, truth[rows.index])
    positive, negative = means.means()

    evaluated = np.isin(split, ("inner", "validation", "external", "predict"))
    margin = np.full((len(frame), len(names)), np.nan)
    logits = np.full((len(frame), len(names)), np.nan, dtype=np.float32)
    for shard in shards:
        for rows, emb in _chunks(frame[evaluated], embeddings_dir, shard):
            margin[rows.index] = cosine_margin(emb, positive, negative)
        in_shard = frame[evaluated & (frame["shard"] == shard).to_numpy()]
        stored = read_embeddings(embeddings_dir, shard)["logits"]
        logits[in_shard.index] = np.asarray(stored[:])[in_shard["row"].to_numpy()]
    head_score, head_pred = _head_scores(logits, model, threshold)
    per_slice = {"head": (head_score, head_pred), "cosine": (margin, margin > 0)}

    table: list[dict[str, Any]] = []
    for name in ("inner", "validation", "external"):
        members = split == name
        for dataset in sorted(frame.loc[members, "dataset"].unique()):
            # one dataset's studies: an archive registered twice repeats its study ids in another dataset
            study_truth = studies[studies["dataset"] == dataset].set_index("study_id")
            mask = members & (frame["dataset"] == dataset).to_numpy()
            rows, slice_truth = frame.loc[mask], truth[mask]
            scores = {m: (s[mask], p[mask]) for m, (s, p) in per_slice.items()}
            table += report_rows(name, dataset, "slice", slice_truth, scores, names)
            ids = rows["study_id"].to_numpy()
            volume = {m: (volume_max(ids, s), volume_max(ids, p)) for m, (s, p) in scores.items()}
            vol_truth = _study_truth(study_truth, volume["head"][0].index, rows, model, names, slice_truth)
            vol_scores = {m: (s.to_numpy(), p.to_numpy() > 0) for m, (s, p) in volume.items()}
            table += report_rows(name, dataset, "volume", vol_truth, vol_scores, names)
    stats = {
        "positive": positive,
        "negative": negative,
        "n_positive": means.counts[1],
        "n_negative": means.counts[0],
    }
    probabilities = {"head": head_score, "cosine": 1 / (1 + np.exp(-margin))}  # cosine: margin > 0 is p > 0.5
    keep = np.isin(split, ("inner", "validation", "external", "predict"))  # predict: predicted, never scored
    predictions = {
        method: _prediction_frames(frame[keep], split[keep], prob[keep], truth[keep], studies, names)
        for method, prob in probabilities.items()
    }
    return pd.DataFrame(table), stats, predictions


def _prediction_frames(
    rows: pd.DataFrame,
    split: np.ndarray,
    prob: np.ndarray,
    truth: np.ndarray,
    studies: pd.DataFrame,
    names: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(study predictions = max over slices, with their split; slice predictions) of one rule."""
    columns = [c for c in ("dataset", "study_id", "z", "slice_id") if c in rows]
    slices = prediction_frame(rows[columns], prob, truth, names)
    keys = ["dataset", "study_id"]
    per_study = slices.assign(split=split).groupby(keys, sort=True)
    study_prob = per_study[[f"prob_{n}" for n in names]].max()
    from_slices = per_study[names].max()
    table = studies.set_index(keys).reindex(study_prob.index)
    known = table[names].astype("Float64") if set(names) <= set(table.columns) else from_slices * np.nan
    study_truth = known.astype(np.float64).fillna(from_slices).to_numpy()
    out = study_prob.index.to_frame(index=False).assign(
        split=per_study["split"].first().to_numpy(), n_slices=per_study.size().to_numpy()
    )
    return prediction_frame(out, study_prob.to_numpy(), study_truth, names), slices


def _study_truth(
    studies: pd.DataFrame,
    ids: pd.Index,
    rows: pd.DataFrame,
    model: dict[str, Any],
    names: list[str],
    slice_truth: np.ndarray,
) -> np.ndarray:
    """Study labels from the study table where it has them, else the max over slice labels."""
    from_slices = volume_max(rows["study_id"].to_numpy(), slice_truth).reindex(ids).to_numpy()
    if model.get("task", "multilabel") != "multilabel" or not set(names) <= set(studies.columns):
        return from_slices
    table = studies.reindex(ids)[names].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(table), from_slices, table)
