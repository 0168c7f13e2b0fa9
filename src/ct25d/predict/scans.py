"""What ingest recorded of each study, beside its prediction: the series used (`series_choice.csv`),
whether gantry tilt was corrected, missing slices, the files set aside (`rejections.csv`), and for a
study without a prediction, why. A prediction is only as good as the scan it read, and a reader of
`studies.csv` must see both in one row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ct25d.dicom.series import TILT_EPS_DEG

SERIES_COLUMNS = ["study_id", "unit", "series_description", "series_class", "slice_thickness", "kernel"]
COLUMNS = [
    "study_id", "name", "series", "series_description", "series_class", "slice_thickness", "kernel",
    "n_slices", "tilt_deg", "tilt_corrected", "gaps", "files_rejected", "flags", "problem",
]  # fmt: skip


def study_records(
    scanned: pd.DataFrame,
    manifest: pd.DataFrame,
    choice: pd.DataFrame,
    rejections: pd.DataFrame,
    skipped: pd.DataFrame,
    tilt: str,
) -> pd.DataFrame:
    """One row per study the scan found (`scanned`: scan/studies.parquet): `series` (the unit
    converted, as series_choice.csv names it), `tilt_corrected` (tilt found and `ingest.tilt` was
    correct), `gaps` (missing slices: gaps in the spacing), `files_rejected` (images of the study set
    aside at ingest, or at scan inside the study's folder), the manifest's `flags`, and `problem`: why
    a study has no volume or no slices."""
    used = choice[choice["outcome"] == "converted"][SERIES_COLUMNS].drop_duplicates("study_id")
    volumes = manifest[["study_id", "n_slices", "tilt_deg", "flags"]]
    out = (
        scanned[["study_id", "name"]]
        .merge(used, on="study_id", how="left")
        .merge(volumes, on="study_id", how="left")
    )
    out = out.rename(columns={"unit": "series"})
    tilted = out["tilt_deg"].astype(float).fillna(0) > TILT_EPS_DEG
    out["tilt_corrected"] = tilted & (tilt == "correct")
    gaps = out["flags"].fillna("").str.extract(r"(\d+) gap\(s\)", expand=False)
    out["gaps"] = pd.to_numeric(gaps).fillna(0).astype("int64")
    files = rejections[rejections["level"] == "file"]
    dropped = files.groupby("study_id").size()
    out["files_rejected"] = out["study_id"].map(dropped).fillna(0).astype("int64")
    out["files_rejected"] += out["study_id"].map(_scan_rejected(files, choice)).fillna(0).astype("int64")
    failed = (
        rejections[rejections["level"] == "study"].drop_duplicates("study_id").set_index("study_id")["reason"]
    )
    not_sliced = skipped.drop_duplicates("study_id").set_index("study_id")["reason"]
    problem = out["study_id"].map(failed).fillna(out["study_id"].map(not_sliced))
    out["problem"] = problem.fillna("")
    out["flags"] = out["flags"].fillna("")
    out["n_slices"] = out["n_slices"].astype("Int64")
    return out[COLUMNS].sort_values("study_id", ignore_index=True)


def ingest_records(ingest: Path, skipped: pd.DataFrame) -> pd.DataFrame:
    """`study_records` of a dataset's ingest folder (results/<dataset>: scan/, manifest.parquet,
    series_choice.csv, rejections.csv); `skipped`: its studies without slices (study_id, reason)."""
    scan_settings = json.loads((ingest / "scan" / "settings.json").read_text())["settings"]
    return study_records(
        pd.read_parquet(ingest / "scan" / "studies.parquet", columns=["study_id", "name"]),
        pd.read_parquet(ingest / "manifest.parquet"),
        pd.read_csv(ingest / "series_choice.csv", dtype=str, keep_default_na=False),
        pd.read_csv(ingest / "rejections.csv", dtype=str, keep_default_na=False),
        skipped,
        str(scan_settings["tilt"]),
    )


def study_folders(choice: pd.DataFrame) -> pd.Series:
    """study_id -> the folder holding its series (the parent of their folders), where the series are
    folders (not RSNA's flat files) and no other study shares it."""
    folders = choice["unit"].str.replace(r" \[.*\]$", "", regex=True).map(os.path.dirname)
    per_study = folders.groupby(choice["study_id"]).agg(
        lambda f: os.path.commonpath(list(f)) if all(f) else ""
    )
    per_study = per_study[per_study != ""]
    return per_study[~per_study.duplicated(keep=False)]


def _scan_rejected(files: pd.DataFrame, choice: pd.DataFrame) -> pd.Series:
    """study_id -> files the scan set aside (no study known then: no HU, no pixels) in its folder."""
    unassigned = files.loc[files["study_id"] == "", "path"]
    return pd.Series({study: int(unassigned.str.startswith(folder + os.sep).sum())
                      for study, folder in study_folders(choice).items()}, dtype="int64")  # fmt: skip
