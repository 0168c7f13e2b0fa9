"""Label vocabularies and parsers for the two archive layouts.

RSNA 2019: `stage_2_train.csv` with rows `ID_<hex>_<subtype>,Label` (6 per slice, duplicates exist).
CQ500: `reads.csv` with `name,Category,R1:ICH,...,R3:MidlineShift`; study labels are the
majority (>= 2 of 3) of the readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ct25d.errors import Ct25dError

# RSNA subtypes in the order the competition lists them; `any` is the OR of the five.
SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
RSNA_LABELS: tuple[str, ...] = (*SUBTYPES, "any")

# CQ500 reader fields that map onto RSNA subtypes.
CQ500_TO_RSNA: dict[str, str] = {
    "ICH": "any",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SDH": "subdural",
    "EDH": "epidural",
    "SAH": "subarachnoid",
}
CQ500_FIELDS: tuple[str, ...] = (
    "ICH",
    "IPH",
    "IVH",
    "SDH",
    "EDH",
    "SAH",
    "BleedLocation-Left",
    "BleedLocation-Right",
    "ChronicBleed",
    "Fracture",
    "CalvarialFracture",
    "OtherFracture",
    "MassEffect",
    "MidlineShift",
)
CQ500_READERS: tuple[str, ...] = ("R1", "R2", "R3")
# The columns each label file must have (what the parsers below and the config check require).
RSNA_COLUMNS: tuple[str, ...] = ("ID", "Label")
CQ500_COLUMNS: tuple[str, ...] = ("name", *(f"{r}:{f}" for r in CQ500_READERS for f in CQ500_TO_RSNA))


class LabelError(Ct25dError):
    """A label file is malformed; the message names the file and the problem."""


def read_rsna_labels(path: str | Path) -> pd.DataFrame:
    """Parse `stage_2_train.csv` into one row per image ID with one 0/1 column per label.

    Duplicate rows (present in the real file) are dropped if they agree; conflicting duplicates
    are an error because silently picking one would change the ground truth.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype={"ID": str, "Label": "Int64"})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LabelError(f"{path}: cannot read label CSV ({exc})") from exc
    if tuple(raw.columns[:2]) != RSNA_COLUMNS:
        raise LabelError(f"{path}: expected columns ID,Label, found {list(raw.columns)}")
    parts = raw["ID"].str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        raise LabelError(f"{path}: IDs must look like ID_<hex>_<subtype>")
    raw = raw.assign(image_id=parts[0], subtype=parts[1])
    unknown = sorted(set(raw["subtype"]) - set(RSNA_LABELS))
    if unknown:
        raise LabelError(f"{path}: unknown subtype(s) {unknown}; expected {list(RSNA_LABELS)}")
    raw = raw.drop_duplicates(["image_id", "subtype", "Label"])
    conflicts = raw.duplicated(["image_id", "subtype"], keep=False)
    if conflicts.any():
        example = raw.loc[conflicts, "ID"].iloc[0]
        raise LabelError(f"{path}: conflicting duplicate labels, e.g. {example}")
    wide = raw.pivot(index="image_id", columns="subtype", values="Label")
    missing = [c for c in RSNA_LABELS if c not in wide.columns]
    if missing:
        raise LabelError(f"{path}: no rows for subtype(s) {missing}")
    wide = wide[list(RSNA_LABELS)].astype("int8").reset_index()
    return wide


def read_cq500_reads(path: str | Path) -> pd.DataFrame:
    """Parse CQ500 `reads.csv` into one row per study with majority-vote RSNA-named labels.

    Output columns: `name` (e.g. CQ500-CT-12), `category`, the six RSNA label names, and
    `reader_agreement` (fraction of label fields on which all three readers agree).
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LabelError(f"{path}: cannot read reads CSV ({exc})") from exc
    missing = [c for c in CQ500_COLUMNS if c not in raw.columns]
    if missing:
        raise LabelError(f"{path}: missing column(s) {missing}")
    out = pd.DataFrame({"name": raw["name"].astype(str)})
    out["category"] = raw["Category"].astype(str) if "Category" in raw.columns else ""
    agree = []
    for field, rsna in CQ500_TO_RSNA.items():
        votes = raw[[f"{r}:{field}" for r in CQ500_READERS]].to_numpy(dtype=int)
        out[rsna] = (votes.sum(axis=1) >= 2).astype("int8")
        agree.append(votes.min(axis=1) == votes.max(axis=1))
    out["reader_agreement"] = np.mean(agree, axis=0).astype("float32")
    if out["name"].duplicated().any():
        raise LabelError(f"{path}: duplicate study name {out.loc[out['name'].duplicated(), 'name'].iloc[0]}")
    return out[["name", "category", *RSNA_LABELS, "reader_agreement"]]


def cq500_study_name(folder_name: str) -> str:
    """`CQ500CT12 CQ500CT12` (the archive's folder) -> `CQ500-CT-12` (the name in reads.csv)."""
    token = folder_name.split()[0]
    if not token.startswith("CQ500CT") or not token[7:].isdigit():
        raise LabelError(f"{folder_name!r} is not a CQ500 study folder (expected 'CQ500CT<N> CQ500CT<N>')")
    return f"CQ500-CT-{int(token[7:])}"


STROKE_TYPES: tuple[str, ...] = ("control", "hemorrhagic", "ischemic")


def read_study_labels(path: str | Path) -> pd.DataFrame:
    """Parse a study-level label CSV (the `dicom_tree` layout): one row per study.

    Columns: `study` (the key: a StudyInstanceUID or a folder name, as the dataset's `label_key`
    says), any of the RSNA label names (0/1; missing columns are unknown), and optionally
    `stroke_type` (control / hemorrhagic / ischemic) for the multi-class task. At least one label
    column is required.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype={"study": str, "stroke_type": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LabelError(f"{path}: cannot read label CSV ({exc})") from exc
    if "study" not in raw.columns:
        raise LabelError(f"{path}: expected a `study` column (the study key), found {list(raw.columns)}")
    present = [c for c in (*RSNA_LABELS, "stroke_type") if c in raw.columns]
    if not present:
        raise LabelError(f"{path}: no label column; expected some of {[*RSNA_LABELS, 'stroke_type']}")
    if raw["study"].isna().any() or raw["study"].duplicated().any():
        bad = raw.loc[raw["study"].isna() | raw["study"].duplicated(), "study"].iloc[0]
        raise LabelError(f"{path}: empty or duplicate study key {bad!r}")
    out = pd.DataFrame({"study": raw["study"].str.strip()})
    for label in RSNA_LABELS:
        if label not in raw.columns:
            out[label] = pd.array([pd.NA] * len(raw), dtype="Int8")
            continue
        values = pd.to_numeric(raw[label], errors="coerce").astype("Float64")
        if not values.dropna().isin([0, 1]).all():
            raise LabelError(f"{path}: column {label} must hold 0 or 1")
        out[label] = values.astype("Int8")
    if "stroke_type" in raw.columns:
        kinds = raw["stroke_type"].str.strip().str.lower()
        unknown = sorted(set(kinds.dropna()) - set(STROKE_TYPES))
        if unknown:
            raise LabelError(f"{path}: unknown stroke_type value(s) {unknown}; expected {list(STROKE_TYPES)}")
        out["stroke_type"] = kinds
    return out
