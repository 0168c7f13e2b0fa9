"""Decoding a series: every image set aside keeps its own reason, also when the series then fails;
duplicates are compared by their pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import write_ct_series

from ct25d.dicom.headers import read_header
from ct25d.dicom.series import GeometryRules, load_volume, sort_series
from ct25d.errors import SeriesError
from ct25d.volumes.ingest import StudyJob, convert_study

RULES = GeometryRules()


def headers(paths: list[Path]) -> list:
    return [read_header(p, "salt") for p in paths]


def test_reasons_survive_a_series_that_fails_after_dropping_files(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "s", n=3, defects={0: "truncated", 2: "truncated"})
    with pytest.raises(SeriesError) as info:
        load_volume(sort_series(headers(paths), RULES), RULES)
    error = info.value
    assert error.reason.startswith("single slice: a volume needs at least 2, after dropping 2 image(s) that "
                                   "could not be decoded (cannot decode pixel data: truncated")  # fmt: skip
    assert error.reason.endswith("and 1 more)")
    assert error.path == str(paths[0])  # the file that made it fail, not a healthy one
    assert [(d.path, d.reason.split(" (")[0]) for d in error.dropped] == [
        (str(paths[0]), "cannot decode pixel data: truncated"),
        (str(paths[2]), "cannot decode pixel data: truncated"),
    ]
    outcome = convert_study(StudyJob("st-1", [("s", headers(paths))]), tmp_path, RULES)
    assert outcome.volume is None
    assert outcome.failures == [("s", "s/CT0000.dcm", error.reason)]
    assert [(path, reason.split(" (")[0]) for _, path, _, reason in outcome.dropped] == [
        ("s/CT0000.dcm", "cannot decode pixel data: truncated"),
        ("s/CT0002.dcm", "cannot decode pixel data: truncated"),
    ]


def test_an_undecodable_inner_slice_leaves_a_flagged_gap(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "s", n=6, defects={3: "truncated"})
    volume, dropped = load_volume(sort_series(headers(paths), RULES), RULES)
    assert volume.hu.shape[0] == 5 and [d.path for d in dropped] == [str(paths[3])]
    assert list(volume.series.positions_mm) == [0.0, 5.0, 10.0, 20.0, 25.0]
    assert "irregular slice spacing: 1 gap(s)" in volume.series.flags[0]


@pytest.mark.parametrize("same", [True, False])
def test_duplicate_positions_are_compared_by_their_pixels(tmp_path: Path, same: bool) -> None:
    paths = write_ct_series(tmp_path / "s", n=4)
    twin = tmp_path / "s" / "CT9999.dcm"
    shutil.copyfile(paths[1], twin)
    ds = pydicom.dcmread(twin)
    ds.SOPInstanceUID = "2.25.999"
    if not same:
        pixels = ds.pixel_array.copy()
        pixels[3, 3] += 40
        ds.PixelData = pixels.tobytes()
    ds.save_as(twin)
    series = sort_series(headers([*paths, twin]), RULES)
    if same:
        volume, set_aside = load_volume(series, RULES)
        assert volume.hu.shape[0] == 4
        assert [(d.path, d.reason) for d in set_aside] == [
            (str(twin), f"duplicate of {paths[1]} at 5.00 mm (identical pixels)")
        ]
        return
    with pytest.raises(SeriesError, match=r"conflicting duplicates: .*CT9999.dcm and .*CT0001.dcm lie at one "
                                          r"position \(5.00 mm\) with different pixels") as info:  # fmt: skip
        load_volume(series, RULES)
    assert info.value.path == str(twin)
    assert np.isfinite(series.positions_mm).all()
