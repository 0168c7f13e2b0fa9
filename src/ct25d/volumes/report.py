"""Gather a dataset's shard outputs into one manifest, and account for every file, series and study.

Three readable reports come out of it: `rejections.csv` (each file, series or study set aside,
with its own reason), `series_choice.csv` (every series of every study: its class, rank, what
became of it and why) and `file_outcomes.parquet` (one row per image: converted, or why not).
The counts in `ingest_summary.json` must reconcile at every level or the step fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ct25d.errors import Ct25dError
from ct25d.labels import RSNA_LABELS
from ct25d.volumes.ingest import REJECTION_COLUMNS

OUTCOMES = ("converted", "rejected_at_scan", "dropped_at_ingest", "in_excluded_series", "in_failed_series",
            "in_unneeded_series")  # fmt: skip
CHOICE_COLUMNS = [
    "study_id", "name", "unit", "series_description", "series_class", "class_why", "slice_thickness",
    "kernel", "kernel_kind", "n_files", "rank", "outcome", "why",
]  # fmt: skip


def series_outcomes(series: pd.DataFrame, volumes: pd.DataFrame, rejections: pd.DataFrame) -> pd.Series:
    """What became of each series: converted, failed (with reason), excluded, or not needed."""
    converted = set(zip(volumes["study_id"], volumes["unit"], strict=True))
    failed = rejections[rejections["level"] == "series"].set_index(["study_id", "unit"])["reason"]
    failed = failed[~failed.index.duplicated()]
    outcome = []
    for row in series.itertuples():
        key = (row.study_id, row.unit)
        if key in converted:
            outcome.append("converted")
        elif key in failed.index:
            outcome.append(f"failed: {failed.loc[key]}")
        elif row.rank < 0:
            outcome.append("excluded")
        else:
            outcome.append("not needed: a higher-ranked series converted")
    return pd.Series(outcome, index=series.index)


def file_outcomes(
    files: pd.DataFrame, series: pd.DataFrame, slices: pd.DataFrame, rejections: pd.DataFrame,
    scan_rejected: pd.DataFrame,
) -> pd.DataFrame:  # fmt: skip
    """One row per image (a file, or a frame of a multi-frame file): its outcome and reason."""
    table = files[["path", "frame", "study_id", "unit", "slice_id"]].copy()
    status = series.set_index(["study_id", "unit"])[["outcome", "excluded"]]
    unit_status = pd.MultiIndex.from_frame(table[["study_id", "unit"]])
    table["series_outcome"] = status["outcome"].reindex(unit_status).to_numpy()
    table["series_excluded"] = status["excluded"].reindex(unit_status).to_numpy()
    dropped = rejections[rejections["level"] == "file"].astype({"frame": "int64"})
    dropped = dropped.drop_duplicates(["path", "frame"]).set_index(["path", "frame"])["reason"]
    image = pd.MultiIndex.from_frame(table[["path", "frame"]])
    table["drop_reason"] = dropped.reindex(image).to_numpy()
    converted = image.isin(pd.MultiIndex.from_frame(slices[["path", "frame"]]))  # by image: see SliceRows
    failed = table["series_outcome"].str.startswith("failed")
    table["outcome"] = "in_unneeded_series"
    table.loc[table["series_outcome"] == "excluded", "outcome"] = "in_excluded_series"
    table.loc[failed, "outcome"] = "in_failed_series"
    table.loc[table["drop_reason"].notna(), "outcome"] = "dropped_at_ingest"
    table.loc[converted, "outcome"] = "converted"
    table["reason"] = table["drop_reason"].where(table["outcome"] == "dropped_at_ingest", "")
    table.loc[table["outcome"] == "in_excluded_series", "reason"] = table["series_excluded"]
    table.loc[table["outcome"] == "in_failed_series", "reason"] = table["series_outcome"]
    table.loc[table["outcome"] == "in_unneeded_series", "reason"] = table["series_outcome"]
    scan = scan_rejected.assign(frame=-1, study_id="", unit="", outcome="rejected_at_scan")
    out = pd.concat(
        [table[["path", "frame", "study_id", "unit", "outcome", "reason"]], scan], ignore_index=True
    )
    return out.sort_values(["path", "frame"], ignore_index=True)


def _check_converted_series(outcomes: pd.DataFrame, series: pd.DataFrame) -> None:
    """Every image of a converted series is a slice or was dropped with its reason, never lost."""
    converted_units = series.loc[series["outcome"] == "converted", ["study_id", "unit"]]
    lost = outcomes.merge(converted_units, on=["study_id", "unit"])
    lost = lost[lost["outcome"] == "in_unneeded_series"]
    if len(lost):
        raise Ct25dError(f"{len(lost)} image(s) of a converted series are neither slices nor dropped, "
                         f"e.g. {lost['path'].iloc[0]}")  # fmt: skip


def _images(table: pd.DataFrame) -> set[tuple[str, int]]:
    return set(zip(table["path"], table["frame"].astype(int), strict=True))


def _check_image_rows(outcomes: pd.DataFrame, slices: pd.DataFrame, rejections: pd.DataFrame) -> None:
    """The images called converted are the stored slices, and those called dropped are the file rows
    of the rejections, one for one: equal sums can hide an image counted on the wrong side."""
    stored = _images(slices)
    if len(stored) != len(slices):
        raise Ct25dError(f"{len(slices) - len(stored)} image(s) stored as more than one slice")
    sides = {
        "converted": stored,
        "dropped_at_ingest": _images(rejections[rejections["level"] == "file"]),
    }
    for outcome, expected in sides.items():
        said = _images(outcomes[outcomes["outcome"] == outcome])
        if said != expected:
            path, frame = sorted(said ^ expected)[0]
            where = "the outcome table" if (path, frame) in said else "the shard outputs"
            raise Ct25dError(
                f"file outcomes do not reconcile: {path} (frame {frame}) is {outcome} only in {where} "
                f"({len(said)} {outcome} image(s) in the outcome table, {len(expected)} in the shard outputs)"
            )


def reconcile(
    outcomes: pd.DataFrame, series: pd.DataFrame, studies: pd.DataFrame, volumes: pd.DataFrame,
    slices: pd.DataFrame, rejections: pd.DataFrame,
) -> dict[str, Any]:  # fmt: skip
    """Counts per level; raise if inputs != converted + set aside at the file, series or study level,
    or if the images behind the file counts are not the stored slices and the dropped files."""
    _check_converted_series(outcomes, series)
    _check_image_rows(outcomes, slices, rejections)
    by_outcome = outcomes["outcome"].value_counts()
    counts: dict[str, Any] = {"files_found": len(outcomes)}
    counts.update({f"files_{name}": int(by_outcome.get(name, 0)) for name in OUTCOMES})
    if sum(counts[f"files_{name}"] for name in OUTCOMES) != counts["files_found"]:
        raise Ct25dError(f"file counts do not reconcile: {counts}")
    kinds = series["outcome"].str.split(":").str[0].value_counts()
    counts.update({
        "series_found": len(series),
        "series_converted": int(kinds.get("converted", 0)),
        "series_failed": int(kinds.get("failed", 0)),
        "series_excluded": int(kinds.get("excluded", 0)),
        "series_not_needed": int(kinds.get("not needed", 0)),
    })  # fmt: skip
    parts = ("series_converted", "series_failed", "series_excluded", "series_not_needed")
    if counts["series_found"] != sum(counts[k] for k in parts):
        raise Ct25dError(f"series counts do not reconcile: {counts}")
    study_rejected = rejections[rejections["level"] == "study"]
    converted, rejected = set(volumes["study_id"]), set(study_rejected["study_id"])
    counts.update(
        studies_found=len(studies), studies_converted=len(converted), studies_rejected=len(rejected)
    )
    lost = set(studies["study_id"]) - converted - rejected
    if lost or converted & rejected or len(converted) + len(rejected) != len(studies):
        raise Ct25dError(
            f"study counts do not reconcile: {counts['studies_found']} found, {len(converted)} converted, "
            f"{len(rejected)} rejected, unaccounted: {sorted(lost)[:5]}"
        )
    return counts


def _read_shards(shard_prefixes: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    volumes = pd.concat([pd.read_parquet(f"{p}.volumes.parquet") for p in shard_prefixes], ignore_index=True)
    slices = pd.concat([pd.read_parquet(f"{p}.slices.parquet") for p in shard_prefixes], ignore_index=True)
    rejections = pd.concat(
        [pd.read_csv(f"{p}.rejections.csv", dtype=str, keep_default_na=False) for p in shard_prefixes],
        ignore_index=True,
    )
    return volumes, slices, rejections.astype({"frame": "int64"})


def gather(scan_dir: str | Path, shard_prefixes: list[str | Path]) -> dict[str, Any]:
    """The dataset's reports from its scan folder and shard outputs: `manifest`, `slices`,
    `rejections`, `series_choice`, `file_outcomes` (tables) and `counts`."""
    scan_dir = Path(scan_dir)
    volumes, slices, shard_rejections = _read_shards(shard_prefixes)
    files = pd.read_parquet(
        scan_dir / "files.parquet", columns=["path", "frame", "study_id", "unit", "slice_id"]
    )
    series = pd.read_parquet(scan_dir / "series.parquet")
    studies = pd.read_parquet(scan_dir / "studies.parquet")
    scan_rejected = pd.read_csv(scan_dir / "rejected_files.csv", dtype=str, keep_default_na=False)
    series["outcome"] = series_outcomes(series, volumes, shard_rejections)
    outcomes = file_outcomes(files, series, slices, shard_rejections, scan_rejected)
    counts = reconcile(outcomes, series, studies, volumes, slices, shard_rejections)
    counts["labels"] = json.loads((scan_dir / "label_match.json").read_text())

    manifest = volumes.merge(studies.drop(columns=["patient_id", "problem"]), on="study_id", how="left")
    manifest = manifest.sort_values("study_id").reset_index(drop=True)
    counts["label_positive_studies"] = {
        label: int(manifest[label].fillna(0).astype(int).sum()) for label in RSNA_LABELS if label in manifest
    }
    scan_rows = scan_rejected.assign(level="file", study_id="", unit="", frame=-1)
    rejections = pd.concat([scan_rows, shard_rejections], ignore_index=True)[REJECTION_COLUMNS]
    names = studies.set_index("study_id")["name"] if "name" in studies else pd.Series(dtype=str)
    choice = series.assign(name=series["study_id"].map(names).fillna(""))[CHOICE_COLUMNS]
    return {
        "manifest": manifest,
        "slices": slices.drop(columns=["path", "frame"]).sort_values(["study_id", "z"], ignore_index=True),
        "rejections": rejections,
        "series_choice": choice,
        "file_outcomes": outcomes,
        "counts": counts,
    }
