"""Ingest on real DICOM files of both layouts: HU values, ordering, geometry, labels, rejections,
pseudonymity and byte-identical reruns. Independent readers (SimpleITK/GDCM, raw pydicom) are the
reference, never ct25d's own decoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import demo_config

from ct25d.cli import main
from ct25d.labels import RSNA_LABELS
from ct25d.volumes.report import OUTCOMES
from ct25d.volumes.store import read_volume

DICOM_DIR = {"rsna": "stage_2_train", "cq500": ".", "dicom_tree": "archive"}
LABELS = {"rsna": "stage_2_train.csv", "cq500": "reads.csv", "dicom_tree": "labels.csv"}
# The synthetic tree keys its labels by <patient>/<study> folders (config.yaml, dataset `hospital`).
TREE_KEYS = {"label_key": "folder", "folder_pattern": "^(?P<study>[^/]+/[^/]+)/"}
LAYOUTS = ["rsna", "cq500", "dicom_tree"]
SHARDS = 2
REASONS = {
    "truncated_pixel_data": r"cannot decode pixel data: truncated",
    "no_pixel_data": r"^no pixel data$",
    "not_ct": r"^Modality (MR|OT): not CT$",
    "single_slice": r"single slice",
    "secondary_capture": r"Secondary Capture|SamplesPerPixel 3",
    "duplicate_slice": r"^duplicate of .* at .* mm \(identical pixels\)$",
    "conflicting_duplicate": r"^conflicting duplicates: .* lie at one position .* with different pixels$",
}


def run_ingest(cohort: Path, layout: str, out: Path, role: str = "train") -> Path:
    settings = json.dumps(demo_config()["ingest"])
    root = str(cohort / DICOM_DIR[layout])
    labels = str(cohort / LABELS[layout])
    dataset = json.dumps({"layout": layout, "role": role, **(TREE_KEYS if layout == "dicom_tree" else {})})
    assert main(["scan", "--root", root, "--dataset", dataset, "--labels", labels, "--shards", str(SHARDS),
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


def truth_slices(cohorts: dict[str, Path], layout: str) -> pd.DataFrame:
    """The truth's slice rows with paths relative to the DICOM root, as the scan writes them."""
    t = truth(cohorts, layout, "slices")
    return t.assign(path=t["path"].str.removeprefix(f"{DICOM_DIR[layout]}/"))


def matched(cohorts: dict[str, Path], ingested: dict[str, Path], layout: str) -> pd.DataFrame:
    """Manifest rows joined to the truth study they came from (via the chosen series' images)."""
    manifest = pd.read_parquet(ingested[layout] / "manifest.parquet")
    slices = pd.read_parquet(ingested[layout] / "slices.parquet")
    files = pd.read_parquet(ingested[layout] / "scan" / "files.parquet")
    first = slices[slices["z"] == 0].merge(files[["slice_id", "path", "frame"]], on="slice_id")
    first = first.merge(truth_slices(cohorts, layout)[["path", "frame", "study_uid", "series_uid", "plain"]],
                        on=["path", "frame"])  # fmt: skip
    rows = manifest.merge(first[["study_id", "study_uid", "series_uid", "plain"]], on="study_id")
    return rows.merge(truth(cohorts, layout, "studies"), on="study_uid", suffixes=("", "_truth"))


def reports(ingested: dict[str, Path], layout: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    out = ingested[layout]
    counts = json.loads((out / "ingest_summary.json").read_text())["counts"]
    rejections = pd.read_csv(out / "rejections.csv", keep_default_na=False)
    choice = pd.read_csv(out / "series_choice.csv", keep_default_na=False)
    return counts, rejections, choice


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_broken_input_is_reported_with_its_own_reason(cohorts, ingested, layout) -> None:
    _, rejections, _ = reports(ingested, layout)
    expected = pd.read_csv(cohorts[layout] / "truth" / "expected_rejections.csv", keep_default_na=False)
    assert set(expected["reason_kind"]) >= {"secondary_capture"}
    for row in expected.itertuples():
        rel = row.path.removeprefix(f"{DICOM_DIR[layout]}/")
        if row.scope == "file":
            hits = rejections[(rejections["path"] == rel) & (rejections["level"] == "file")]
        else:  # a series: its row names the offending file inside the series' folder
            in_series = rejections["path"].str.startswith(rel if layout != "rsna" else "")
            hits = rejections[rejections["level"].isin(["series", "excluded"]) & in_series]
            hits = hits[hits["reason"].str.contains(REASONS[row.reason_kind])]
        assert len(hits) == 1, f"{row.reason_kind} ({rel}): {len(hits)} rows in rejections.csv"
        assert re.search(REASONS[row.reason_kind], hits["reason"].iloc[0]), (
            row.reason_kind,
            hits["reason"].iloc[0],
        )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_counts_reconcile_at_every_level(cohorts, ingested, layout) -> None:
    counts, rejections, choice = reports(ingested, layout)
    outcomes = pd.read_parquet(ingested[layout] / "file_outcomes.parquet")
    on_disk = [p for p in (cohorts[layout] / DICOM_DIR[layout]).rglob("*") if p.is_file()]
    if layout == "cq500":  # reads.csv and the truth folder are not part of the archive
        on_disk = [p for p in on_disk if p.relative_to(cohorts[layout]).parts[0].startswith("CQ500CT")]
    assert outcomes["path"].nunique() == len(on_disk)
    assert counts["files_found"] == len(outcomes)
    assert counts["files_found"] == sum(counts[f"files_{name}"] for name in OUTCOMES)
    assert counts["files_converted"] == len(pd.read_parquet(ingested[layout] / "slices.parquet"))
    assert counts["files_dropped_at_ingest"] == int(((rejections["level"] == "file")
                                                     & (rejections["study_id"] != "")).sum())  # fmt: skip
    assert (outcomes.loc[outcomes["outcome"] != "converted", "reason"] != "").all()
    assert counts["series_found"] == len(choice)
    assert counts["studies_found"] == counts["studies_converted"] + counts["studies_rejected"]
    # An RSNA study has one series: a single slice loses it. A CQ500 study whose first choice holds
    # conflicting duplicates falls back to its next plain series, if it has one.
    studies = truth(cohorts, layout, "studies")
    broken = studies.set_index("broken")["folder"]
    lost = int("single_slice" in broken.index) if layout == "rsna" else 0
    if layout == "cq500" and "conflicting_duplicate" in broken.index:
        study = choice[choice["name"] == f"CQ500-CT-{broken['conflicting_duplicate'].split('CT')[-1]}"]
        assert study.loc[study["rank"] == 0, "outcome"].str.startswith("failed: conflicting duplicates").all()
        lost = int(not (study["outcome"] == "converted").any())
        assert lost == int((study["rank"] > 0).sum() == 0)
    assert counts["studies_rejected"] == lost
    for reason in rejections.loc[rejections["level"] == "study", "reason"]:
        assert reason.startswith("no series could be converted; ") and ": " in reason[30:]


@pytest.mark.parametrize("layout", ["rsna", "dicom_tree"])
def test_missing_slice_is_kept_and_flagged(cohorts, ingested, layout) -> None:
    rows = matched(cohorts, ingested, layout).query("broken == 'missing_slice'")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert "irregular slice spacing: 1 gap(s)" in row["flags"]
    assert row["n_slices"] == row["n_slices_truth"]
    mine = pd.read_parquet(ingested[layout] / "slices.parquet").query("study_id == @row.study_id")
    theirs = truth_slices(cohorts, layout).query("series_uid == @row.series_uid").sort_values("z_index")
    np.testing.assert_allclose(mine["position_mm"], theirs["position_mm"], atol=1e-3)
    _, attrs = volume_of(ingested[layout], row["study_id"])
    np.testing.assert_allclose(attrs["positions_mm"], theirs["position_mm"], atol=1e-3)


def test_cq500_series_choice_reads_real_names(cohorts, ingested) -> None:
    """ "PRE CONTRAST" names plain series, "POST CONTRAST" and volumes a contrast study; a study with
    only "CT PRE CONTRAST THIN" beside "CT POST CONTRAST" converts its plain thin series."""
    _, _, choice = reports(ingested, "cq500")
    by_name = choice.assign(folder=choice["unit"].str.rsplit("/", n=1).str[-1])
    classes = by_name.groupby("folder")["series_class"].agg(set).to_dict()
    assert classes["CT 5 MM PRE CONTRAST"] == classes["CT PRE CONTRAST THIN"] == {"plain"}
    assert classes["CT PRE CONTRAST BONE"] == {"bone"}
    assert classes["CT POST CONTRAST"] == {"contrast"}
    thin_only = by_name.groupby("study_id")["folder"].agg(set)
    thin_only = thin_only[thin_only.map(lambda f: f == {"CT PRE CONTRAST THIN", "CT POST CONTRAST"})].index
    assert len(thin_only)
    chosen = by_name[by_name["study_id"].isin(thin_only) & (by_name["outcome"] == "converted")]
    assert set(chosen["folder"]) == {"CT PRE CONTRAST THIN"} and len(chosen) == len(thin_only)
    assert (choice["rank"] < 0).sum() == (choice["outcome"] == "excluded").sum()
    assert (choice.loc[choice["series_class"] == "contrast", "rank"] == -1).all()
    mixed = choice[choice["unit"].str.contains(r" \[se-", regex=True)]
    assert mixed["study_id"].nunique() == 1 and len(mixed) == 2  # the folder holding two series, split
    assert (choice["why"] != "").all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_voxels_and_spacing_agree_with_simpleitk(cohorts, ingested, layout) -> None:
    # Some broken inputs put an extra bad file in the series' folder, which SimpleITK would read too.
    rows = matched(cohorts, ingested, layout)
    elsewhere = rows["broken"].isin(["", "secondary_capture", "single_slice", "mixed_series_folder"])
    rows = rows[elsewhere & (rows["tilt_deg_truth"] == 0) & (rows["storage"] != "wrap") & ~rows["enhanced"]]
    assert len(rows)
    if layout != "dicom_tree":
        assert rows["transfer_syntax"].isin(["rle", "j2k"]).any(), "no compressed series compared"
    for row in rows.itertuples():
        ours, attrs = volume_of(ingested[layout], row.study_id)
        folder = cohorts[layout] / DICOM_DIR[layout]
        if layout != "rsna":
            folder = folder / row.unit
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), row.series_uid))
        image = reader.Execute()
        reference = sitk.GetArrayFromImage(image)
        np.testing.assert_array_equal(ours, reference, err_msg=f"{row.study_id} ({row.transfer_syntax})")
        np.testing.assert_allclose(attrs["spacing_zyx"], image.GetSpacing()[::-1], atol=1e-4)
        np.testing.assert_allclose(attrs["origin_xyz"], image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(attrs["direction"], image.GetDirection(), atol=1e-6)


def test_enhanced_ct_converts_frame_by_frame(cohorts, ingested) -> None:
    """A multi-frame Enhanced CT file: geometry and rescale from the functional groups; every frame
    equals pydicom's decoding of it, and positions equal the truth."""
    rows = matched(cohorts, ingested, "dicom_tree").query("enhanced")
    assert len(rows) >= 2
    for row in rows.itertuples():
        ours, attrs = volume_of(ingested["dicom_tree"], row.study_id)
        theirs = (
            truth_slices(cohorts, "dicom_tree").query("series_uid == @row.series_uid").sort_values("frame")
        )
        ds = pydicom.dcmread(cohorts["dicom_tree"] / "archive" / theirs["path"].iloc[0])
        transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        hu = ds.pixel_array.astype(np.float64) * float(transform.RescaleSlope) + float(
            transform.RescaleIntercept
        )
        order = np.argsort(theirs["position_mm"].to_numpy())
        np.testing.assert_array_equal(ours, hu[order])
        np.testing.assert_allclose(attrs["positions_mm"], np.sort(theirs["position_mm"]), atol=1e-3)
        assert row.n_slices == ds.NumberOfFrames == row.n_slices_truth


def test_rsna_12bit_wrap_is_repaired(cohorts, ingested) -> None:
    rows = matched(cohorts, ingested, "rsna").query("storage == 'wrap' and tilt_deg_truth == 0")
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_slices_are_ordered_along_the_normal_like_the_truth(cohorts, ingested, layout) -> None:
    rows = matched(cohorts, ingested, layout).query("plain")
    ours = pd.read_parquet(ingested[layout] / "slices.parquet")
    t_slices = truth(cohorts, layout, "slices")
    assert rows["reversed_numbering"].any()
    for row in rows.itertuples():
        mine = ours.loc[ours["study_id"] == row.study_id, "position_mm"].to_numpy()
        theirs = t_slices[t_slices["series_uid"] == row.series_uid].sort_values("z_index")["position_mm"]
        np.testing.assert_allclose(mine, theirs, atol=1e-3)
        assert np.all(np.diff(mine) > 0)


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_tilted_series_are_corrected(cohorts, ingested, layout) -> None:
    rows = matched(cohorts, ingested, layout).query("tilt_deg_truth != 0")
    assert len(rows)
    for row in rows.itertuples():
        assert "tilt corrected" in row.flags and row.tilt_deg == pytest.approx(
            abs(row.tilt_deg_truth), abs=0.01
        )
        _, attrs = volume_of(ingested[layout], row.study_id)
        d = np.reshape(attrs["direction"], (3, 3))
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-6)  # an orthogonal grid
        assert attrs["shape_zyx"][1] > 64  # grown to hold the shifted slices


def test_labels_attach_for_every_layout(cohorts, ingested) -> None:
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
    tree = matched(cohorts, ingested, "dicom_tree")
    for label in RSNA_LABELS:  # keyed by the <patient>/<study> folder names, study-level
        np.testing.assert_array_equal(
            tree[label].astype(int), tree[f"{label}_truth"].astype(int), err_msg=label
        )
    stroke = np.where(
        tree["any_truth"] == 1, "hemorrhagic", np.where(tree["ischemic"] == 1, "ischemic", "control")
    )
    assert list(tree["stroke_type"]) == list(stroke)
    for layout in LAYOUTS:  # nullable in all, so concatenated tables keep one dtype
        table = pd.read_parquet(ingested[layout] / "slices.parquet")
        assert all(table[label].dtype == "Int8" for label in RSNA_LABELS), table.dtypes


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_identifying_field_leaves_ingest(cohorts, ingested, layout) -> None:
    studies = truth(cohorts, layout, "studies")
    secrets = [*studies["patient_id"], *studies["study_uid"], *studies["series_uid"], "SYNTH^"]
    ds = pydicom.dcmread(
        next(p for p in sorted((cohorts[layout] / DICOM_DIR[layout]).rglob("*")) if p.is_file())
    )
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
