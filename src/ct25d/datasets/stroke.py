"""Stroke-type classes for the multi-class task (control / hemorrhagic / ischemic).

RSNA and CQ500 label hemorrhage only, ischemic archives (AISD, CPAISD) contain only ischemic
strokes, and a hospital's own archive may say per study. So each dataset says how its studies map
onto a class (config `datasets.<name>.stroke_type`): `from_any` (hemorrhage `any` = 1 ->
hemorrhagic, 0 -> control, per slice and per study), `from_labels` (the `stroke_type` column of a
dicom_tree labels CSV, per study), or one class for every study of the dataset.
"""

from __future__ import annotations

import pandas as pd

from ct25d.errors import ConfigError
from ct25d.labels import STROKE_TYPES

STROKE_CLASSES: tuple[str, ...] = STROKE_TYPES
RULES: tuple[str, ...] = ("from_any", "from_labels", *STROKE_CLASSES)


def stroke_label(frame: pd.DataFrame, rule: str, dataset: str) -> pd.Series:
    """Class ids (nullable Int64; NA where `any` is unknown) for the rows of one dataset."""
    if rule not in RULES:
        raise ConfigError(f"datasets.{dataset}.stroke_type: expected one of {list(RULES)}, got {rule!r}")
    if rule == "from_any":
        hemorrhagic, control = STROKE_CLASSES.index("hemorrhagic"), STROKE_CLASSES.index("control")
        any_ = frame["any"].astype("Int64")
        return any_.map({1: hemorrhagic, 0: control}, na_action="ignore").astype("Int64")
    if rule == "from_labels":
        if "stroke_type" not in frame or frame["stroke_type"].isna().all():
            raise ConfigError(
                f"datasets.{dataset}.stroke_type: from_labels, but its labels have no stroke_type column"
            )
        ids = {name: k for k, name in enumerate(STROKE_CLASSES)}
        return frame["stroke_type"].map(ids, na_action="ignore").astype("Int64")
    return pd.Series(STROKE_CLASSES.index(rule), index=frame.index, dtype="Int64")


def add_stroke_labels(frame: pd.DataFrame, rules: dict[str, str]) -> pd.DataFrame:
    """`frame` (slice index or study table) with a `label` column of stroke-class ids."""
    parts = [stroke_label(part, rules.get(name, "from_any"), name) for name, part in frame.groupby("dataset")]
    return frame.assign(label=pd.concat(parts).reindex(frame.index).astype("Int64"))
