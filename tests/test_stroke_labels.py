"""Stroke-type classes from hemorrhage labels or a per-dataset class."""

from __future__ import annotations

import pandas as pd
import pytest

from ct25d.datasets.stroke import STROKE_CLASSES, add_stroke_labels
from ct25d.errors import ConfigError


def test_classes_from_any_or_a_fixed_class() -> None:
    frame = pd.DataFrame(
        {"dataset": ["rsna", "rsna", "rsna", "aisd", "aisd"], "any": pd.array([1, 0, None, None, 0], "Int8")}
    )
    labels = add_stroke_labels(frame, {"rsna": "from_any", "aisd": "ischemic"})["label"]
    names = [STROKE_CLASSES[v] if not pd.isna(v) else None for v in labels]
    assert names == ["hemorrhagic", "control", None, "ischemic", "ischemic"]


def test_unknown_rule_names_the_key() -> None:
    frame = pd.DataFrame({"dataset": ["rsna"], "any": pd.array([1], "Int8")})
    with pytest.raises(ConfigError, match=r"datasets\.rsna\.stroke_type"):
        add_stroke_labels(frame, {"rsna": "stroke"})
