"""The cases a hostile copy of a real archive holds that ingest once handled silently: each ends
in a report with its reason, and the counts reconcile row by row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ct_header, demo_config, write_ct_series

from ct25d.cli import main
from ct25d.errors import Ct25dError
from ct25d.synth.dicom_writer import SliceGeometry, write_secondary_capture
from ct25d.volumes.report import file_outcomes, reconcile, series_outcomes

SETTINGS = json.dumps(demo_config()["ingest"])
# A hospital tree keyed by <patient>/<study> folders, as config.yaml's dataset `hospital`.
TREE = {"layout": "dicom_tree", "role": "train", "label_key": "folder",
        "folder_pattern": "^(?P<study>[^/]+/[^/]+)/"}  # fmt: skip


def scan(root: Path, labels: dict[str, int], out: Path, dataset: dict = TREE) -> int:
    """`ct25d scan` of `root` with study labels {folder key: any}; its exit status."""
    out.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{key},{value}\n" for key, value in labels.items())
    (out / "labels.csv").write_text("study,any\n" + rows)
    return main(["scan", "--root", str(root), "--dataset", json.dumps(dataset), "--labels",
                 str(out / "labels.csv"), "--shards", "1", "--settings", SETTINGS,
                 "--out", str(out / "scan")])  # fmt: skip


def ingest(root: Path, labels: dict[str, int], out: Path) -> dict:
    """Scan, convert (one shard) and report; the reconciled counts."""
    assert scan(root, labels, out) == 0
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
    counts = ingest(root, {"P1/s1": 0}, out)
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
    assert scan(root, {"P1/s1": 1}, tmp_path / "out") == 2
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
