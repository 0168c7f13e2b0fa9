"""THE slice index and study table every training and evaluation stage reads.

Joining labels, folds and store locations once, with the counts checked, means no later stage
re-derives them (and no stage can disagree with another about which slice has which label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ct25d.errors import Ct25dError
from ct25d.labels import RSNA_LABELS
from ct25d.slices.store import SliceReader

SLICE_COLUMNS = [
    "dataset", "role", "site", "study_id", "patient_id", "z", "slice_id", "position_mm", "store", "fold",
    "inner_for", *RSNA_LABELS, "stroke_type",
]  # fmt: skip
STUDY_COLUMNS = [
    "dataset", "role", "site", "study_id", "patient_id", "n_slices", "store", "fold", "inner_for",
    *RSNA_LABELS, "stroke_type",
]  # fmt: skip


class IndexMismatchError(Ct25dError):
    """The artifacts that feed the index disagree; the message names the study and the counts."""


@dataclass(frozen=True)
class DatasetTables:
    """One dataset's inputs: ingest `manifest.parquet` and `slices.parquet`, and the per-shard
    tables written by `ct25d slices` (study_id, z, store)."""

    name: str
    role: str
    site: str
    manifest: pd.DataFrame
    slice_labels: pd.DataFrame
    slice_tables: pd.DataFrame
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["study_id", "reason"]))


def _study_table(ds: DatasetTables, folds: pd.DataFrame) -> pd.DataFrame:
    skipped = set(ds.rejected["study_id"])
    unknown = skipped - set(ds.manifest["study_id"])
    if unknown:
        raise IndexMismatchError(f"{ds.name}: skipped stud(ies) not in the manifest, e.g. {min(unknown)}")
    m = ds.manifest[~ds.manifest["study_id"].isin(skipped)]
    stores = ds.slice_tables.groupby("study_id", sort=False)["store"].agg(["first", "nunique"])
    split = stores[stores["nunique"] > 1]
    if len(split):
        raise IndexMismatchError(f"{ds.name}: study {split.index[0]} is spread over several slice stores")
    study_ids, built = set(m["study_id"]), set(stores.index)
    for missing, where in ((study_ids - built, "slice stores"), (built - study_ids, "manifest")):
        if missing:
            raise IndexMismatchError(
                f"{ds.name}: {len(missing)} stud(ies) missing from the {where}, e.g. {min(missing)}"
            )
    out = pd.DataFrame(
        {
            "dataset": ds.name,
            "role": ds.role,
            "site": m["site"].astype(str) if "site" in m.columns else ds.site,
            "study_id": m["study_id"].astype(str),
            "patient_id": m["patient_id"].astype(str),
            "n_slices": m["n_slices"].astype("int64"),
            "store": m["study_id"].map(stores["first"]).astype(str),
        }
    )
    labelled = m["has_labels"].astype(bool) if "has_labels" in m.columns else pd.Series(True, index=m.index)
    for label in RSNA_LABELS:
        out[label] = m[label].astype("Int8").where(labelled, pd.NA)
    # A study-level stroke class, where the labels give one (dicom_tree `stroke_type` column).
    out["stroke_type"] = (m["stroke_type"] if "stroke_type" in m else pd.Series(pd.NA, index=m.index)).astype(
        "string"
    )
    fold = out["study_id"].map(folds.set_index("study_id")["fold"])
    if fold.isna().any():
        raise IndexMismatchError(
            f"{ds.name}: study {out.loc[fold.isna(), 'study_id'].iloc[0]} has no fold in the splits"
        )
    out["fold"] = fold.astype("int64")
    out["inner_for"] = out["study_id"].map(folds.set_index("study_id")["inner_for"]).astype("int64")
    return out[STUDY_COLUMNS]


def _check_counts(ds: DatasetTables, studies: pd.DataFrame) -> None:
    built = ds.slice_tables.groupby("study_id").size()
    labelled = ds.slice_labels.groupby("study_id").size()
    for study_id, n in zip(studies["study_id"], studies["n_slices"], strict=True):
        got, lab = int(built.get(study_id, 0)), int(labelled.get(study_id, 0))
        if got != n or lab != n:
            raise IndexMismatchError(
                f"{ds.name}: study {study_id} has {n} slices in the manifest, {lab} in slices.parquet "
                f"and {got} in the slice store (slice labels are per native slice: "
                "preprocess.slice_mm must be null)"
            )


def build_index(datasets: Sequence[DatasetTables], splits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(slice index, study table) across all datasets, with every count reconciled."""
    slice_frames, study_frames = [], []
    for ds in datasets:
        folds = splits[splits["dataset"] == ds.name]
        roles = set(folds["role"])
        if roles and roles != {ds.role}:
            raise IndexMismatchError(
                f"{ds.name}: role {ds.role!r} here but {sorted(roles)} in the splits; rerun splits"
            )
        studies = _study_table(ds, folds)
        _check_counts(ds, studies)
        keep = ["study_id", "z", "slice_id", "position_mm", *RSNA_LABELS]
        slices = ds.slice_labels[keep].merge(
            studies.drop(columns=["n_slices", *RSNA_LABELS]),
            on="study_id",
            how="inner",
            validate="many_to_one",
        )
        slice_frames.append(slices.astype({label: "Int8" for label in RSNA_LABELS}))
        study_frames.append(studies)
    slice_index = pd.concat(slice_frames, ignore_index=True)[SLICE_COLUMNS]
    slice_index = slice_index.sort_values(["dataset", "study_id", "z"], kind="stable", ignore_index=True)
    study_table = pd.concat(study_frames, ignore_index=True).sort_values(
        ["dataset", "study_id"], kind="stable", ignore_index=True
    )
    # Per dataset: one archive may be registered twice (e.g. as external and as predict).
    twice = slice_index.duplicated(["dataset", "slice_id"])
    if twice.any():
        first = slice_index.loc[twice].iloc[0]
        raise IndexMismatchError(f"{first['dataset']}: slice id {first['slice_id']} twice")
    return slice_index.astype({"z": "int64", "fold": "int64", "inner_for": "int64"}), study_table


def verify_stores(slice_table: pd.DataFrame) -> None:
    """Each store named in a `ct25d slices` table holds exactly its studies with that many slices."""
    for store, part in slice_table.groupby("store"):
        reader = SliceReader(store)
        expected = part.groupby("study_id").size()
        held = reader.studies()
        if sorted(expected.index) != held:
            raise IndexMismatchError(
                f"{store}: holds {len(held)} studies, its slice table lists {len(expected)}"
            )
        for study_id, n in expected.items():
            if reader.shape(study_id)[0] != n:
                raise IndexMismatchError(
                    f"{store}: study {study_id} has {reader.shape(study_id)[0]} slices, table {n}"
                )


def read_slice_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate the per-shard tables written by `ct25d slices`."""
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
