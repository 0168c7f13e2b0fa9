"""Label parsing for both archive layouts, on files written in the real formats."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ct25d.labels import (
    CQ500_FIELDS,
    CQ500_READERS,
    RSNA_LABELS,
    LabelError,
    cq500_study_name,
    read_cq500_reads,
    read_rsna_labels,
)


def _rsna_csv(path: Path, images: dict[str, dict[str, int]], duplicate: str | None = None) -> Path:
    lines = ["ID,Label"]
    for image, labels in images.items():
        lines += [f"{image}_{sub},{labels.get(sub, 0)}" for sub in RSNA_LABELS]
    if duplicate:
        lines.append(duplicate)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rsna_wide_table_and_duplicates(tmp_path: Path) -> None:
    csv = _rsna_csv(
        tmp_path / "stage_2_train.csv",
        {"ID_00aa11bb2": {"subdural": 1, "any": 1}, "ID_ffee00112": {}},
        duplicate="ID_00aa11bb2_subdural,1",
    )
    table = read_rsna_labels(csv).set_index("image_id")
    assert list(table.columns) == list(RSNA_LABELS)
    assert table.loc["ID_00aa11bb2", "subdural"] == 1
    assert table.loc["ID_00aa11bb2", "any"] == 1
    assert table.loc["ID_ffee00112"].sum() == 0


def test_rsna_conflicting_duplicate_is_an_error(tmp_path: Path) -> None:
    csv = _rsna_csv(tmp_path / "s.csv", {"ID_0000000a1": {}}, duplicate="ID_0000000a1_epidural,1")
    with pytest.raises(LabelError, match="conflicting duplicate"):
        read_rsna_labels(csv)


def test_rsna_unknown_subtype_names_file(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("ID,Label\nID_0000000a1_bleed,1\n")
    with pytest.raises(LabelError, match=r"bad\.csv.*unknown subtype"):
        read_rsna_labels(csv)


def _reads(path: Path, votes: dict[str, list[dict[str, int]]]) -> Path:
    rows = []
    for name, readers in votes.items():
        row: dict[str, object] = {"name": name, "Category": "B1"}
        for reader, values in zip(CQ500_READERS, readers, strict=True):
            row.update({f"{reader}:{f}": values.get(f, 0) for f in CQ500_FIELDS})
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_cq500_majority_vote(tmp_path: Path) -> None:
    csv = _reads(
        tmp_path / "reads.csv",
        {
            "CQ500-CT-0": [{"ICH": 1, "SDH": 1}, {"ICH": 1}, {"ICH": 0}],  # ICH 2/3, SDH 1/3
            "CQ500-CT-1": [{}, {}, {}],
        },
    )
    table = read_cq500_reads(csv).set_index("name")
    assert table.loc["CQ500-CT-0", "any"] == 1
    assert table.loc["CQ500-CT-0", "subdural"] == 0
    assert table.loc["CQ500-CT-1", list(RSNA_LABELS)].sum() == 0
    # ICH and SDH disagree, the other four agree: 4/6 fields unanimous.
    assert table.loc["CQ500-CT-0", "reader_agreement"] == pytest.approx(4 / 6)


def test_cq500_missing_column_named(tmp_path: Path) -> None:
    csv = tmp_path / "reads.csv"
    csv.write_text("name,Category,R1:ICH\nCQ500-CT-0,B1,1\n")
    with pytest.raises(LabelError, match="R1:IPH"):
        read_cq500_reads(csv)


def test_cq500_folder_names() -> None:
    assert cq500_study_name("CQ500CT12 CQ500CT12") == "CQ500-CT-12"
    with pytest.raises(LabelError, match="not a CQ500 study folder"):
        cq500_study_name("random folder")
