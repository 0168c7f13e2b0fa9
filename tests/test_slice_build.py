"""Slice build round trip, the slice index's reconciliation, and the preprocess subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ct25d.cli import preprocess
from ct25d.datasets.index import DatasetTables, IndexMismatchError, build_index
from ct25d.datasets.splits import assign_folds
from ct25d.labels import RSNA_LABELS
from ct25d.slices import DEFAULT_WINDOWS, SliceReader, apply_windows
from ct25d.slices.build import build_slice_shard
from ct25d.volumes.crop import CropSettings, crop_head, fit_square
from ct25d.volumes.store import hu_store_writer

SPACING = [5.0, 1.0, 1.0]
WINDOWS = [{"name": w.name, "center": w.center, "width": w.width} for w in DEFAULT_WINDOWS]


def toy_head(z: int, seed: int) -> np.ndarray:
    """An elliptical head (brain 30-45 HU, 1200 HU skull) above a separate 100 HU table bar."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :40]
    r = ((yy - 20) / 16.0) ** 2 + ((xx - 20) / 13.0) ** 2
    hu = np.full((z, 48, 40), -1000, dtype=np.int16)
    hu[:, r < 1.0] = 1200
    hu[:, r < 0.7] = rng.integers(30, 46, (z, int((r < 0.7).sum())))
    hu[:, 42:44, :] = 100  # the table, 5 px below the head
    return hu


def write_hu_store(path: Path, studies: dict[str, np.ndarray]) -> None:
    geometry = {
        "spacing_zyx": SPACING,
        "origin_xyz": [0.0, 0.0, 0.0],
        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
    }
    with hu_store_writer(path, {"stage": "test"}) as writer:
        for study_id, hu in studies.items():
            writer.write(study_id, hu, {**geometry, "shape_zyx": list(hu.shape)})


def test_stored_slices_equal_windowed_crop_exactly(tmp_path: Path) -> None:
    studies = {"st-a": toy_head(4, 0), "st-b": toy_head(3, 1)}
    write_hu_store(tmp_path / "hu.zarr", studies)
    crop = CropSettings(threshold_hu=-200, opening_mm=2.0, margin_mm=2.0)
    table, rejected = build_slice_shard(tmp_path / "hu.zarr", tmp_path / "sl.zarr", crop, 32, DEFAULT_WINDOWS,
                                        {"stage": "slices"}, progress=False)  # fmt: skip
    assert rejected.empty
    assert table.columns.tolist() == ["study_id", "z", "store"]
    assert table.groupby("study_id").size().to_dict() == {"st-a": 4, "st-b": 3}
    reader = SliceReader(tmp_path / "sl.zarr")
    for study_id, hu in studies.items():
        cropped, box = crop_head(hu, tuple(SPACING), crop, study_id)
        fitted, spacing_yx = fit_square(cropped, (1.0, 1.0), 32)
        assert np.array_equal(reader.read_study(study_id), apply_windows(fitted, DEFAULT_WINDOWS))
        attrs = reader.attrs(study_id)
        assert attrs["crop_box_yx"] == box.as_list()
        assert attrs["spacing_zyx"] == [5.0, *spacing_yx]
        assert box.y1 <= 42  # the table bar is outside the box
    uncropped, _ = build_slice_shard(tmp_path / "hu.zarr", tmp_path / "raw.zarr", None, 32, DEFAULT_WINDOWS,
                                     {}, progress=False)  # fmt: skip
    fitted, _ = fit_square(studies["st-a"], (1.0, 1.0), 32)
    assert np.array_equal(SliceReader(tmp_path / "raw.zarr").read_study("st-a"), apply_windows(fitted))
    assert len(uncropped) == 7


def dataset_frames(study_ids: list[str], n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A manifest and an ingest slices.parquet for studies of n slices each."""
    manifest = pd.DataFrame(
        {"study_id": study_ids, "patient_id": [f"pt-{s}" for s in study_ids], "n_slices": n}
    )
    for label in RSNA_LABELS:
        manifest[label] = np.int8(0)
    manifest.loc[0, ["subdural", "any"]] = 1
    labels = pd.DataFrame(
        [(s, z, f"sl-{s}-{z}", 5.0 * z) for s in study_ids for z in range(n)],
        columns=["study_id", "z", "slice_id", "position_mm"],
    )
    for label in RSNA_LABELS:
        labels[label] = pd.array([0] * len(labels), dtype="Int8")
    labels.loc[(labels["study_id"] == study_ids[0]) & (labels["z"] == 1), ["subdural", "any"]] = 1
    return manifest, labels


def test_index_joins_labels_folds_and_stores() -> None:
    manifest, labels = dataset_frames(["st-a", "st-b", "st-c"], 3)
    ext_manifest, ext_labels = dataset_frames(["cq-a"], 2)
    ext_labels[list(RSNA_LABELS)] = pd.NA
    tables = labels[["study_id", "z"]].assign(store="rsna.zarr")
    ext_tables = ext_labels[["study_id", "z"]].assign(store="cq.zarr")
    splits = assign_folds(
        pd.concat(
            [
                manifest.assign(dataset="rsna", role="train"),
                ext_manifest.assign(dataset="cq", role="external"),
            ]
        ),
        3,
        seed=0,
    )
    datasets = [
        DatasetTables("rsna", "train", "A", manifest, labels, tables),
        DatasetTables("cq", "external", "cq", ext_manifest, ext_labels, ext_tables),
    ]
    slices, studies = build_index(datasets, splits)
    assert len(slices) == 11 and len(studies) == 4
    assert slices.columns.tolist()[:10] == [
        "dataset", "role", "site", "study_id", "patient_id", "z", "slice_id", "position_mm", "store", "fold",
    ]  # fmt: skip
    assert (slices.loc[slices["dataset"] == "cq", "fold"] == -1).all()
    assert slices.loc[slices["dataset"] == "cq", "any"].isna().all()
    assert slices["any"].dtype == "Int8" and int(slices["any"].sum()) == 1
    assert studies.set_index("study_id").loc["st-a", "any"] == 1
    assert set(studies["store"]) == {"rsna.zarr", "cq.zarr"}

    short = tables[~((tables["study_id"] == "st-b") & (tables["z"] == 2))]
    with pytest.raises(IndexMismatchError, match=r"st-b has 3 slices in the manifest.*2 in the slice store"):
        build_index([DatasetTables("rsna", "train", "A", manifest, labels, short)], splits)
    with pytest.raises(IndexMismatchError, match=r"missing from the slice stores, e\.g\. st-c"):
        partial = tables[tables["study_id"] != "st-c"]
        build_index([DatasetTables("rsna", "train", "A", manifest, labels, partial)], splits)


def run_cli(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    preprocess.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_subcommands_chain(tmp_path: Path) -> None:
    """resample -> slices -> splits -> index; an all-air study is skipped and reported, not fatal."""
    air = np.full((3, 64, 64), -1024, dtype=np.int16)
    write_hu_store(tmp_path / "hu.zarr", {"st-a": toy_head(3, 0), "st-b": toy_head(3, 1), "st-c": air})
    manifest, labels = dataset_frames(["st-a", "st-b", "st-c"], 3)
    manifest.to_parquet(tmp_path / "manifest.parquet")
    labels.to_parquet(tmp_path / "slices.parquet")
    s = {"in_plane_mm": 0.8, "slice_mm": None, "interpolator": "linear"}
    codec = {"chunk_slices": 8, "compressor": "zstd", "compression_level": 3}
    run_cli("resample", "--in-store", f"{tmp_path}/hu.zarr", "--out-store", f"{tmp_path}/r.zarr",
            "--settings", json.dumps(s), "--codec", json.dumps(codec))  # fmt: skip
    assert '"cname": "zstd"' in (tmp_path / "r.zarr" / "st-a" / "zarr.json").read_text()
    s = {"crop": True, "threshold_hu": -200, "opening_mm": 2, "margin_mm": 2, "size": 24, "windows": WINDOWS}
    run_cli("slices", "--in-store", f"{tmp_path}/r.zarr", "--out-store", f"{tmp_path}/s.zarr",
            "--out-index", f"{tmp_path}/s.parquet", "--out-rejected", f"{tmp_path}/s.rejected.csv",
            "--settings", json.dumps(s))  # fmt: skip
    assert pd.read_csv(tmp_path / "s.rejected.csv")["study_id"].tolist() == ["st-c"]
    run_cli("splits", "--manifests", f"ds={tmp_path}/manifest.parquet", "--roles", "ds=train",
            "--settings", '{"folds": 2, "seed": 0}', "--out", f"{tmp_path}/splits.parquet")  # fmt: skip
    run_cli("index", "--manifests", f"ds={tmp_path}/manifest.parquet",
            "--slice-labels", f"ds={tmp_path}/slices.parquet", "--slice-tables", f"ds={tmp_path}/s.parquet",
            "--slice-rejections", f"ds={tmp_path}/s.rejected.csv", "--roles", "ds=train",
            "--splits", f"{tmp_path}/splits.parquet", "--out-slices", f"{tmp_path}/index.parquet",
            "--out-studies", f"{tmp_path}/studies.parquet",
            "--out-rejected", f"{tmp_path}/rejected.csv")  # fmt: skip
    rejected = pd.read_csv(tmp_path / "rejected.csv")
    assert rejected[["dataset", "study_id"]].values.tolist() == [["ds", "st-c"]]
    assert "st-c" in rejected["reason"].iloc[0]
    index = pd.read_parquet(tmp_path / "index.parquet")
    assert len(index) == 6 and set(index["fold"]) == {0, 1} and set(index["site"]) == {"ds"}
    assert SliceReader(index["store"].iloc[0]).shape("st-a") == (3, 3, 24, 24)
    with pytest.raises(SystemExit):
        run_cli(
            "splits", "--manifests", "no-equals-sign", "--roles", "ds=train", "--settings", "{}", "--out", "x"
        )
