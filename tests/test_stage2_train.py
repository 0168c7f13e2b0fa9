"""Stage-2 training on real Stage-1 embeddings of a tiny cohort: outputs, the max-over-slices volume
rule, external studies never trained on, streaming reads, and seeded reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_stage1_data import study_table, tiny_cohort

from ct25d.datasets.sequences import StudySequences
from ct25d.labels import RSNA_LABELS
from ct25d.training.checkpoint import load_checkpoint
from ct25d.training.embed import extract_embeddings, read_embeddings
from ct25d.training.stage1 import train_stage1
from ct25d.training.stage2 import train_stage2

STAGE1 = dict(backbone="test_resnet", image_size=32, batch_size=8, epochs=1, num_workers=0)
STAGE2 = dict(epochs=3, batch_size=4, seed=0)
BILSTM = {"name": "bilstm", "hidden": 16, "d_model": 32}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("stage2")
    index = tiny_cohort(root)
    train_stage1(index, 0, STAGE1, root / "stage1")
    extract_embeddings(index, root / "stage1" / "best.pt", root / "emb", tta_flip=False, batch_size=16)
    return root / "emb", study_table(index)


@pytest.fixture(scope="module")
def trained(embedded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bilstm")
    train_stage2(embedded[0], embedded[1], 0, BILSTM, STAGE2, out)
    return out


def test_outputs_cover_every_study_of_every_dataset(embedded, trained: Path) -> None:
    for name in ("best.pt", "metrics.json", "metrics.csv", "learning_curve.png",
                 "predictions_studies.parquet", "predictions_slices.parquet"):  # fmt: skip
        assert (trained / name).is_file(), name
    studies = pd.read_parquet(trained / "predictions_studies.parquet")
    assert set(studies["study_id"]) == set(embedded[1]["study_id"])
    assert set(studies.query("dataset == 'cq500'")["split"]) == {"external"}
    assert set(studies.query("dataset == 'rsna'")["split"]) == {"train", "inner", "validation"}
    summary = json.loads((trained / "metrics.json").read_text())
    assert {
        "validation/rsna/slice/bilstm",
        "validation/rsna/volume/bilstm",
        "external/cq500/volume/bilstm",
    } <= set(summary["results"])
    assert len(pd.read_csv(trained / "metrics.csv")) == STAGE2["epochs"]


def test_volume_prediction_is_the_max_over_slices(trained: Path) -> None:
    studies = pd.read_parquet(trained / "predictions_studies.parquet").set_index(["dataset", "study_id"])
    slices = pd.read_parquet(trained / "predictions_slices.parquet")
    per_study = slices.groupby(["dataset", "study_id"])[[f"prob_{n}" for n in RSNA_LABELS]].max()
    np.testing.assert_allclose(studies.loc[per_study.index, per_study.columns], per_study, rtol=1e-6)


def test_study_sequences_read_each_study_in_z_order(embedded) -> None:
    emb_dir, studies = embedded
    rows = pd.read_parquet(emb_dir / "rows.parquet")
    data = StudySequences(emb_dir, rows, studies, RSNA_LABELS)
    for i in range(len(data)):
        x, y, _, _ = data[i]
        span = data.spans.iloc[i]
        expected = rows.query("study_id == @span.study_id").sort_values("z")
        stored = np.asarray(read_embeddings(emb_dir, span.shard)["embedding"][:], dtype=np.float32)
        np.testing.assert_array_equal(x.numpy(), stored[expected["row"].to_numpy()])
        assert y.shape == (len(expected), len(RSNA_LABELS))


def test_same_seed_same_weights(embedded, trained: Path, tmp_path: Path) -> None:
    train_stage2(embedded[0], embedded[1], 0, BILSTM, STAGE2, tmp_path)
    a, b = load_checkpoint(trained / "best.pt")["model"], load_checkpoint(tmp_path / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_selection_never_sees_the_outer_fold_or_external_studies(
    embedded, trained: Path, tmp_path: Path
) -> None:
    """Replace the embeddings of every outer-fold and external study by noise: the chosen epoch, the
    selection history and the weights stay exactly the same."""
    import shutil

    import zarr

    from ct25d.datasets.splits import study_splits

    emb_dir, studies = embedded
    noisy = tmp_path / "emb"
    shutil.copytree(emb_dir, noisy)
    rows = pd.read_parquet(noisy / "rows.parquet")
    split = study_splits(studies, 0).set_axis(studies["study_id"])
    scored = rows["study_id"].map(split).isin(["validation", "external"]).to_numpy()
    assert scored.any()
    for shard, part in rows[scored].groupby("shard"):
        array = zarr.open_array(noisy / f"{shard}.zarr" / "embedding", mode="r+")
        values = array[:]
        values[part["row"].to_numpy()] = np.random.default_rng(1).normal(size=(len(part), values.shape[1]))
        array[:] = values
    train_stage2(noisy, studies, 0, BILSTM, STAGE2, tmp_path / "out")
    a, b = load_checkpoint(trained / "best.pt"), load_checkpoint(tmp_path / "out" / "best.pt")
    assert a["epoch"] == b["epoch"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    pd.testing.assert_frame_equal(
        pd.read_csv(trained / "metrics.csv"), pd.read_csv(tmp_path / "out" / "metrics.csv")
    )
    predicted = pd.read_parquet(tmp_path / "out" / "predictions_studies.parquet")
    original = pd.read_parquet(trained / "predictions_studies.parquet")
    outer = predicted["split"].isin(["validation", "external"])
    assert not np.allclose(
        predicted.loc[outer, "prob_any"], original.loc[outer, "prob_any"]
    )  # they are scored


def test_held_out_features_train_only_on_studies_stage1_never_saw(embedded, tmp_path: Path) -> None:
    emb_dir, studies = embedded
    train_stage2(emb_dir, studies, 0, BILSTM, {**STAGE2, "train_features": "held_out"}, tmp_path)
    predicted = pd.read_parquet(tmp_path / "predictions_studies.parquet").set_index("study_id")
    from ct25d.datasets.splits import study_splits

    original = study_splits(studies, 0).set_axis(studies["study_id"])
    assert set(predicted.loc[original[original == "train"].index, "split"]) == {"unused"}
    assert set(predicted.loc[original[original == "inner"].index, "split"]) == {"train", "inner"}
