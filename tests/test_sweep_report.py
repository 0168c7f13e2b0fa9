"""The data-size plot draws whatever the fractions could score, including sets with no AUC."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ct25d.report.sweep import plot_data_size


def _rows(internal_auc: float) -> pd.DataFrame:
    rows = []
    for studies in (20.0, 40.0):
        for approach in ("stage2_head", "resnet10_3d"):
            rows.append({"fraction": studies / 40, "train_studies": studies, "approach": approach,
                         "set": "internal", "auc": internal_auc, "low": internal_auc - 0.1,
                         "high": internal_auc + 0.1, "note": ""})  # fmt: skip
            rows.append({"fraction": studies / 40, "train_studies": studies, "approach": approach,
                         "set": "cq500", "auc": 0.7, "low": 0.6, "high": 0.8, "note": ""})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("internal_auc", [0.65, math.nan], ids=["scored", "internal-single-class"])
def test_data_size_plot_is_written_when_a_panel_has_no_auc(tmp_path: Path, internal_auc: float) -> None:
    """A tiny cohort can leave the internal set with one class (AUC NaN): the legend then comes from
    the panels that did draw, instead of failing the whole sweep on an empty legend."""
    out = tmp_path / "data_size.png"
    plot_data_size(_rows(internal_auc), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_size_plot_with_no_auc_anywhere_still_writes_a_figure(tmp_path: Path) -> None:
    table = _rows(math.nan).assign(auc=math.nan)
    plot_data_size(table, tmp_path / "data_size.png")
    assert (tmp_path / "data_size.png").stat().st_size > 0
