"""Stage 1 end to end through the command line: train-slices -> embed -> eval-stage1."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from test_stage1_data import study_table, tiny_cohort

from ct25d.cli import stage1

SETTINGS = {"backbone": "test_resnet", "image_size": 32, "batch_size": 8, "epochs": 2, "num_workers": 0,
            "device": "cpu", "tta_flip": True, "embed_batch_size": 16}  # fmt: skip


def run(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    stage1.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_train_embed_evaluate(tmp_path: Path) -> None:
    index = tiny_cohort(tmp_path)
    index.to_parquet(tmp_path / "index.parquet")
    study_table(index).to_parquet(tmp_path / "studies.parquet")
    settings = json.dumps(SETTINGS)
    common = ["--index", str(tmp_path / "index.parquet"), "--settings", settings]
    run("train-slices", *common, "--fold", "1", "--out", str(tmp_path / "train"))
    run("embed", *common, "--checkpoint", str(tmp_path / "train" / "best.pt"), "--out", str(tmp_path / "emb"))
    run("eval-stage1", *common, "--studies", str(tmp_path / "studies.parquet"),
        "--embeddings", str(tmp_path / "emb"), "--fold", "1", "--out", str(tmp_path / "eval"))  # fmt: skip

    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == [
        "cq500_000.zarr", "rows.parquet", "rsna_000.zarr", "settings.json",
    ]  # fmt: skip
    table = pd.read_csv(tmp_path / "eval" / "stage1_eval.csv")
    any_rows = table[table["label"] == "any"]
    assert set(zip(any_rows["split"], any_rows["level"], strict=True)) == {
        ("inner", "slice"), ("inner", "volume"), ("validation", "slice"), ("validation", "volume"),
        ("external", "volume"),
    }  # fmt: skip
    assert set(any_rows["method"]) == {"head", "cosine"}
    assert any_rows["f1"].between(0, 1).all()
    summary = json.loads((tmp_path / "eval" / "stage1_eval.json").read_text())
    assert summary["fold"] == 1 and "validation/rsna/volume/cosine" in summary["results"]
    assert (tmp_path / "eval" / "class_means.npz").is_file()
