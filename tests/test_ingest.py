"""Ingest on real DICOM files of both layouts: HU values, ordering, geometry, labels, rejections,
pseudonymity and byte-identical reruns. Independent readers (SimpleITK/GDCM, raw pydicom) are the
reference, never ct25d's own decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import demo_config

from ct25d.cli import main
from ct25d.dicom.headers import pseudonym
from ct25d.labels import RSNA_LABELS
from ct25d.volumes.store import read_volume

DICOM_DIR = {"rsna": "stage_2_train", "cq500": "."}
LABELS = {"rsna": "stage_2_train.csv", "cq500": "reads.csv"}
SHARDS = 2


def run_ingest(cohort: Path, layout: str, out: Path) -> Path:
    settings = json.dumps(demo_config()["ingest"])
    root = str(cohort / DICOM_DIR[layout])
    labels = str(cohort / LABELS[layout])
    assert main(["scan", "--root", root, "--layout", layout, "--labels", labels, "--shards", str(SHARDS),
                 "--settings", settings, "--out", str(out / "scan")]) == 0  # fmt: skip
    prefixes = [str(out / "hu" / f"shard-{k}") for k in range(SHARDS)]
    for k, prefix in enumerate(prefixes):
        assert main(["ingest", "--root", root, "--scan", str(out / "scan"), "--shard", str(k),
                     "--settings", settings, "--out-prefix", prefix]) == 0  # fmt: skip
    assert main(["ingest-report", "--scan", str(out / "scan"), "--shards", *prefixes, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ingested(cohorts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        layout: run_ingest(c, layout, tmp_path_factory.mktemp(f"ingest-{layout}"))
        for layout, c in cohorts.items()
    }


def truth(cohorts: dict[str, Path], layout: str, table: str) -> pd.DataFrame:
    return pd.read_parquet(cohorts[layout] / "truth" / f"{table}.parquet")


def volume_of(out: Path, study_id: str) -> tuple[np.ndarray, dict]:
    for store in sorted((out / "hu").glob("shard-*.zarr")):
        if (store / study_id).is_dir():
            return read_volume(store, study_id)
    raise KeyError(study_id)


def matched(cohorts: dict[str, Path], ingested: dict[str, Path], layout: str) -> pd.DataFrame:
    """Manifest rows joined to the truth study they came from (via the chosen series' files)."""
    manifest = pd.read_parquet(ingested[layout] / "manifest.parquet")
    slices = pd.read_parquet(ingested[layout] / "slices.parquet")
    files = pd.read_parquet(ingested[layout] / "scan" / "files.parquet")
    first = slices[slices["z"] == 0].merge(files[["slice_id", "path"]], on="slice_id")
    t_slices = truth(cohorts, layout, "slices")
    t_slices = t_slices.assign(path=t_slices["path"].str.replace(f"{DICOM_DIR[layout]}/", "", regex=False))
    first = first.merge(t_slices[["path", "study_uid", "series_uid", "plain"]], on="path")
    rows = manifest.merge(first[["study_id", "study_uid", "series_uid", "plain"]], on="study_id")
    return rows.merge(truth(cohorts, layout, "studies"), on="study_uid", suffixes=("", "_truth"))


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_counts_reconcile_and_every_broken_input_is_reported(cohorts, ingested, layout) -> None:
    out = ingested[layout]
    counts = json.loads((out / "ingest_summary.json").read_text())["counts"]
    assert counts["studies_found"] == counts["studies_converted"] + counts["studies_rejected"]
    assert counts["files_found"] == counts["files_grouped"] + counts["files_rejected_at_scan"]
    rejections = pd.read_csv(out / "rejections.csv", keep_default_na=False)
    expected = pd.read_csv(cohorts[layout] / "truth" / "expected_rejections.csv", keep_default_na=False)
    assert len(expected) >= 5
    reported = " | ".join(rejections["path"] + " " + rejections["unit"] + " " + rejections["reason"])
    patterns = {
        "truncated_pixel_data": "cannot decode pixel data",
        "no_pixel_data": "no pixel data",
        "not_ct": "is not CT",
        "inconsistent_spacing": "inconsistent slice spacing",
        "single_slice": "single slice",
        "mixed_series_folder": "",
    }
    salt = demo_config()["ingest"]["pseudonym_salt"]
    for row in expected.itertuples():
        rel = row.path.removeprefix(f"{DICOM_DIR[layout]}/")
        if row.scope == "file":
            hits = rejections[rejections["path"] == rel]
        elif layout == "rsna":
            hits = rejections[rejections["unit"] == pseudonym(row.series_uid, salt, "se-")]
        else:
            hits = rejections[rejections["unit"].str.startswith(rel)]
        assert len(hits), f"{row.reason_kind} ({rel}) missing from rejections.csv"
        assert patterns[row.reason_kind] in reported
    # A bad extra file is dropped and its study still converts; a series with a gap or a single
    # slice cannot, which loses an RSNA study (one series each) but not a CQ500 one (it has others).
    studies = truth(cohorts, layout, "studies")
    lost = studies["broken"].isin(["inconsistent_spacing", "single_slice"]).sum() if layout == "rsna" else 0
    assert counts["studies_rejected"] == lost
    assert counts["studies_converted"] == len(studies) - lost


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_voxels_and_spacing_agree_with_simpleitk(cohorts, ingested, layout) -> None:
    # Broken studies have an extra bad file in the folder, which SimpleITK would read too.
    rows = matched(cohorts, ingested, layout).query(
        "tilt_deg_truth == 0 and storage != 'wrap' and broken == ''"
    )
    assert rows["transfer_syntax"].isin(["rle", "j2k"]).any(), "no compressed series compared"
    for row in rows.itertuples():
        ours, attrs = volume_of(ingested[layout], row.study_id)
        folder = cohorts[layout] / DICOM_DIR[layout]
        if layout == "cq500":
            folder = folder / row.unit
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), row.series_uid))
        image = reader.Execute()
        reference = sitk.GetArrayFromImage(image)
        np.testing.assert_array_equal(ours, reference, err_msg=f"{row.study_id} ({row.transfer_syntax})")
        np.testing.assert_allclose(attrs["spacing_zyx"], image.GetSpacing()[::-1], atol=1e-4)
        np.testing.assert_allclose(attrs["origin_xyz"], image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(attrs["direction"], image.GetDirection(), atol=1e-6)


def test_rsna_12bit_wrap_is_repaired(cohorts, ingested) -> None:
    rows = matched(cohorts, ingested, "rsna").query("storage == 'wrap'")
    assert len(rows)
    files = pd.read_parquet(ingested["rsna"] / "scan" / "files.parquet")
    slices = pd.read_parquet(ingested["rsna"] / "slices.parquet").merge(
        files[["slice_id", "path"]], on="slice_id"
    )
    for row in rows.itertuples():
        ours, _ = volume_of(ingested["rsna"], row.study_id)
        for z, path in slices.query("study_id == @row.study_id")[["z", "path"]].itertuples(index=False):
            ds = pydicom.dcmread(cohorts["rsna"] / "stage_2_train" / path)
            assert ds.BitsStored == 12 and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) > -100
            stored = ds.pixel_array.astype(np.int32)
            expected = np.where(stored >= 3096, stored - 4096, stored)  # HU wrapped at 4096, air at -1000
            np.testing.assert_array_equal(ours[z], expected)
        assert ours.min() >= -1000 and np.median(ours) < 500


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_slices_are_ordered_along_the_normal_like_the_truth(cohorts, ingested, layout) -> None:
    rows = matched(cohorts, ingested, layout).query("plain")
    ours = pd.read_parquet(ingested[layout] / "slices.parquet")
    t_slices = truth(cohorts, layout, "slices")
    assert rows["reversed_numbering"].any()
    for row in rows.itertuples():
        mine = ours.query("study_id == @row.study_id")["position_mm"].to_numpy()
        theirs = (
            t_slices.query("series_uid == @row.series_uid").sort_values("z_index")["position_mm"].to_numpy()
        )
        if row.broken in ("truncated_pixel_data", "no_pixel_data", "not_ct"):
            continue  # the truth also lists the (rejected) extra file's slot
        np.testing.assert_allclose(mine, theirs, atol=1e-3)
        assert np.all(np.diff(mine) > 0)


def test_labels_attach_for_both_layouts(cohorts, ingested) -> None:
    rsna = matched(cohorts, ingested, "rsna")
    for label in RSNA_LABELS:
        np.testing.assert_array_equal(
            rsna[label].astype(int), rsna[f"{label}_truth"].astype(int), err_msg=label
        )
    slices = pd.read_parquet(ingested["rsna"] / "slices.parquet")
    assert slices["any"].notna().all() and slices["any"].sum() > 0
    cq500 = matched(cohorts, ingested, "cq500")
    agree = cq500["reads_majority_error"] == ""
    for label in RSNA_LABELS:
        np.testing.assert_array_equal(cq500.loc[agree, label].astype(int), cq500.loc[agree, f"{label}_truth"])
    assert pd.read_parquet(ingested["cq500"] / "slices.parquet")["any"].isna().all()  # study-level only
    for layout in ("rsna", "cq500"):  # nullable in both, so concatenated tables keep one dtype
        table = pd.read_parquet(ingested[layout] / "slices.parquet")
        assert all(table[label].dtype == "Int8" for label in RSNA_LABELS), table.dtypes


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_no_identifying_field_leaves_ingest(cohorts, ingested, layout) -> None:
    studies = truth(cohorts, layout, "studies")
    secrets = [*studies["patient_id"], *studies["study_uid"], *studies["series_uid"], "SYNTH^"]
    ds = pydicom.dcmread(next((cohorts[layout] / DICOM_DIR[layout]).rglob("*.dcm")))
    secrets += [str(ds.PatientName), str(ds.PatientID), str(ds.get("AccessionNumber", "")) or "SYNTH^"]
    blob = b"".join(p.read_bytes() for p in ingested[layout].rglob("*") if p.is_file())
    for secret in secrets:
        assert secret.encode() not in blob, f"{secret!r} found in an artifact"


def test_rerun_is_byte_identical(cohorts, ingested, tmp_path: Path) -> None:
    again = run_ingest(cohorts["cq500"], "cq500", tmp_path / "again")
    first = ingested["cq500"]
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_worker_processes_write_the_same_shard(cohorts, ingested, tmp_path: Path) -> None:
    """`--workers 2` (decoding in a process pool, for compressed archives) gives the same bytes."""
    settings = json.dumps(demo_config()["ingest"])
    first = ingested["rsna"] / "hu"
    assert main(["ingest", "--root", str(cohorts["rsna"] / DICOM_DIR["rsna"]), "--scan",
                 str(ingested["rsna"] / "scan"), "--shard", "0", "--settings", settings, "--workers", "2",
                 "--out-prefix", str(tmp_path / "shard-0")]) == 0  # fmt: skip
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    names = [name for name in names if name.startswith("shard-0.")]
    again = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == again and names
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes(), name
