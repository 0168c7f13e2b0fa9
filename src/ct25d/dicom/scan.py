"""Scan a DICOM archive into tables of images, series and studies.

The scan reads headers only. It refuses images that cannot hold HU, groups images into studies and
series by the layout's rules, classifies and ranks each study's series (`ct25d.dicom.choice`),
attaches labels and checks that they match, and assigns each study to a shard so that tens of
thousands of studies become a handful of Snakemake jobs. Every file ends up either in `files` or in
`rejected` with its reason; nothing vanishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ct25d.dicom.choice import ACCEPTABLE, classify, kernel_kind, rank_series
from ct25d.dicom.files import list_files, relative_paths
from ct25d.dicom.headers import SliceHeader, file_headers, pseudonym
from ct25d.dicom.hu import hu_problem
from ct25d.dicom.labelling import LabelSource, Unread, attach_labels, check_label_match
from ct25d.dicom.override import apply_override
from ct25d.dicom.series import GeometryRules, sort_series
from ct25d.errors import ConfigError, Ct25dError, SeriesError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanSettings:
    """Config `ingest` keys that decide grouping, choice and pseudonyms."""

    preferred_thickness_mm: float
    exclude_series: str
    pseudonym_salt: str
    geometry: GeometryRules
    accept_series: tuple[str, ...] = ("plain",)
    min_label_match: float = 0.9

    def __post_init__(self) -> None:
        bad = [c for c in self.accept_series if c not in ACCEPTABLE]
        if bad or not self.accept_series:
            raise ConfigError(
                f"ingest.accept_series: {list(self.accept_series)}; expected some of {ACCEPTABLE}"
            )


class NothingToConvert(Ct25dError):
    """No file of the archive is an image that holds HU. `rejected` holds every file's reason, for
    the report a user needs to see what the archive holds instead (renderings, another modality)."""

    def __init__(self, message: str, rejected: pd.DataFrame) -> None:
        super().__init__(message)
        self.rejected = rejected


@dataclass
class ScanResult:
    files: pd.DataFrame  # one row per image (a file, or a frame of a multi-frame file)
    series: pd.DataFrame  # one row per series (unit of choice): class, rank or why not a candidate
    studies: pd.DataFrame  # one row per study: labels and shard
    rejected: pd.DataFrame  # one row per file set aside before grouping (unreadable, not HU, special)
    label_match: dict = field(default_factory=dict)  # how many studies the labels matched


def _read_one(path: str, salt: str) -> list[SliceHeader] | tuple[str, str]:
    try:
        return file_headers(path, salt)
    except SeriesError as exc:
        return (path, exc.reason)


def read_headers(paths: list[str], salt: str, workers: int) -> Iterator[list[SliceHeader] | tuple[str, str]]:
    """Each file's image headers in input order; unreadable files come back as (path, reason)."""
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


def grouped_headers(
    files: pd.DataFrame, root: Path | None = None
) -> dict[tuple[str, str], list[SliceHeader]]:
    """The images' headers per (study_id, unit), sorted by key; headers are built once for the table."""
    headers = SliceHeader.from_table(files, root)
    groups = files.groupby(["study_id", "unit"], sort=True).indices
    return {key: [headers[i] for i in index] for key, index in groups.items()}


def _series_row(group: list[SliceHeader], settings: ScanSettings, exclude: re.Pattern | None) -> dict:
    """What the choice needs to know of one series, and why it cannot be a candidate ("" if it can).

    Its images are CT and hold HU: `hu_problem` refused the others file by file.
    """
    description = sorted({h.series_description for h in group})[0]
    kernel = sorted({h.kernel for h in group})[0]
    kind = classify(description, sorted({h.image_type for h in group}), kernel,
                    next((h.contrast_agent for h in group if h.contrast_agent), ""),
                    next((h.contrast_tags for h in group if h.contrast_tags), ""))  # fmt: skip
    reason, path, flags = "", min(h.path for h in group), ""
    if exclude and exclude.search(description):
        reason = f"series description {description!r} matches ingest.exclude_series"
    elif kind.kind == "localizer":
        reason = f"localizer ({kind.why})"
    else:
        try:  # from headers alone, so a broken alternative series is reported even when never needed
            flags = "; ".join(sort_series(group, settings.geometry).flags)
        except SeriesError as exc:
            reason, path = exc.reason, exc.path or path
    return {
        "series_id": group[0].series_id,
        "series_description": description,
        "path": path,  # the offending file, or the first file
        "n_files": len(group),
        "slice_thickness": float(np.median([h.slice_thickness for h in group])),
        "kernel": kernel,
        "kernel_kind": kernel_kind(kernel),
        "series_class": kind.kind,
        "class_why": kind.why,
        "geometry_flags": flags,
        "excluded": reason,
    }


def series_table(files: pd.DataFrame, settings: ScanSettings) -> pd.DataFrame:
    """One row per series unit: class, kernel, geometry, and `excluded` naming why it is no candidate."""
    exclude = re.compile(settings.exclude_series) if settings.exclude_series else None
    rows = [
        {"study_id": study_id, "unit": unit, **_series_row(group, settings, exclude)}
        for (study_id, unit), group in grouped_headers(files).items()
    ]
    return pd.DataFrame(rows)


def series_units(files: pd.DataFrame, layout: str) -> pd.Series:
    """The unit a study's series are chosen from.

    rsna: the SeriesInstanceUID. cq500: the series folder; a folder that mixes several
    SeriesInstanceUIDs is split by UID (as dcm2niix does) and each part is named `folder [series]`
    so the report shows where the mix was. dicom_tree: the SeriesInstanceUID, named by its folder
    when the series fills one folder alone, else `folder [series]` (a series over several folders is
    one series).
    """
    if layout == "rsna":
        return files["series_id"]
    folder = files["path"].map(os.path.dirname)
    if layout == "cq500":
        mixed = files.groupby(folder)["series_id"].transform("nunique") > 1
        return folder.where(~mixed, folder + " [" + files["series_id"] + "]")
    series_per_folder = files.groupby(folder)["series_id"].transform("nunique")
    folders_per_series = folder.groupby(files["series_id"]).transform("nunique")
    common = folder.groupby(files["series_id"]).transform(lambda f: os.path.commonpath(list(f)) or ".")
    alone = (series_per_folder == 1) & (folders_per_series == 1)
    return folder.where(alone, common + " [" + files["series_id"] + "]")


def _study_ids(files: pd.DataFrame, layout: str, salt: str) -> pd.Series:
    """A CQ500 study is its folder: the StudyInstanceUID must not split or merge folders."""
    if layout != "cq500":
        return files["study_id"]
    top = files["path"].map(lambda p: p.split(os.sep, 1)[0])
    return top.map(lambda t: pseudonym(t, salt, "st-"))


def _read_archive(paths: list[str], settings: ScanSettings, workers: int) -> tuple[list[dict], list[dict]]:
    """(image rows, rejected-file rows): files that cannot hold HU never reach grouping."""
    good: list[dict] = []
    bad: list[dict] = []
    for item in read_headers(paths, settings.pseudonym_salt, workers):
        if isinstance(item, tuple):
            bad.append({"path": item[0], "reason": item[1]})
            continue
        first = item[0]
        problem = "no pixel data" if not first.has_pixels else hu_problem(first)
        if problem:
            bad.append({"path": first.path, "reason": problem})
        else:
            good += [h.as_row() for h in item]
    return good, bad


def _rejected_table(bad: list[dict], root: Path) -> pd.DataFrame:
    """The rejected-files report: paths relative to `root`, sorted."""
    rejected = pd.DataFrame(bad, columns=["path", "reason"])
    if len(rejected):
        rejected["path"] = relative_paths(rejected["path"], root)
    return rejected.sort_values("path", ignore_index=True)


def _nothing_to_convert(rejected: pd.DataFrame, root: Path) -> NothingToConvert:
    """The error for an archive without one HU image, after logging each file's reason."""
    for row in rejected.itertuples():
        log.warning("rejected %s: %s", row.path, row.reason)
    reasons = rejected["reason"].value_counts()
    common = "; ".join(f"{n} x {reason}" for reason, n in reasons.iloc[:5].items())
    more = f"; and {len(reasons) - 5} other reasons" if len(reasons) > 5 else ""
    return NothingToConvert(
        f"none of the {len(rejected)} files under {root} is a readable DICOM image that holds HU: "
        f"{common}{more}",
        rejected,
    )


def scan_archive(
    root: str | Path,
    labels: LabelSource,
    shards: int,
    settings: ScanSettings,
    workers: int = 1,
    override: str | Path | None = None,
) -> ScanResult:
    """Scan `root` and return the tables described in the module docstring."""
    root = Path(root)
    layout = labels.layout
    paths, skipped = list_files(root, layout)
    if not paths and not skipped:
        raise Ct25dError(f"no files found under DICOM root {root}")
    good, bad = _read_archive(paths, settings, workers)
    rejected = _rejected_table(bad + [{"path": p, "reason": r} for p, r in skipped], root)
    if not good:
        raise _nothing_to_convert(rejected, root)
    files = pd.DataFrame(good)
    files["path"] = relative_paths(files["path"], root)
    files["study_id"] = _study_ids(files, layout, settings.pseudonym_salt)
    files["unit"] = series_units(files, layout)
    labelled = attach_labels(files, labels, settings.pseudonym_salt, Unread(root, rejected))
    match = check_label_match(labelled, labels, settings.min_label_match)
    files, studies = labelled.files, labelled.studies
    image_key = files["sop_uid"].where(
        files["frame"] < 0, files["sop_uid"] + "#" + files["frame"].astype(str)
    )
    files["slice_id"] = image_key.map(lambda u: pseudonym(u, settings.pseudonym_salt, "sl-"))
    series = series_table(files, settings)
    series = apply_override(series, studies, override, settings.pseudonym_salt) if override else series
    series = rank_series(series, settings.preferred_thickness_mm, settings.accept_series)
    patients = files.groupby("study_id")["patient_id"].first()
    studies["patient_id"] = studies["study_id"].map(patients).fillna("")  # "": a study without images
    studies["shard"] = studies["study_id"].map(lambda s: shard_of(s, shards)).astype(int)
    files = files.drop(columns=["sop_uid", "name"], errors="ignore")
    return ScanResult(files=files, series=series, studies=studies, rejected=rejected, label_match=match)
