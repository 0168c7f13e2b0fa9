"""Ordering and geometry checks of `sort_series` on header records (no pixel I/O)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from ct25d.dicom.headers import SliceHeader
from ct25d.dicom.series import GeometryRules, sort_series
from ct25d.errors import SeriesError

RULES = GeometryRules(spacing_tolerance=0.1, max_tilt_deg=30.0)


def make_headers(zs: list[float], tilt_deg: float = 0.0, **changes) -> list[SliceHeader]:
    t = np.radians(tilt_deg)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t)))
    common = dict(
        study_id="st-1", series_id="se-1", patient_id="pt-1", modality="CT", series_description="CT Plain",
        series_number=2, image_type="ORIGINAL\\PRIMARY\\AXIAL", contrast_agent="", rows=4, columns=4,
        orientation=orientation, pixel_spacing=(0.5, 0.5), slice_thickness=5.0,
        transfer_syntax="1.2.840.10008.1.2.1", has_pixels=True,
    )  # fmt: skip
    headers = [
        SliceHeader(
            path=f"/x/{i}.dcm", sop_uid=str(i), instance_number=i + 1, position=(-100.0, -100.0, z), **common
        )
        for i, z in enumerate(zs)
    ]
    return [dataclasses.replace(h, **changes) for h in headers]


def test_orders_shuffled_slices_by_position_not_instance_number() -> None:
    zs = [float(5 * k) for k in range(12)]
    headers = make_headers(zs)
    # Reverse the instance numbers (feet-first numbering) and shuffle the files.
    headers = [dataclasses.replace(h, instance_number=100 - h.instance_number) for h in headers]
    random.Random(0).shuffle(headers)
    result = sort_series(headers, RULES)
    assert [h.position[2] for h in result.headers] == zs
    assert result.spacing_zyx == (5.0, 0.5, 0.5)
    assert result.origin_xyz == (-100.0, -100.0, 0.0)
    assert result.flags == []


def test_duplicate_positions_are_dropped_and_flagged() -> None:
    headers = make_headers([0.0, 5.0, 5.0, 10.0, 15.0])
    result = sort_series(headers, RULES)
    assert len(result.headers) == 4
    assert result.flags == ["dropped 1 duplicate slice position(s)"]


def test_gap_is_rejected_naming_the_file() -> None:
    headers = make_headers([0.0, 5.0, 10.0, 20.0, 25.0])
    with pytest.raises(SeriesError, match=r"gap of 10\.00 mm between slices 2 and 3") as info:
        sort_series(headers, RULES)
    assert info.value.path == "/x/3.dcm"


def test_gantry_tilt_is_measured_and_spacing_is_along_the_normal() -> None:
    result = sort_series(make_headers([0.0, 5.0, 10.0, 15.0], tilt_deg=20.0), RULES)
    assert result.tilt_deg == pytest.approx(20.0, abs=1e-6)
    assert result.spacing_zyx[0] == pytest.approx(5.0 * np.cos(np.radians(20.0)))
    assert result.flags == ["gantry tilt 20.0 deg"]
    with pytest.raises(SeriesError, match=r"gantry tilt 20\.0 deg exceeds"):
        sort_series(make_headers([0.0, 5.0, 10.0], tilt_deg=20.0), GeometryRules(0.1, 15.0))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (make_headers([0.0]), "single slice"),
        (make_headers([0.0, 5.0], modality="MR"), "modality MR is not CT"),
        (make_headers([0.0, 5.0], has_pixels=False), "no pixel data"),
        (make_headers([0.0, 5.0], position=None), "ImagePositionPatient"),
        (make_headers([0.0, 5.0])[:1] + make_headers([5.0], rows=8), "mixed rows"),
        (make_headers([0.0])[:1] + make_headers([5.0], series_id="se-2"), "mixed series"),
    ],
)
def test_broken_series_are_refused_with_a_reason(headers: list[SliceHeader], message: str) -> None:
    with pytest.raises(SeriesError, match=message):
        sort_series(headers, RULES)
