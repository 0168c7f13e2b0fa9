"""Attach a dataset's labels to its scanned images and studies, and check that they match.

Each layout keys its labels differently: RSNA per image (SOPInstanceUID = file name), CQ500 per
study folder (`CQ500-CT-N` in reads.csv), `dicom_tree` per study by StudyInstanceUID or by a key
taken from the folder names with a regular expression. A label file whose keys match nothing
would otherwise leave every study unlabelled and training would go on without a positive, so the
share of studies that found labels is checked here, before any pixel is read.

A dataset with `role: predict` has no label file (`LabelSource.path` None): its studies are named as
their layout names them and every label is unknown (NA), never 0.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ct25d.dicom.files import CQ500_FOLDER, study_folders
from ct25d.dicom.headers import pseudonym
from ct25d.errors import Ct25dError
from ct25d.labels import (
    RSNA_LABELS,
    LabelError,
    cq500_study_name,
    read_cq500_reads,
    read_rsna_labels,
    read_study_labels,
)

log = logging.getLogger(__name__)
LABEL_KEYS = ("StudyInstanceUID", "folder")


@dataclass(frozen=True)
class LabelSource:
    """Where a dataset's labels are and how they are keyed (config `datasets.<name>`)."""

    layout: str
    path: Path | None  # None: an unlabelled dataset (role predict)
    role: str = "train"
    key: str = "StudyInstanceUID"  # dicom_tree: StudyInstanceUID or folder
    folder_pattern: str = r"^(?P<study>[^/]+)/"  # dicom_tree with key folder: the study key in the path

    def __post_init__(self) -> None:
        if self.key not in LABEL_KEYS:
            raise Ct25dError(f"label_key: expected one of {LABEL_KEYS}, got {self.key!r}")
        if (self.path is None) != (self.role == "predict"):
            need = "takes no label file" if self.role == "predict" else "needs a label file"
            raise Ct25dError(f"a dataset with role {self.role} {need} (got {self.path})")


@dataclass
class Labelled:
    files: pd.DataFrame
    # study_id, name (a readable, non-identifying key), labels, has_labels, and `problem`: why a
    # study known only by its folder has no image ("" for the others)
    studies: pd.DataFrame
    label_keys: dict[str, str]  # every key in the label file -> how a report names it
    used_keys: set[str]  # the keys that matched an image or study


@dataclass(frozen=True)
class Unread:
    """What the scan saw of the archive besides its images: where a study folder without any
    readable image is found."""

    root: Path
    rejected: pd.DataFrame  # path (relative to root), reason: the files the scan set aside


def _rsna(files: pd.DataFrame, source: LabelSource, salt: str, unread: Unread) -> Labelled:
    labels = read_rsna_labels(source.path).rename(columns={"image_id": "sop_uid"})
    files = files.merge(labels, on="sop_uid", how="left")
    studies = files.groupby("study_id")[list(RSNA_LABELS)].max().reset_index()
    studies["name"] = ""
    studies["problem"] = ""
    used = set(files.loc[files["any"].notna(), "sop_uid"])
    return Labelled(files, studies, {k: k for k in labels["sop_uid"]}, used)


def _cq500_key(path: str) -> str | None:
    """`CQ500-CT-12` for a path below `CQ500CT12 CQ500CT12/`."""
    top = path.split(os.sep, 1)[0]
    return cq500_study_name(top) if CQ500_FOLDER.fullmatch(top) else None


def _cq500(files: pd.DataFrame, source: LabelSource, salt: str, unread: Unread) -> Labelled:
    reads = read_cq500_reads(source.path).rename(columns={"name": "key"})
    files = files.assign(name=files["path"].map(_cq500_key))
    return _study_level(
        files, reads, "name", _folder_studies(files, reads, _cq500_key, "cq500", unread, salt)
    )


def _folder_key(folder_pattern: str) -> Callable[[str], str | None]:
    """dicom_tree with `label_key: folder`: a file's study key, the pattern's `study` (or first) group."""
    pattern = re.compile(folder_pattern)

    def key_of(path: str) -> str | None:
        match = pattern.search(path)
        if not match:
            return None
        return match.groupdict().get("study") or (match.group(1) if match.groups() else match.group(0))

    return key_of


def _tree(files: pd.DataFrame, source: LabelSource, salt: str, unread: Unread) -> Labelled:
    table = read_study_labels(source.path).rename(columns={"study": "key"})
    if source.key == "StudyInstanceUID":  # compared as pseudonyms: raw UIDs never leave the scan
        shown = [f"{source.path.name} line {i + 2}" for i in range(len(table))]
        table["key"] = table["key"].map(lambda uid: pseudonym(uid, salt, "st-"))
        return _study_level(files.assign(name=files["study_id"]), table, "name", show_keys=False,
                            names=dict(zip(table["key"], shown, strict=True)))  # fmt: skip
    key_of = _folder_key(source.folder_pattern)
    files = files.assign(name=files["path"].map(key_of))
    return _study_level(
        files, table, "name", _folder_studies(files, table, key_of, "dicom_tree", unread, salt)
    )


def _folder_studies(
    files: pd.DataFrame, table: pd.DataFrame, key_of: Callable[[str], str | None], layout: str,
    unread: Unread, salt: str,
) -> pd.DataFrame:  # fmt: skip
    """Studies of the label file whose folder is in the archive but holds no readable image (it is
    empty, or the scan rejected every file in it): a row each, so the study is reported rather than
    counted as an unmatched key. Named by the pseudonym of the key: it has no StudyInstanceUID."""
    wanted = set(table["key"]) - set(files["name"].dropna())
    columns = ["study_id", "key", "problem"]
    if not wanted:
        return pd.DataFrame(columns=columns)
    rejected = unread.rejected.assign(key=unread.rejected["path"].map(key_of))
    rejected = rejected[rejected["key"].isin(wanted)]
    empty = {key_of(f) for f in study_folders(unread.root, layout)} & wanted
    rows = []
    for key in sorted(empty | set(rejected["key"])):
        inside = rejected[rejected["key"] == key]
        problem = (
            f"no readable image in the study folder: {len(inside)} file(s) rejected at scan, e.g. "
            f"{inside['path'].iloc[0]}: {inside['reason'].iloc[0]}"
            if len(inside)
            else "the study folder holds no file"
        )
        rows.append({"study_id": pseudonym(key, salt, "st-"), "key": key, "problem": problem})
    return pd.DataFrame(rows, columns=columns)


def _study_level(
    files: pd.DataFrame, table: pd.DataFrame, column: str, folder_only: pd.DataFrame | None = None,
    show_keys: bool = True, names: dict[str, str] | None = None,
) -> Labelled:  # fmt: skip
    """Study labels from a table keyed like `files[column]`, which must be one value per study, for
    the scanned studies and those known only by their folder (`folder_only`: study_id, key, problem).
    `names`: how a report names each key (default: the key itself)."""
    names_of = files.groupby("study_id")[column].agg(lambda s: sorted(set(s.dropna())))
    clash = names_of[names_of.map(len) > 1]
    if len(clash):
        raise LabelError(f"study {clash.index[0]} spans several label keys {clash.iloc[0][:4]}")
    studies = pd.DataFrame(
        {"study_id": names_of.index, "key": names_of.map(lambda v: v[0] if v else None).values, "problem": ""}
    )
    if folder_only is not None and len(folder_only):
        studies = pd.concat([studies, folder_only], ignore_index=True)
    shared = studies[studies["key"].isin(table["key"]) & studies["key"].duplicated(keep=False)]
    if len(shared):
        key = shared["key"].iloc[0]
        n = int((shared["key"] == key).sum())
        raise LabelError(
            f"label key {key!r} matches {n} studies (different StudyInstanceUIDs); its labels would be "
            "ambiguous: key each study on its own"
        )
    studies = studies.merge(table, on="key", how="left")
    studies["name"] = studies["key"] if show_keys else ""
    for label in RSNA_LABELS:
        files[label] = pd.NA
    used = set(studies.loc[studies[_label_columns(studies)].notna().any(axis=1), "key"])
    keys = {k: (names or {}).get(k, k) for k in table["key"]}
    return Labelled(files, studies.drop(columns="key"), keys, used)


def _unlabelled(files: pd.DataFrame, source: LabelSource, salt: str, unread: Unread) -> Labelled:
    """A dataset without labels (role predict): each study named by its layout's key (the CQ500 name,
    a dicom_tree folder key; none by UID or for RSNA), every label NA."""
    key_of = {"cq500": _cq500_key, "dicom_tree": _folder_key(source.folder_pattern)}.get(source.layout)
    if source.layout == "dicom_tree" and source.key != "folder":
        key_of = None
    names = files["path"].map(key_of) if key_of else pd.Series(None, index=files.index, dtype=object)
    table = pd.DataFrame({"key": pd.Series(dtype=object),
                          **{label: pd.Series(dtype="Int8") for label in RSNA_LABELS}})  # fmt: skip
    labelled = _study_level(files.assign(name=names), table, "name")
    labelled.studies["name"] = labelled.studies["name"].fillna("")
    return labelled


def _label_columns(studies: pd.DataFrame) -> list[str]:
    return [c for c in (*RSNA_LABELS, "stroke_type") if c in studies]


ATTACH = {"rsna": _rsna, "cq500": _cq500, "dicom_tree": _tree}


def attach_labels(files: pd.DataFrame, source: LabelSource, salt: str, unread: Unread) -> Labelled:
    """Files with image labels, studies with study labels and `has_labels`, and the label keys."""
    attach = _unlabelled if source.path is None else ATTACH[source.layout]
    labelled = attach(files, source, salt, unread)
    labelled.studies["has_labels"] = labelled.studies[_label_columns(labelled.studies)].notna().any(axis=1)
    return labelled


def check_label_match(labelled: Labelled, source: LabelSource, minimum: float) -> dict:
    """The share of studies with labels; LabelError for a training dataset below `minimum`.

    The message gives the numbers and sample keys on both sides (the label file's keys, and the
    archive's file names or folder keys; never DICOM UIDs), which is what a user needs to see why
    they do not meet.
    """
    studies, files = labelled.studies, labelled.files
    n, n_labelled = len(studies), int(studies["has_labels"].sum())
    if source.path is None:  # role predict: nothing to match
        return {"studies": n, "studies_labelled": 0, "fraction": 0.0, "label_keys": 0,
                "label_keys_unmatched": 0, "unmatched_label_keys": [],
                "labels": "none (role predict)"}  # fmt: skip
    keys, used = labelled.label_keys, labelled.used_keys
    unused = [name for key, name in keys.items() if key not in used]
    match = {"studies": n, "studies_labelled": n_labelled, "fraction": round(n_labelled / n, 4) if n else 0.0,
             "label_keys": len(keys), "label_keys_unmatched": len(unused),
             "unmatched_label_keys": unused}  # fmt: skip
    if n_labelled == n:
        return match
    missing = studies.loc[~studies["has_labels"], "study_id"]
    first_files = files[files["study_id"].isin(missing)].groupby("study_id")["path"].first()
    archive_side = sorted(Path(p).name if source.layout == "rsna" else p for p in first_files)[:3]
    label_side = unused[:3]
    message = (
        f"{source.path}: labels match {n_labelled} of {n} studies ({n_labelled / n:.0%}); "
        f"{len(unused)} of {len(keys)} label keys match no file. "
        f"Unlabelled studies, e.g. files {archive_side}; "
        f"unmatched label keys, e.g. {label_side}"
    )
    if n_labelled / n < minimum and source.role == "train":
        raise LabelError(f"{message}. A training dataset needs ingest.min_label_match = {minimum:g}")
    log.warning("%s", message)
    return {**match, "warning": message}
