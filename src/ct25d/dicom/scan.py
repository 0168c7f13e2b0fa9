"""Scan a DICOM archive of either layout into tables of files, series and studies.

The scan reads headers only. It groups files into series, ranks each study's series by how well
they fit the config (plain, non-contrast, CT, thickness closest to the preferred one), attaches
labels, and assigns each study to a shard so that tens of thousands of studies become a handful
of Snakemake jobs. Every file ends up either in `files` or in `rejected`; nothing vanishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ct25d.dicom.headers import SliceHeader, pseudonym, read_header
from ct25d.dicom.series import GeometryRules, sort_series
from ct25d.errors import Ct25dError, SeriesError
from ct25d.labels import RSNA_LABELS, cq500_study_name, read_cq500_reads, read_rsna_labels

log = logging.getLogger(__name__)
CQ500_FOLDER = re.compile(r"CQ500CT\d+ CQ500CT\d+")
NOT_DICOM_SUFFIXES = {".csv", ".txt", ".json", ".md", ".xml", ".zip", ".parquet", ".png", ".jpg"}


@dataclass(frozen=True)
class ScanSettings:
    """Config `ingest` keys that decide grouping, choice and pseudonyms."""

    preferred_thickness_mm: float
    exclude_series: str
    pseudonym_salt: str
    geometry: GeometryRules


@dataclass
class ScanResult:
    files: pd.DataFrame  # one row per readable file
    series: pd.DataFrame  # one row per series (unit of choice), with rank or the reason it is not a candidate
    studies: pd.DataFrame  # one row per study: labels and shard
    rejected: pd.DataFrame  # one row per file dropped before grouping (unreadable header, no pixels)


def list_files(root: Path, layout: str) -> list[Path]:
    """All candidate DICOM files under `root`, sorted so the scan is deterministic.

    RSNA: the files of one flat folder. CQ500: every file below the `CQ500CT<N> CQ500CT<N>` study
    folders; other top-level entries (a reads.csv, notes) are not part of the archive and are logged.
    """
    if not root.is_dir():
        raise Ct25dError(f"DICOM root {root} does not exist or is not a folder")
    if layout == "rsna":
        found = [Path(e.path) for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")]
    else:
        studies, other = [], []
        for entry in os.scandir(root):
            if entry.name.startswith("."):
                continue
            (studies if entry.is_dir() and CQ500_FOLDER.fullmatch(entry.name) else other).append(entry.name)
        if other:
            log.warning("%s: ignoring %d top-level entries that are not CQ500 study folders: %s",
                        root, len(other), sorted(other)[:10])  # fmt: skip
        found = [
            Path(dirpath) / name
            for study in studies
            for dirpath, _, names in os.walk(root / study)
            for name in names
            if not name.startswith(".")
        ]
    return sorted(p for p in found if p.suffix.lower() not in NOT_DICOM_SUFFIXES)


def relative_paths(paths: pd.Series, root: Path) -> pd.Series:
    """Paths below `root` (as `list_files` made them) relative to it, by string: Path objects cost
    more than reading the header."""
    prefix = os.path.join(str(root), "")
    if not paths.str.startswith(prefix).all():
        raise Ct25dError(f"a scanned path is not below the DICOM root {root}")
    return paths.str.slice(len(prefix))


def _read_one(path: Path, salt: str) -> SliceHeader | tuple[str, str]:
    try:
        return read_header(path, salt)
    except SeriesError as exc:
        return (str(path), exc.reason)


def read_headers(paths: list[Path], salt: str, workers: int) -> Iterator[SliceHeader | tuple[str, str]]:
    """Headers in input order; unreadable files come back as (path, reason)."""
    job = partial(_read_one, salt=salt)
    bar = dict(total=len(paths), desc="scan headers", unit="file", mininterval=2.0)
    if workers <= 1:
        yield from tqdm(map(job, paths), **bar)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(job, paths, chunksize=256), **bar)


def shard_of(study_id: str, shards: int) -> int:
    """Stable shard assignment from the pseudonymous study id (independent of scan order)."""
    return int(hashlib.sha256(study_id.encode()).hexdigest(), 16) % shards


def geometry_problem(group: list[SliceHeader], rules: GeometryRules) -> tuple[str, str]:
    """(reason, file) why a series' headers cannot form a correct volume, ("", "") if they can.

    Checked at scan time from headers alone, so a broken alternative series is reported even when
    the study never needs it.
    """
    try:
        sort_series(group, rules)
    except SeriesError as exc:
        return exc.reason, exc.path or ""
    return "", ""


def grouped_headers(
    files: pd.DataFrame, root: Path | None = None
) -> dict[tuple[str, str], list[SliceHeader]]:
    """The files' headers per (study_id, unit), sorted by key; headers are built once for the table."""
    headers = SliceHeader.from_table(files, root)
    groups = files.groupby(["study_id", "unit"], sort=True).indices
    return {key: [headers[i] for i in index] for key, index in groups.items()}


def rank_series(files: pd.DataFrame, settings: ScanSettings) -> pd.DataFrame:
    """One row per series unit with `rank` (0 = first choice) or `excluded` naming why not."""
    exclude = re.compile(settings.exclude_series) if settings.exclude_series else None
    rows = []
    for (study_id, unit), group in grouped_headers(files).items():
        descriptions = sorted({h.series_description for h in group})
        modalities = sorted({h.modality for h in group})
        thickness = float(np.median([h.slice_thickness for h in group]))
        reason, path = "", min(h.path for h in group)
        if modalities != ["CT"]:
            reason = f"modality {'/'.join(m or '(none)' for m in modalities)} is not CT"
        elif exclude and any(exclude.search(d) for d in descriptions):
            reason = f"series description {descriptions[0]!r} matches exclude_series"
        elif any(h.contrast_agent for h in group):
            reason = "contrast agent recorded (ContrastBolusAgent)"
        elif any("LOCALIZER" in h.image_type.upper() for h in group):
            reason = "localizer images"
        else:
            reason, problem_file = geometry_problem(group, settings.geometry)
            path = problem_file or path
        rows.append(
            {
                "study_id": study_id,
                "unit": unit,
                "series_id": group[0].series_id,
                "series_description": descriptions[0],
                "path": path,  # the offending file, or the first file
                "n_files": len(group),
                "slice_thickness": thickness,
                "excluded": reason,
            }
        )
    series = pd.DataFrame(rows)
    ok = series["excluded"] == ""
    series["fit"] = np.where(ok, (series["slice_thickness"] - settings.preferred_thickness_mm).abs(), np.inf)
    series = series.sort_values(["study_id", "fit", "n_files", "unit"], ascending=[True, True, False, True])
    series["rank"] = series.groupby("study_id").cumcount().where(ok, -1).astype(int)
    return series.drop(columns="fit").reset_index(drop=True)


def series_units(files: pd.DataFrame, layout: str) -> pd.Series:
    """The unit a study's series are chosen from.

    RSNA: the SeriesInstanceUID. CQ500: the series folder; a folder that mixes several
    SeriesInstanceUIDs is split by UID (as dcm2niix does) and each part is named `folder [series]`
    so the report shows where the mix was.
    """
    if layout == "rsna":
        return files["series_id"]
    folder = files["path"].map(os.path.dirname)
    mixed = files.groupby(folder)["series_id"].transform("nunique") > 1
    return folder.where(~mixed, folder + " [" + files["series_id"] + "]")


def _attach_rsna_labels(files: pd.DataFrame, labels_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = read_rsna_labels(labels_path).rename(columns={"image_id": "sop_uid"})
    files = files.merge(labels, on="sop_uid", how="left")
    studies = files.groupby("study_id")[list(RSNA_LABELS)].max().reset_index()
    return files, studies


def _attach_cq500_labels(files: pd.DataFrame, labels_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    reads = read_cq500_reads(labels_path)
    files = files.assign(name=files["path"].map(lambda p: cq500_study_name(p.split(os.sep, 1)[0])))
    names = files.groupby("study_id")["name"].agg(lambda s: sorted(set(s)))
    clash = names[names.map(len) > 1]
    if len(clash):
        raise Ct25dError(f"study {clash.index[0]} spans CQ500 folders {clash.iloc[0]}")
    studies = pd.DataFrame({"study_id": names.index, "name": names.map(lambda v: v[0]).values})
    studies = studies.merge(reads, on="name", how="left")
    for label in RSNA_LABELS:
        files[label] = pd.NA
    return files, studies


def scan_archive(
    root: str | Path,
    layout: str,
    labels_path: str | Path,
    shards: int,
    settings: ScanSettings,
    workers: int = 1,
) -> ScanResult:
    """Scan `root` and return the tables described in the module docstring."""
    root = Path(root)
    paths = list_files(root, layout)
    if not paths:
        raise Ct25dError(f"no files found under DICOM root {root}")
    good: list[dict] = []
    bad: list[dict] = []
    for item in read_headers(paths, settings.pseudonym_salt, workers):
        if isinstance(item, SliceHeader) and not item.has_pixels:
            bad.append({"path": item.path, "reason": "no pixel data"})
        elif isinstance(item, SliceHeader):
            good.append(item.as_row())
        else:
            bad.append({"path": item[0], "reason": item[1]})
    files = pd.DataFrame(good)
    if files.empty:
        raise Ct25dError(f"none of the {len(paths)} files under {root} is a readable DICOM file")
    files["path"] = relative_paths(files["path"], root)
    if layout == "cq500":
        # A CQ500 study is its folder; the StudyInstanceUID must not split or merge folders.
        top = files["path"].map(lambda p: p.split(os.sep, 1)[0])
        files["study_id"] = top.map(lambda t: pseudonym(t, settings.pseudonym_salt, "st-"))
    files["unit"] = series_units(files, layout)
    attach = _attach_rsna_labels if layout == "rsna" else _attach_cq500_labels
    files, studies = attach(files, Path(labels_path))
    files["slice_id"] = files["sop_uid"].map(lambda u: pseudonym(u, settings.pseudonym_salt, "sl-"))
    series = rank_series(files, settings)
    patients = files.groupby("study_id")["patient_id"].first()
    studies["patient_id"] = studies["study_id"].map(patients)
    studies["shard"] = studies["study_id"].map(lambda s: shard_of(s, shards)).astype(int)
    studies["has_labels"] = studies["any"].notna()
    rejected = pd.DataFrame(bad, columns=["path", "reason"])
    if len(rejected):
        rejected["path"] = relative_paths(rejected["path"], root)
    files = files.drop(columns=["sop_uid", "name"], errors="ignore")
    return ScanResult(files=files, series=series, studies=studies, rejected=rejected)
