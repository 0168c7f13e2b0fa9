"""Head crop on the synthetic phantom (which lies on a CT table) and square fitting."""

from __future__ import annotations

import numpy as np
import pytest

from ct25d.synth.phantom import TABLE_SHELL_HU, PlaneStack, random_anatomy, render_planes
from ct25d.volumes.crop import CropSettings, EmptyVolumeError, crop_head, fit_square, head_mask

SPACING = (6.0, 2.0, 2.0)
MATRIX = 128


def phantom_with_table(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume, mask of the CT table's voxels) from the cohort's phantom, with a little noise."""
    rng = np.random.default_rng(seed)
    anat = random_anatomy(rng, rng)
    dz, sp = SPACING[0], SPACING[1]
    corner = -(MATRIX / 2 - 0.5) * sp
    zs = anat.center[2] - 100.0 + dz * np.arange(24)
    origins = np.array([[corner, corner, z] for z in zs])
    planes = PlaneStack(origins, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), sp, MATRIX, MATRIX)
    hu, _ = render_planes(anat, [], planes)
    # The table's own geometry (phantom._render_points): a curved slab 22 mm thick below the head.
    px = corner + sp * np.arange(MATRIX)[None, :]
    py = corner + sp * np.arange(MATRIX)[:, None]
    t = py - (anat.table_y - px * px / (2.0 * anat.table_radius))
    table = np.broadcast_to((t > 0) & (t < 22.0), hu.shape)
    noisy = np.round(hu + rng.normal(0.0, 5.0, hu.shape)).astype(np.int16)
    return noisy, table


def test_phantom_table_is_dropped_and_skull_kept() -> None:
    hu, table = phantom_with_table()
    assert (hu[table] > -200).sum() > 1000  # the table's shells are really there
    out, box = crop_head(hu, SPACING, CropSettings(), "st-phantom")
    inside = table[:, box.y0 : box.y1, box.x0 : box.x1]
    assert (out[inside] == -1024).all()
    bone = hu > 300
    assert (out > 300).sum() == bone.sum()  # every bone voxel is inside the crop, untouched
    ys, xs = np.nonzero(bone.any(axis=0))
    assert box.y0 <= ys.min() and ys.max() < box.y1 and box.x0 <= xs.min() and xs.max() < box.x1
    assert out.shape == (hu.shape[0], box.y1 - box.y0, box.x1 - box.x0)
    assert box.y1 - box.y0 < MATRIX - 10  # the box really shrank around the head


def test_head_mask_holds_no_table_voxel() -> None:
    hu, table = phantom_with_table()
    mask = head_mask(hu, SPACING, CropSettings(), "st")
    assert not (mask & table & (hu > TABLE_SHELL_HU - 50)).any()


def test_fit_square_pads_short_side_and_preserves_aspect() -> None:
    hu = np.full((2, 60, 30), 100, dtype=np.int16)  # 60 x 30 px of tissue at 1 mm
    out, spacing = fit_square(hu, (1.0, 1.0), 30)
    assert out.shape == (2, 30, 30) and out.dtype == np.int16
    assert spacing == (2.0, 2.0)
    tissue = (out[0].astype(float) + 1024) / 1124  # fraction of each pixel covered by tissue
    np.testing.assert_allclose(tissue.sum(axis=1), 15.0, atol=0.05)  # 30 mm of 60 mm
    np.testing.assert_allclose(tissue.sum(axis=0), tissue.sum(axis=0)[::-1], atol=1e-3)  # centred
    assert (out[0, :, 0] == -1024).all() and (out[0, :, -1] == -1024).all()
    assert (out[0, :, 10:20] == 100).all()


def test_fit_square_anti_aliases_when_shrinking() -> None:
    stripes = np.zeros((1, 64, 64), dtype=np.int16)
    stripes[:, :, ::2] = 1000  # a pattern beyond the new Nyquist limit must average out, not alias
    out, _ = fit_square(stripes, (0.5, 0.5), 16)
    assert np.abs(out[0, 4:-4, 4:-4].astype(int) - 500).max() <= 20


def test_phantom_fits_to_configured_square() -> None:
    hu, _ = phantom_with_table()
    cropped, box = crop_head(hu, SPACING, CropSettings(margin_mm=4.0), "st")
    out, spacing = fit_square(cropped, SPACING[1:], 96)
    assert out.shape == (hu.shape[0], 96, 96)
    height_mm, width_mm = (box.y1 - box.y0) * 2.0, (box.x1 - box.x0) * 2.0
    head = (out > -500).any(axis=0)
    ys, xs = np.nonzero(head)
    ratio = ((np.ptp(ys) + 1) * spacing[0]) / ((np.ptp(xs) + 1) * spacing[1])
    assert ratio == pytest.approx((height_mm - 8.0) / (width_mm - 8.0), rel=0.05)


def test_all_air_volume_names_the_study() -> None:
    air = np.full((3, 16, 16), -1024, dtype=np.int16)
    with pytest.raises(EmptyVolumeError, match=r"st-empty.*all air"):
        crop_head(air, SPACING, CropSettings(), "st-empty")
    speck = air.copy()
    speck[1, 8, 8] = 500  # one bright voxel: nothing survives the opening
    with pytest.raises(EmptyVolumeError, match=r"st-speck.*opening"):
        crop_head(speck, SPACING, CropSettings(), "st-speck")
