"""Gather a dataset's shard outputs into one manifest and check that every study is accounted for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ct25d.errors import Ct25dError
from ct25d.labels import RSNA_LABELS


def reconcile(scan_dir: Path, volumes: pd.DataFrame, rejections: pd.DataFrame) -> dict[str, Any]:
    """Counts per level; raise if inputs != converted + rejected at the file or study level."""
    files = pd.read_parquet(scan_dir / "files.parquet", columns=["path"])
    rejected_files = pd.read_csv(scan_dir / "rejected_files.csv")
    studies = pd.read_parquet(scan_dir / "studies.parquet", columns=["study_id"])
    series = pd.read_parquet(scan_dir / "series.parquet", columns=["study_id", "rank"])
    study_rejected = rejections[rejections["level"] == "study"]
    levels = rejections["level"].value_counts()
    counts = {
        "files_found": len(files) + len(rejected_files),
        "files_grouped": len(files),
        "files_rejected_at_scan": len(rejected_files),
        "files_dropped_at_ingest": int(levels.get("file", 0)),
        "studies_found": len(studies),
        "studies_converted": len(volumes),
        "studies_rejected": len(study_rejected),
        "series_found": len(series),
        "series_converted": len(volumes),
        "series_failed": int(levels.get("series", 0)),
        "series_excluded": int(levels.get("excluded", 0)),
    }
    # Lower-ranked healthy alternatives of a converted study are never opened.
    used = counts["series_converted"] + counts["series_failed"] + counts["series_excluded"]
    counts["series_not_needed"] = counts["series_found"] - used
    if counts["series_excluded"] != int((series["rank"] < 0).sum()) or counts["series_not_needed"] < 0:
        raise Ct25dError(f"series counts do not reconcile: {counts}")
    converted, rejected = set(volumes["study_id"]), set(study_rejected["study_id"])
    lost = set(studies["study_id"]) - converted - rejected
    if lost or converted & rejected or len(converted) + len(rejected) != len(studies):
        raise Ct25dError(
            f"study counts do not reconcile: {counts['studies_found']} found, {len(converted)} converted, "
            f"{len(rejected)} rejected, unaccounted: {sorted(lost)[:5]}"
        )
    return counts


def gather(
    scan_dir: str | Path, shard_prefixes: list[str | Path]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(manifest, slices, rejections, counts) for a dataset from its scan folder and shard outputs."""
    scan_dir = Path(scan_dir)
    volumes = pd.concat([pd.read_parquet(f"{p}.volumes.parquet") for p in shard_prefixes], ignore_index=True)
    slices = pd.concat([pd.read_parquet(f"{p}.slices.parquet") for p in shard_prefixes], ignore_index=True)
    shard_rejections = pd.concat(
        [pd.read_csv(f"{p}.rejections.csv", dtype=str, keep_default_na=False) for p in shard_prefixes],
        ignore_index=True,
    )
    counts = reconcile(scan_dir, volumes, shard_rejections)
    studies = pd.read_parquet(scan_dir / "studies.parquet")
    manifest = volumes.merge(studies.drop(columns=["patient_id"]), on="study_id", how="left")
    manifest = manifest.sort_values("study_id").reset_index(drop=True)
    slices = slices.sort_values(["study_id", "z"]).reset_index(drop=True)
    scan_rejected = pd.read_csv(scan_dir / "rejected_files.csv", dtype=str, keep_default_na=False)
    scan_rejected = scan_rejected.assign(level="file", study_id="", unit="")
    rejections = pd.concat([scan_rejected, shard_rejections], ignore_index=True)
    rejections = rejections[["level", "study_id", "unit", "path", "reason"]]
    counts["label_positive_studies"] = {
        label: int(manifest[label].fillna(0).astype(int).sum()) for label in RSNA_LABELS if label in manifest
    }
    return manifest, slices, rejections, counts
