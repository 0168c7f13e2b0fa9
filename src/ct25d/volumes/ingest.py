"""Convert one shard of studies: try each study's ranked series until one becomes a volume.

Runs studies in parallel worker processes; the parent alone writes the shard store (zarr shards
must never have two writers). Every study ends converted or rejected with its reasons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from ct25d.dicom.files import relative_paths
from ct25d.dicom.headers import SliceHeader
from ct25d.dicom.scan import grouped_headers
from ct25d.dicom.series import (
    TILT_EPS_DEG,
    GeometryRules,
    ScratchVolume,
    SortedSeries,
    Volume,
    load_volume,
    sort_series,
)
from ct25d.errors import SeriesError
from ct25d.labels import RSNA_LABELS
from ct25d.volumes.store import HUCodec, hu_store_writer
from ct25d.volumes.tilt import correct_tilt


@dataclass
class StudyJob:
    study_id: str
    candidates: list[tuple[str, list[SliceHeader]]]  # (series unit, its files' headers) in rank order


@dataclass
class StudyOutcome:
    study_id: str
    volume: Volume | None
    unit: str | None
    rank: int | None
    failures: list[tuple[str, str, str]]  # (unit, path, reason) of series that failed
    # (unit, path, frame, reason) of every image set aside, from the converted series and the failed ones
    dropped: list[tuple[str, str, int, str]]


def convert_study(
    job: StudyJob, root: Path, rules: GeometryRules, scratch: ScratchVolume | None = None
) -> StudyOutcome:
    """Try the study's candidate series in rank order; the first that converts wins.

    A tilted series is corrected here when `rules.tilt` says so. With `scratch` the volume lives in
    its buffer, valid until the next call.
    """
    failures: list[tuple[str, str, str]] = []
    dropped: list[tuple[str, str, int, str]] = []
    prefix = os.path.join(str(root), "")

    def where(path: str | None) -> str:
        return str(Path(path).relative_to(root)) if path else ""

    def why(reason: str) -> str:  # reasons name other files by the path ingest read them at
        return reason.replace(prefix, "")

    for rank, (unit, headers) in enumerate(job.candidates):
        try:
            series = sort_series(headers, rules)
            volume, set_aside = load_volume(series, rules, scratch)
        except SeriesError as exc:
            failures.append((unit, where(exc.path), why(exc.reason)))
            dropped += [(unit, where(e.path), e.frame, why(e.reason)) for e in exc.dropped]
            continue
        dropped += [(unit, where(e.path), e.frame, why(e.reason)) for e in set_aside]
        if rules.tilt == "correct" and volume.series.tilt_deg > TILT_EPS_DEG:
            volume = correct_tilt(volume)
        return StudyOutcome(job.study_id, volume, unit, rank, failures, dropped)
    return StudyOutcome(job.study_id, None, None, None, failures, dropped)


def study_jobs(
    files: pd.DataFrame, series: pd.DataFrame, study_ids: list[str], root: Path
) -> Iterator[StudyJob]:
    """Jobs for the given studies with their candidate series in rank order."""
    by_unit = grouped_headers(files, root)
    candidates = series[series["rank"] >= 0].sort_values(["study_id", "rank"])
    per_study = candidates.groupby("study_id")["unit"].apply(list).to_dict()
    for study_id in study_ids:
        units = per_study.get(study_id, [])
        yield StudyJob(study_id, [(u, by_unit[(study_id, u)]) for u in units])


VOLUME_COLUMNS = [
    "study_id", "patient_id", "series_id", "unit", "series_description", "candidate_rank",
    "n_slices", "rows", "columns", "spacing_z", "spacing_y", "spacing_x", "tilt_deg", "flags",
]  # fmt: skip
REJECTION_COLUMNS = ["level", "study_id", "unit", "path", "frame", "reason"]


def rejection(
    level: str, study_id: str, unit: str, path: str, reason: str, frame: int = -1
) -> dict[str, Any]:
    """One row of a rejection report; `frame` >= 0 names an image within a multi-frame file."""
    return {
        "level": level,
        "study_id": study_id,
        "unit": unit,
        "path": path,
        "frame": frame,
        "reason": reason,
    }


def _rejection_rows(outcome: StudyOutcome, notes: list[str]) -> list[dict[str, Any]]:
    """Rows for the study's failed series and set-aside images, and for the study when it failed;
    `notes` say why its other series were never candidates, or why it has none."""
    rows = [
        rejection("series", outcome.study_id, unit, path, reason) for unit, path, reason in outcome.failures
    ]
    rows += [rejection("file", outcome.study_id, unit, path, reason, frame)
             for unit, path, frame, reason in outcome.dropped]  # fmt: skip
    if outcome.volume is None:
        why = [f"{unit}: {r}" for unit, _, r in outcome.failures] + notes
        rows.append(
            rejection("study", outcome.study_id, "", "", "no series could be converted; " + "; ".join(why))
        )
    return rows


def excluded_rows(series: pd.DataFrame, study_ids: list[str]) -> list[dict[str, Any]]:
    """Series that were never candidates (contrast, bone, scouts...): reported, not silently dropped."""
    excluded = series[(series["rank"] < 0) & series["study_id"].isin(study_ids)]
    return [rejection("excluded", r.study_id, r.unit, r.path, r.excluded) for r in excluded.itertuples()]


def _volume_row(outcome: StudyOutcome, patient_id: str) -> dict[str, Any]:
    volume = outcome.volume
    assert volume is not None
    first, (dz, dy, dx) = volume.series.headers[0], volume.series.spacing_zyx
    z, y, x = volume.hu.shape
    return {
        "study_id": outcome.study_id, "patient_id": patient_id, "series_id": first.series_id,
        "unit": outcome.unit, "series_description": first.series_description,
        "candidate_rank": outcome.rank, "n_slices": z, "rows": y, "columns": x,
        "spacing_z": dz, "spacing_y": dy, "spacing_x": dx,
        "tilt_deg": volume.series.tilt_deg, "flags": "; ".join(volume.series.flags),
    }  # fmt: skip


def ingest_shard(
    root: str | Path,
    files: pd.DataFrame,
    series: pd.DataFrame,
    studies: pd.DataFrame,
    store_path: str | Path,
    provenance: dict[str, Any],
    rules: GeometryRules,
    codec: HUCodec,
    workers: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Convert the given studies into `store_path`; return (volumes, slices, rejections) tables."""
    root = Path(root)
    study_ids = sorted(studies["study_id"])
    patients = studies.set_index("study_id")["patient_id"].to_dict()
    volumes: list[dict[str, Any]] = []
    slices = SliceRows(files, root)
    rejections = excluded_rows(series, study_ids)
    notes: dict[str, list[str]] = {}
    for row in rejections:
        notes.setdefault(row["study_id"], []).append(f"not a candidate: {row['unit']} ({row['reason']})")
    for study_id, problem in zip(studies["study_id"], studies["problem"], strict=True):
        if problem:  # a study folder without images
            notes.setdefault(study_id, []).append(problem)
    with hu_store_writer(store_path, provenance, codec) as store:
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        jobs = study_jobs(files, series, study_ids, root)
        if pool:
            outcomes = pool.map(partial(convert_study, root=root, rules=rules), jobs)
        else:  # lazily, one study at a time: each volume is written before the next reuses the scratch
            outcomes = map(partial(convert_study, root=root, rules=rules, scratch=ScratchVolume()), jobs)
        try:
            for outcome in tqdm(outcomes, total=len(study_ids), desc="ingest", unit="study", mininterval=2.0):
                rejections.extend(_rejection_rows(outcome, notes.get(outcome.study_id, [])))
                if outcome.volume is None:
                    continue
                row = _volume_row(outcome, patients[outcome.study_id])
                attrs = {
                    **outcome.volume.attrs(),
                    **{k: row[k] for k in ("series_id", "series_description", "patient_id")},
                }
                store.write(outcome.study_id, outcome.volume.hu, attrs)
                volumes.append(row)
                slices.add(outcome.study_id, outcome.volume.series)
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
    return (
        pd.DataFrame(volumes, columns=VOLUME_COLUMNS),
        slices.table(),
        pd.DataFrame(rejections, columns=REJECTION_COLUMNS),
    )


class SliceRows:
    """The slice table of the converted studies, gathered per study and built with one pandas
    selection at the end (per-study DataFrame operations cost more than decoding).

    Each row names its image (`path`, `frame`): two files can share a SOPInstanceUID, hence a
    slice_id, and the report must tell the stored one from its set-aside copy.
    """

    def __init__(self, files: pd.DataFrame, root: Path) -> None:
        self._files = files
        self._root = root
        self._columns: dict[str, list[Any]] = {
            "path": [],
            "frame": [],
            "study_id": [],
            "z": [],
            "position_mm": [],
        }

    def add(self, study_id: str, series: SortedSeries) -> None:
        n = len(series.headers)
        self._columns["path"] += [h.path for h in series.headers]
        self._columns["frame"] += [h.frame for h in series.headers]
        self._columns["study_id"] += [study_id] * n
        self._columns["z"] += range(n)
        self._columns["position_mm"] += list(series.positions_mm)

    def table(self) -> pd.DataFrame:
        paths = relative_paths(pd.Series(self._columns["path"], dtype=str), self._root)
        images = pd.MultiIndex.from_arrays([self._files["path"], self._files["frame"]])
        wanted = pd.MultiIndex.from_arrays([paths, pd.Series(self._columns["frame"], dtype="int64")])
        picked = self._files.iloc[images.get_indexer(wanted)]
        table = pd.DataFrame(
            {
                "path": paths.array,
                "frame": pd.Series(self._columns["frame"], dtype="int64"),
                "study_id": pd.Series(self._columns["study_id"], dtype="str"),
                "z": pd.Series(self._columns["z"], dtype="int64"),
                "slice_id": picked["slice_id"].astype("str").array,
                "position_mm": pd.Series(self._columns["position_mm"], dtype="float64"),
            }
        )
        for label in RSNA_LABELS:
            table[label] = picked[label].astype("Int8").array  # nullable: CQ500 has no slice labels
        return table
