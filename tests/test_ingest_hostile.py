"""The cases a hostile copy of a real archive holds that ingest once handled silently: each ends
in a report with its reason, and the counts reconcile row by row."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import ct_header, demo_config, write_ct_series

from ct25d.cli import main
from ct25d.errors import Ct25dError
from ct25d.synth.dicom_writer import SliceGeometry, write_enhanced_series, write_secondary_capture
from ct25d.volumes.report import file_outcomes, reconcile, series_outcomes

SETTINGS = json.dumps(demo_config()["ingest"])
# A hospital tree keyed by <patient>/<study> folders, as config.yaml's dataset `hospital`.
TREE = {"layout": "dicom_tree", "role": "train", "label_key": "folder",
        "folder_pattern": "^(?P<study>[^/]+/[^/]+)/"}  # fmt: skip


def tree_labels(folder: Path, labels: dict[str, int]) -> Path:
    """A study label CSV {study key: any} in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{key},{value}\n" for key, value in labels.items())
    (folder / "labels.csv").write_text("study,any\n" + rows)
    return folder / "labels.csv"


def scan(root: Path, labels: Path, out: Path, dataset: dict = TREE) -> int:
    """`ct25d scan` of `root` into out/scan; its exit status."""
    return main(["scan", "--root", str(root), "--dataset", json.dumps(dataset), "--labels", str(labels),
                 "--shards", "1", "--settings", SETTINGS, "--out", str(out / "scan")])  # fmt: skip


def ingest(root: Path, labels: Path, out: Path, dataset: dict = TREE) -> dict:
    """Scan, convert (one shard) and report; the reconciled counts."""
    assert scan(root, labels, out, dataset) == 0
    assert main(["ingest", "--root", str(root), "--scan", str(out / "scan"), "--shard", "0",
                 "--settings", SETTINGS, "--out-prefix", str(out / "shard-0")]) == 0  # fmt: skip
    assert main(["ingest-report", "--scan", str(out / "scan"), "--shards", str(out / "shard-0"),
                 "--out", str(out)]) == 0  # fmt: skip
    return json.loads((out / "ingest_summary.json").read_text())["counts"]


def outcomes_of(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "file_outcomes.parquet").set_index("path")


def test_a_copy_under_another_name_is_dropped_not_converted(tmp_path: Path) -> None:
    """Two files with one SOPInstanceUID share a slice_id: the set-aside copy is a dropped file, and a
    reconciliation that counted it converted fails on the rows although the sums agree."""
    root = tmp_path / "archive"
    paths = write_ct_series(root / "P1" / "s1" / "series", n=6)
    shutil.copyfile(paths[2], paths[2].with_name("CT0002_copy.dcm"))
    out = tmp_path / "out"
    counts = ingest(root, tree_labels(tmp_path, {"P1/s1": 0}), out)
    outcomes = outcomes_of(out)
    copy = "P1/s1/series/CT0002_copy.dcm"
    assert outcomes.loc[copy, "outcome"] == "dropped_at_ingest"
    reason = "duplicate of P1/s1/series/CT0002.dcm at 10.00 mm (identical pixels)"
    assert outcomes.loc[copy, "reason"] == reason
    assert counts["files_converted"] == len(pd.read_parquet(out / "slices.parquet")) == 6
    assert counts["files_dropped_at_ingest"] == 1 and counts["files_found"] == 7

    # what the report used to write: the copy called converted; the sums still add up
    files = pd.read_parquet(out / "scan" / "files.parquet")
    series = pd.read_parquet(out / "scan" / "series.parquet")
    studies = pd.read_parquet(out / "scan" / "studies.parquet")
    volumes = pd.read_parquet(out / "shard-0.volumes.parquet")
    slices = pd.read_parquet(out / "shard-0.slices.parquet")
    rejections = pd.read_csv(out / "shard-0.rejections.csv", dtype=str, keep_default_na=False)
    rejections = rejections.astype({"frame": "int64"})
    series["outcome"] = series_outcomes(series, volumes, rejections)
    table = file_outcomes(files, series, slices, rejections, pd.DataFrame(columns=["path", "reason"]))
    assert reconcile(table, series, studies, volumes, slices, rejections)["files_converted"] == 6
    table.loc[table["path"] == copy, "outcome"] = "converted"
    with pytest.raises(Ct25dError, match=r"CT0002_copy.dcm \(frame -1\) is converted only in the outcome"):
        reconcile(table, series, studies, volumes, slices, rejections)


def test_an_archive_of_renderings_stops_with_every_files_reason(tmp_path: Path, caplog) -> None:
    """No file holds HU (colour and 8-bit secondary captures): the scan still fails, and says why for
    each file in the log and in the rejected-files report."""
    root = tmp_path / "archive"
    geometry = SliceGeometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 0.8)
    hu = np.linspace(-100, 200, 256).reshape(16, 16)
    for k in range(3):
        folder = root / "P1" / "s1" / "renderings"
        folder.mkdir(parents=True, exist_ok=True)
        write_secondary_capture(folder / f"IM{k}.dcm", ct_header(), geometry, hu, f"2.25.7{k}", colour=k > 0)
    (root / "P1" / "s1" / "report.pdf").write_bytes(b"%PDF-1.4")
    assert scan(root, tree_labels(tmp_path, {"P1/s1": 1}), tmp_path / "out") == 2
    rejected = pd.read_csv(tmp_path / "out" / "scan" / "rejected_files.csv").set_index("path")
    assert len(rejected) == 4
    assert rejected.loc["P1/s1/report.pdf", "reason"] == "not a DICOM file name (.pdf)"
    renderings = rejected.loc[[f"P1/s1/renderings/IM{k}.dcm" for k in range(3)], "reason"]
    assert renderings.iloc[0].startswith("SOPClassUID 1.2.840.10008.5.1.4.1.1.7 (Secondary Capture)")
    assert renderings.iloc[1:].str.startswith("SamplesPerPixel 3 (RGB)").all()
    logged = [r.getMessage() for r in caplog.records]
    for path, reason in rejected["reason"].items():
        assert f"rejected {path}: {reason}" in logged
    error = logged[-1]
    assert "none of the 4 files under" in error and "2 x SamplesPerPixel 3 (RGB)" in error
    assert str(tmp_path / "out" / "scan" / "rejected_files.csv") in error
    assert not (tmp_path / "out" / "scan" / "files.parquet").exists()


def hostile_study_folders(root: Path, layout: str, cohorts: dict[str, Path]) -> tuple[list[str], Path]:
    """An archive of four labelled studies: one good, one emptied by a failed download, one holding
    only a file that is not DICOM, one missing. Returns the four label keys and the label file."""
    if layout == "cq500":
        keys = [f"CQ500-CT-{k}" for k in (1, 2, 3, 4)]
        folders = [root / f"CQ500CT{k} CQ500CT{k}" / "Unknown Study" / "CT Plain" for k in (1, 2, 3)]
        reads = pd.read_csv(cohorts["cq500"] / "reads.csv").iloc[[0] * 4].assign(name=keys)
        reads.to_csv(root.parent / "reads.csv", index=False)
        labels = root.parent / "reads.csv"
    else:
        keys = ["P1/s1", "P2/s1", "P3/s1", "P4/s1"]
        folders = [root / key / "series" for key in keys[:3]]
        labels = tree_labels(root.parent, dict.fromkeys(keys, 1))
    write_ct_series(folders[0], n=4)
    folders[1].mkdir(parents=True)
    folders[2].mkdir(parents=True)
    (folders[2] / "CT000000.dcm").write_bytes(b"\0" * 300)
    return keys, labels


@pytest.mark.parametrize("layout", ["cq500", "dicom_tree"])
def test_study_folders_without_a_readable_image_are_studies_not_key_counts(cohorts, tmp_path, layout) -> None:
    root = tmp_path / "archive"
    keys, labels = hostile_study_folders(root, layout, cohorts)
    dataset = {"layout": "cq500", "role": "train"} if layout == "cq500" else TREE
    counts = ingest(root, labels, tmp_path / "out", dataset)
    # the key with no folder at all is named in label_match.json, not only counted
    assert counts["labels"]["unmatched_label_keys"] == [keys[3]]
    assert (counts["labels"]["studies"], counts["labels"]["label_keys_unmatched"]) == (3, 1)
    assert (counts["studies_found"], counts["studies_converted"], counts["studies_rejected"]) == (3, 1, 2)
    studies = pd.read_parquet(tmp_path / "out" / "scan" / "studies.parquet").set_index("name")
    assert studies["has_labels"].all() and studies.loc[keys[0], "problem"] == ""
    rejections = pd.read_csv(tmp_path / "out" / "rejections.csv", keep_default_na=False)
    why = rejections[rejections["level"] == "study"].set_index("study_id")["reason"]
    assert (
        why[studies.loc[keys[1], "study_id"]]
        == "no series could be converted; the study folder holds no file"
    )
    assert re.fullmatch(
        r"no series could be converted; no readable image in the study folder: 1 file\(s\) rejected at scan, "
        r"e\.g\. .*/CT000000.dcm: not a DICOM file .*",
        why[studies.loc[keys[2], "study_id"]],
    )
    assert set(why.index) == set(studies.loc[keys[1:3], "study_id"])


def test_unmatched_uid_keys_are_named_by_their_line(tmp_path: Path) -> None:
    """Label keys that are StudyInstanceUIDs are listed by their line in the label file: the UID
    itself never leaves the scan."""
    write_ct_series(tmp_path / "archive" / "P1" / "s1" / "series", n=3, header=ct_header(study_uid="2.25.11"))
    labels = tree_labels(tmp_path, {"2.25.11": 0, "2.25.999": 1, "2.25.998": 0})
    dataset = {"layout": "dicom_tree", "role": "train", "label_key": "StudyInstanceUID"}
    assert scan(tmp_path / "archive", labels, tmp_path / "out", dataset) == 0
    text = (tmp_path / "out" / "scan" / "label_match.json").read_text()
    assert json.loads(text)["unmatched_label_keys"] == ["labels.csv line 3", "labels.csv line 4"]
    assert "2.25.99" not in text


def edit(path: Path, **values: object) -> None:
    """Set top-level header values of a written file."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_derived_maps_are_excluded_and_a_rescale_type_that_is_not_hu_is_flagged(tmp_path: Path) -> None:
    """A perfusion map (Enhanced CT, ImageType ...PERFUSION\\RCBF, RescaleType US, no contrast tag)
    is refused as not HU; a MIP in HU is a derived series, never a candidate; an axial series whose
    RescaleType is US converts with a flag."""
    root = tmp_path / "archive"
    write_ct_series(root / "P1" / "s1" / "plain", n=4, header=ct_header(series_description="CT Plain"))
    mip = write_ct_series(
        root / "P1" / "s1" / "mip", n=4, header=ct_header(series_uid="2.25.14", series_number=3)
    )
    for path in mip:
        edit(path, ImageType=["DERIVED", "SECONDARY", "MIP"])
    perfusion = root / "P1" / "s1" / "cbf" / "map.dcm"
    perfusion.parent.mkdir()
    geometry = SliceGeometry((-6.0, -6.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), 0.8)
    positions = np.array([[-6.0, -6.0, 5.0 * k] for k in range(4)])
    header = ct_header(series_uid="2.25.15", series_description="rCBF", storage="u1000")
    write_enhanced_series(perfusion, header, geometry, np.zeros((4, 16, 16)), positions, "2.25.150")
    ds = pydicom.dcmread(perfusion)
    ds.ImageType = ["DERIVED", "PRIMARY", "PERFUSION", "RCBF"]
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleType = "US"
    ds.save_as(perfusion)
    us = write_ct_series(
        root / "P2" / "s1" / "axial", n=4, header=ct_header(study_uid="2.25.21", series_uid="2.25.22")
    )
    for path in us:
        edit(path, RescaleType="US")
    out = tmp_path / "out"
    counts = ingest(root, tree_labels(tmp_path, {"P1/s1": 0, "P2/s1": 1}), out)
    assert counts["studies_converted"] == 2
    rejected = pd.read_csv(out / "scan" / "rejected_files.csv").set_index("path")["reason"]
    assert rejected["P1/s1/cbf/map.dcm"] == (
        "RescaleType US with ImageType DERIVED\\PRIMARY\\PERFUSION\\RCBF: a derived map in its own units, "
        "not HU"
    )
    choice = pd.read_csv(out / "series_choice.csv", keep_default_na=False).set_index("unit")
    assert choice.loc["P1/s1/mip", "series_class"] == "derived"
    assert choice.loc["P1/s1/mip", "why"] == (
        "not a candidate: derived series (ImageType DERIVED\\SECONDARY\\MIP: MIP is a derived map or "
        "projection, not anatomy)"
    )
    assert choice.loc["P1/s1/plain", "outcome"] == "converted"
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("unit")
    assert manifest.loc["P1/s1/plain", "flags"] == ""
    assert (
        manifest.loc["P2/s1/axial", "flags"]
        == "RescaleType US: the header does not say HU; values kept as HU"
    )


def test_one_bad_slice_is_dropped_like_a_truncated_one(tmp_path: Path) -> None:
    """A slice without ImagePositionPatient, or of another size, no longer loses its series (and the
    study with it): it is dropped with its reason and the gap is flagged, as a truncated slice is."""
    root = tmp_path / "archive"
    cases = {"P1/s1": "no_position", "P2/s1": "other_size", "P3/s1": "truncated"}
    for k, (key, case) in enumerate(cases.items()):
        header = ct_header(study_uid=f"2.25.{k}1", series_uid=f"2.25.{k}2")
        folder = root / key / "series"
        paths = write_ct_series(
            folder, n=8, header=header, defects={3: "truncated"} if case == "truncated" else {}
        )
        if case == "no_position":
            ds = pydicom.dcmread(paths[3])
            del ds.ImagePositionPatient
            ds.save_as(paths[3])
        elif case == "other_size":  # the same slice, written at 8x8
            small = write_ct_series(tmp_path / "small", n=8, rows=8, header=header)
            shutil.copyfile(small[3], paths[3])
    out = tmp_path / "out"
    counts = ingest(root, tree_labels(tmp_path, dict.fromkeys(cases, 1)), out)
    assert (counts["studies_converted"], counts["files_converted"], counts["files_dropped_at_ingest"]) == (
        3,
        21,
        3,
    )
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("name")
    assert (manifest["n_slices"] == 7).all()
    assert manifest["flags"].str.startswith("irregular slice spacing: 1 gap(s)").all()
    outcomes = outcomes_of(out)
    reasons = {key: outcomes.loc[f"{key}/series/CT0003.dcm", "reason"] for key in cases}
    assert reasons["P1/s1"] == "missing or malformed ImagePositionPatient"
    assert reasons["P2/s1"] == "Rows/Columns 8x8 differ from the series' 16x16"
    assert reasons["P3/s1"].startswith("cannot decode pixel data: truncated")
    assert (
        outcomes.loc[[f"{key}/series/CT0003.dcm" for key in cases], "outcome"] == "dropped_at_ingest"
    ).all()


def test_contrast_words_and_tags_of_real_names_choose_the_plain_series(tmp_path: Path) -> None:
    """Oral and IV contrast at the preferred 5 mm, a "CT 5mm" whose header records an IV bolus, and a
    thin plain series: the thin plain one is chosen."""
    root = tmp_path / "archive"
    names = {"oral": ("CT ORAL IV", 5.0), "tagged": ("CT 5mm", 5.0), "thin": ("CT PLAIN THIN", 2.5)}
    for k, (folder, (description, thickness)) in enumerate(names.items()):
        header = ct_header(series_uid=f"2.25.3{k}", series_number=k + 2, series_description=description,
                           slice_thickness=thickness)  # fmt: skip
        paths = write_ct_series(root / "P1" / "s1" / folder, n=4, header=header, step_mm=thickness)
        for path in paths if folder == "tagged" else []:
            edit(path, ContrastBolusRoute="IV")
    assert scan(root, tree_labels(tmp_path, {"P1/s1": 0}), tmp_path / "out") == 0
    series = pd.read_parquet(tmp_path / "out" / "scan" / "series.parquet").set_index("unit")
    assert series.loc["P1/s1/thin", "rank"] == 0
    assert (
        series.loc["P1/s1/oral", "why"]
        == "not a candidate: contrast series (description 'CT ORAL IV' says 'IV')"
    )
    assert series.loc["P1/s1/tagged", "class_why"] == "contrast tag ContrastBolusRoute=IV"
