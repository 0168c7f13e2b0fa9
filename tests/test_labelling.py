"""Labels that match nothing stop the scan of a training dataset with the numbers and sample keys
on both sides; partial matches are reported; dicom_tree labels key by UID or by folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from conftest import demo_config, write_ct_series

from ct25d.cli import main
from ct25d.dicom.headers import pseudonym
from ct25d.labels import RSNA_LABELS

SETTINGS = demo_config()["ingest"]


def scan(root: Path, labels: Path, out: Path, **dataset: str) -> int:
    entry = {"role": "train", **dataset}
    return main(["scan", "--root", str(root), "--dataset", json.dumps(entry), "--labels", str(labels),
                 "--shards", "1", "--settings", json.dumps(SETTINGS), "--out", str(out)])  # fmt: skip


def test_rsna_labels_that_match_nothing_stop_the_scan(cohorts, tmp_path: Path, caplog) -> None:
    labels = pd.read_csv(cohorts["rsna"] / "stage_2_train.csv")
    labels["ID"] = labels["ID"].str.replace("ID_", "ID_f", regex=False)  # another archive's IDs
    labels.to_csv(tmp_path / "other.csv", index=False)
    assert (
        scan(cohorts["rsna"] / "stage_2_train", tmp_path / "other.csv", tmp_path / "scan", layout="rsna") == 2
    )
    assert not (tmp_path / "scan" / "studies.parquet").exists()
    message = caplog.records[-1].getMessage()
    assert "labels match 0 of 14 studies (0%)" in message
    assert "ingest.min_label_match = 0.9" in message
    assert "e.g. files ['ID_" in message and "unmatched label keys, e.g. ['ID_f" in message


def test_external_dataset_is_warned_and_partial_matches_are_counted(cohorts, tmp_path: Path, caplog) -> None:
    reads = pd.read_csv(cohorts["cq500"] / "reads.csv")
    reads.iloc[:3].to_csv(tmp_path / "reads.csv", index=False)  # 3 of the 10 studies read
    assert (
        scan(cohorts["cq500"], tmp_path / "reads.csv", tmp_path / "ext", layout="cq500", role="external") == 0
    )
    match = json.loads((tmp_path / "ext" / "label_match.json").read_text())
    assert (match["studies"], match["studies_labelled"], match["fraction"]) == (10, 3, 0.3)
    assert "labels match 3 of 10 studies" in match["warning"]
    assert scan(cohorts["cq500"], tmp_path / "reads.csv", tmp_path / "train", layout="cq500") == 2
    assert "labels match 3 of 10 studies" in caplog.records[-1].getMessage()


def test_dicom_tree_labels_keyed_by_study_uid(cohorts, tmp_path: Path) -> None:
    studies = pd.read_parquet(cohorts["dicom_tree"] / "truth" / "studies.parquet")
    table = studies[["study_uid", *RSNA_LABELS]].rename(columns={"study_uid": "study"})
    table.to_csv(tmp_path / "by_uid.csv", index=False)
    assert scan(cohorts["dicom_tree"] / "archive", tmp_path / "by_uid.csv", tmp_path / "scan",
                layout="dicom_tree", label_key="StudyInstanceUID") == 0  # fmt: skip
    scanned = pd.read_parquet(tmp_path / "scan" / "studies.parquet").set_index("study_id")
    expected = studies.assign(
        study_id=studies["study_uid"].map(lambda u: pseudonym(u, SETTINGS["pseudonym_salt"], "st-"))
    )
    expected = expected.set_index("study_id")
    for label in RSNA_LABELS:
        assert (scanned[label].astype(int) == expected.loc[scanned.index, label]).all(), label
    assert scanned["has_labels"].all() and (scanned["name"] == "").all()  # no raw UID kept
    raw = b"".join(p.read_bytes() for p in (tmp_path / "scan").iterdir())
    assert not any(uid.encode() in raw for uid in studies["study_uid"])


def test_a_folder_key_that_spans_two_studies_is_refused(cohorts, tmp_path: Path, caplog) -> None:
    root = tmp_path / "archive"
    shutil.copytree(cohorts["dicom_tree"] / "archive", root)
    write_ct_series(root / "P00000" / "extra", n=3)  # another study (its own UIDs) in a patient folder
    (tmp_path / "labels.csv").write_text("study,any\nP00000,1\n")
    assert scan(root, tmp_path / "labels.csv", tmp_path / "scan", layout="dicom_tree", label_key="folder",
                folder_pattern="^(?P<study>[^/]+)/") == 2  # fmt: skip
    assert "label key 'P00000' matches 2 studies" in caplog.records[-1].getMessage()


def test_an_unlabelled_dataset_is_scanned_without_labels(cohorts, tmp_path: Path) -> None:
    """Role predict: no label file; every label is unknown (NA, never 0), studies keep their folder
    names, and nothing is matched or warned about. A label file given to it is refused."""
    pattern = "^(?P<study>[^/]+/[^/]+)/"
    entry = {"layout": "dicom_tree", "role": "predict", "label_key": "folder", "folder_pattern": pattern}
    args = ["scan", "--root", str(cohorts["dicom_tree"] / "archive"), "--dataset", json.dumps(entry),
            "--shards", "1", "--settings", json.dumps(SETTINGS), "--out", str(tmp_path / "scan")]  # fmt: skip
    assert main(args) == 0
    scanned = pd.read_parquet(tmp_path / "scan" / "studies.parquet")
    assert len(scanned) == 8 and not scanned["has_labels"].any()
    assert scanned[list(RSNA_LABELS)].isna().all().all()
    assert scanned["name"].str.fullmatch(r"P\d{5}/\d{3}_[^/]+").all()  # <patient>/<study> folders
    match = json.loads((tmp_path / "scan" / "label_match.json").read_text())
    assert match["studies_labelled"] == 0 and "warning" not in match
    labels = cohorts["dicom_tree"] / "labels.csv"
    assert scan(cohorts["dicom_tree"] / "archive", labels, tmp_path / "again", **entry) == 2
