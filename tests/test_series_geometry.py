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


def test_duplicate_positions_are_set_aside_for_the_pixel_check() -> None:
    headers = make_headers([0.0, 5.0, 5.0, 10.0, 15.0])
    result = sort_series(headers, RULES)
    assert len(result.headers) == 4
    assert result.flags == ["1 duplicate slice position(s) set aside"]
    assert [(kept.path, dup.path) for kept, dup in result.duplicates] == [("/x/1.dcm", "/x/2.dcm")]


def test_missing_slice_is_kept_at_its_true_position_and_flagged() -> None:
    """A gap no longer rejects the series: 2D and 2.5D use every slice where it really is."""
    headers = make_headers([0.0, 5.0, 10.0, 20.0, 25.0])
    result = sort_series(headers, RULES)
    assert len(result.headers) == 5
    assert list(result.positions_mm) == [0.0, 5.0, 10.0, 20.0, 25.0]
    assert result.spacing_zyx[0] == 5.0
    assert len(result.flags) == 1
    assert "irregular slice spacing: 1 gap(s), 0 short step(s)" in result.flags[0]
    assert "10.00 mm between slices 2 and 3" in result.flags[0]


def test_gantry_tilt_is_measured_and_spacing_is_along_the_normal() -> None:
    result = sort_series(make_headers([0.0, 5.0, 10.0, 15.0], tilt_deg=20.0), RULES)
    assert result.tilt_deg == pytest.approx(20.0, abs=1e-6)
    assert result.spacing_zyx[0] == pytest.approx(5.0 * np.cos(np.radians(20.0)))
    assert result.flags == ["gantry tilt 20.0 deg"]
    with pytest.raises(SeriesError, match=r"gantry tilt 20\.0 deg exceeds"):
        sort_series(make_headers([0.0, 5.0, 10.0], tilt_deg=20.0), GeometryRules(0.1, 15.0))


def test_direction_cosines_are_normalised_before_spacing_and_tilt() -> None:
    """A real header with |column| = 0.9995 (anchors.md): no fake tilt, the true spacing."""
    zs = [5.0 * k for k in range(8)]
    headers = make_headers(zs, orientation=(1.0, 0.0, 0.0, 0.0, 0.9995, 0.0))
    result = sort_series(headers, RULES)
    assert result.tilt_deg < 0.01 and result.flags == []
    assert result.spacing_zyx[0] == pytest.approx(5.0, abs=1e-9)
    assert np.linalg.norm(np.reshape(result.direction, (3, 3)), axis=0) == pytest.approx([1.0, 1.0, 1.0])


def test_a_real_tilt_with_short_cosines_keeps_its_true_spacing() -> None:
    """|column| = 0.9995 and a real 1.8 deg tilt: spacing 5 cos(1.8 deg) along the unit normal
    (unnormalised, the normal's length 0.9995 would shrink it to 4.9950)."""
    t = np.radians(1.8)
    col = (0.0, 0.9995 * np.cos(t), 0.9995 * np.sin(t))
    headers = make_headers([5.0 * k for k in range(6)], orientation=(1.0, 0.0, 0.0, *col))
    result = sort_series(headers, RULES)
    assert result.spacing_zyx[0] == pytest.approx(5.0 * np.cos(t), abs=1e-5)
    assert result.spacing_zyx[0] == pytest.approx(4.99753, abs=1e-4)
    assert result.tilt_deg == pytest.approx(1.8, abs=1e-6)


@pytest.mark.parametrize("mode", ["correct", "keep", "reject"])
def test_tilt_modes(mode: str) -> None:
    headers = make_headers([0.0, 5.0, 10.0, 15.0], tilt_deg=24.0)
    rules = GeometryRules(0.1, 30.0, tilt=mode)
    if mode == "reject":
        with pytest.raises(SeriesError, match=r"gantry tilt 24\.00 deg \(ingest.tilt: reject\)"):
            sort_series(headers, rules)
        return
    result = sort_series(headers, rules)
    d = np.reshape(result.direction, (3, 3))
    origin, spacing = np.asarray(result.origin_xyz), result.spacing_zyx[0]
    last = origin + 3 * spacing * d[:, 2]  # where the stored geometry puts the last slice
    if mode == "keep":  # the sheared geometry: every slice exactly where it was acquired
        np.testing.assert_allclose(last, headers[-1].position, atol=1e-9)
    else:  # orthogonal axes; ingest then resamples the slices onto them (ct25d.volumes.tilt)
        assert abs(d[:, 1] @ d[:, 2]) < 1e-12
        assert np.linalg.norm(last - headers[-1].position) == pytest.approx(15.0 * np.sin(np.radians(24.0)))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (make_headers([0.0]), "single slice"),
        (make_headers([0.0, 5.0], modality="MR"), "modality MR is not CT"),
        (make_headers([0.0, 5.0], has_pixels=False), "no pixel data"),
        (make_headers([0.0, 5.0], position=None), "ImagePositionPatient"),
        (make_headers([0.0, 5.0])[:1] + make_headers([5.0], rows=8), "mixed rows"),
        (make_headers([0.0])[:1] + make_headers([5.0], series_id="se-2"), "mixed series"),
        (make_headers([0.0, 5.0], orientation=(1.0, 0.0, 0.0, 0.3, 1.0, 0.0)), "not perpendicular"),
        (make_headers([0.0, 5.0], orientation=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0)), "two direction vectors"),
        (make_headers([5.0, 5.0]), "single slice position"),
    ],
)
def test_broken_series_are_refused_with_a_reason(headers: list[SliceHeader], message: str) -> None:
    with pytest.raises(SeriesError, match=message):
        sort_series(headers, RULES)


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        ({"position": None}, "missing or malformed ImagePositionPatient"),
        ({"pixel_spacing": None}, "missing or malformed PixelSpacing"),
        ({"rows": 8}, "Rows/Columns 8x4 differ from the series' 4x4"),
    ],
)
def test_one_odd_image_is_set_aside_and_leaves_a_flagged_gap(odd: dict, reason: str) -> None:
    """Like a slice whose pixels cannot be decoded: the series keeps the others, and the gap shows."""
    headers = make_headers([5.0 * k for k in range(6)])
    headers[2] = dataclasses.replace(headers[2], **odd)
    result = sort_series(headers, RULES)
    assert [h.path for h in result.headers] == ["/x/0.dcm", "/x/1.dcm", "/x/3.dcm", "/x/4.dcm", "/x/5.dcm"]
    assert [(d.path, d.reason) for d in result.dropped] == [("/x/2.dcm", reason)]
    assert result.flags[0].startswith("irregular slice spacing: 1 gap(s)")


def test_odd_images_in_half_the_series_refuse_it() -> None:
    headers = make_headers([5.0 * k for k in range(4)])
    headers[1:3] = [dataclasses.replace(h, position=None) for h in headers[1:3]]
    with pytest.raises(SeriesError) as info:
        sort_series(headers, RULES)
    assert (info.value.path, info.value.reason) == ("/x/1.dcm", "missing or malformed ImagePositionPatient")
    assert info.value.dropped == []
    one_of_three = [headers[0], headers[1], headers[3]]
    assert [d.path for d in sort_series(one_of_three, RULES).dropped] == ["/x/1.dcm"]


def test_a_series_that_fails_after_setting_images_aside_names_them() -> None:
    headers = make_headers([0.0, 5.0, 5.0, 5.0, 5.0])  # one position only, once the odd image is gone
    headers[0] = dataclasses.replace(headers[0], rows=8)
    with pytest.raises(SeriesError) as info:
        sort_series(headers, RULES)
    assert info.value.reason == (
        "single slice position: every image lies at one position, after dropping 1 image(s) whose headers "
        "differ from the series' (Rows/Columns 8x4 differ from the series' 4x4)"
    )
    assert [d.path for d in info.value.dropped] == ["/x/0.dcm"]
