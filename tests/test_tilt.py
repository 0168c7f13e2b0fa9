"""Gantry-tilt correction: against an analytic field, and against dcm2niix's corrected volume."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ct_header

from ct25d.dicom.headers import file_headers
from ct25d.dicom.series import GeometryRules, Volume, load_volume, sort_series
from ct25d.synth.dicom_writer import SeriesWriter
from ct25d.volumes.tilt import correct_tilt

RULES = GeometryRules(0.1, 30.0, tilt="correct")


def tilted_positions(n: int, step_mm: float, tilt_deg: float, rows: int, spacing: float) -> tuple:
    """Slices of a gantry tilted about x, stepping along the table (z) as scanners do."""
    t = np.radians(tilt_deg)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    half = (rows / 2 - 0.5) * spacing
    positions = np.stack([np.array([0.0, 0.0, k * step_mm]) - half * row - half * col for k in range(n)])
    return row, col, positions


def linear_field(points: np.ndarray) -> np.ndarray:
    """HU that change linearly in space: linear interpolation reproduces them exactly."""
    return 3.0 * points[..., 0] - 5.0 * points[..., 1] + 2.0 * points[..., 2] + 40.0


def write_tilted_series(
    folder: Path, n: int = 12, rows: int = 48, tilt: float = 24.0, skip: int = -1
) -> Path:
    """A tilted series of real DICOM files holding the linear field; slice `skip` is left out."""
    spacing = 1.5
    row, col, positions = tilted_positions(n, 5.0, tilt, rows, spacing)
    writer = SeriesWriter(ct_header(tilt_deg=tilt), row, col, spacing, rows, rows)
    jj, ii = np.meshgrid(np.arange(rows), np.arange(rows))  # column index j, row index i
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        if k == skip:
            continue
        points = positions[k] + (jj[..., None] * row + ii[..., None] * col) * spacing
        writer.write(folder / f"CT{k:04d}.dcm", linear_field(points), f"2.25.100{k}", k + 1, positions[k])
    return folder


def load(folder: Path) -> Volume:
    headers = [h for p in sorted(folder.iterdir()) for h in file_headers(p, "salt")]
    volume, _ = load_volume(sort_series(headers, RULES), RULES)
    return volume


def voxel_points(volume: Volume) -> np.ndarray:
    """Physical point (x, y, z) of every voxel, from the volume's stored geometry: in-plane from the
    origin and axes, along the normal from each slice's stored true position."""
    _, y, x = volume.hu.shape
    d = np.reshape(volume.series.direction, (3, 3))
    _, dy, dx = volume.series.spacing_zyx
    along = volume.series.positions_mm - volume.series.positions_mm[0]
    kk, ii, jj = np.meshgrid(along, np.arange(y), np.arange(x), indexing="ij")
    steps = np.stack([jj * dx, ii * dy, kk], axis=-1)
    return np.asarray(volume.series.origin_xyz) + steps @ d.T


@pytest.mark.parametrize("skip", [-1, 5])
def test_corrected_volume_holds_the_field_at_each_voxel(tmp_path: Path, skip: int) -> None:
    """Every corrected voxel inside what the input covered holds the field at its own physical point,
    also when a slice is missing (each slice is shifted from its own position). Tolerance: the
    stored integers and the corrected integers are each rounded (0.5 HU each); the half-pixel rim of
    the coverage is left out (there the interpolator repeats the edge row, as dcm2niix does)."""
    volume = load(write_tilted_series(tmp_path / "series", skip=skip))
    corrected = correct_tilt(volume)
    assert corrected.hu.shape[1] > volume.hu.shape[1]  # grown to hold every shifted slice
    expected = linear_field(voxel_points(corrected))
    covered = corrected.hu != -1024
    inner = covered & np.roll(covered, 1, axis=1) & np.roll(covered, -1, axis=1)
    assert inner.mean() > 0.6
    np.testing.assert_allclose(corrected.hu[inner], expected[inner], atol=1.0)
    steps = np.diff(corrected.series.positions_mm)  # positions in the files have 4 decimals
    assert np.abs(steps[steps < 6.0] - 5.0 * np.cos(np.radians(24.0))).max() < 1e-4


def test_uncorrected_geometry_misplaces_the_last_slice(tmp_path: Path) -> None:
    """Why correct: stored as origin + k * spacing * normal, a 24-degree series' slices drift."""
    volume = load(write_tilted_series(tmp_path / "series", n=33))
    straight = dataclasses.replace(volume.series, flags=[])
    d = np.reshape(straight.direction, (3, 3))
    claimed = np.asarray(straight.origin_xyz) + 32 * straight.spacing_zyx[0] * d[:, 2]
    drift = np.linalg.norm(claimed - straight.positions_xyz[-1])
    assert drift == pytest.approx(32 * 5.0 * np.sin(np.radians(24.0)), rel=1e-5)  # 65 mm
    points = voxel_points(correct_tilt(volume))
    # after correction, slice k's voxels lie in the plane the scanner acquired slice k in
    normal = d[:, 2]
    offsets = (points - straight.positions_xyz[:, None, None, :]) @ normal
    assert np.abs(offsets).max() < 1e-3


@pytest.mark.skipif(
    shutil.which("dcm2niix") is None, reason="dcm2niix is not installed (apt-get install dcm2niix)"
)
def test_correction_agrees_with_dcm2niix(tmp_path: Path) -> None:
    folder = write_tilted_series(tmp_path / "series", n=16, rows=64, tilt=18.0)
    out = tmp_path / "nii"
    out.mkdir()
    result = subprocess.run(["dcm2niix", "-z", "n", "-f", "tilted", "-o", str(out), str(folder)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    corrected_files = sorted(out.glob("*Tilt*.nii"))
    assert corrected_files, f"dcm2niix wrote no tilt-corrected volume: {sorted(out.iterdir())}"
    theirs = sitk.Cast(sitk.ReadImage(str(corrected_files[0])), sitk.sitkFloat32)
    ours = correct_tilt(load(folder))
    # dcm2niix pads with the darkest value and grows its grid by whole rows from another reference,
    # so its voxels sit a fraction of a row from ours: compare in patient space, its volume
    # resampled onto our grid, where both hold data.
    grid = sitk.GetImageFromArray(ours.hu.astype(np.float32))
    grid.SetSpacing(ours.series.spacing_zyx[::-1])
    grid.SetOrigin(ours.series.origin_xyz)
    grid.SetDirection(ours.series.direction)
    stored = sitk.GetArrayFromImage(theirs)
    data = sitk.GetImageFromArray((stored != stored.min()).astype(np.float32))
    data.CopyInformation(theirs)
    on_ours = sitk.GetArrayFromImage(sitk.Resample(theirs, grid, sitk.Transform(), sitk.sitkLinear, -9999.0))
    theirs_full = (
        sitk.GetArrayFromImage(sitk.Resample(data, grid, sitk.Transform(), sitk.sitkLinear, 0.0)) > 0.999
    )
    covered = ours.hu > -1024
    both = covered & np.roll(covered, 1, axis=1) & np.roll(covered, -1, axis=1) & theirs_full
    assert both.mean() > 0.6
    diff = np.abs(on_ours[both] - ours.hu[both])
    assert diff.max() <= 1.0, f"max |ours - dcm2niix| = {diff.max():.2f} HU"
