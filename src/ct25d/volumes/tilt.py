"""Gantry-tilt correction: a sheared series resampled onto an orthogonal grid.

With gantry tilt, consecutive slices are parallel planes that step along the table (z), not along
their normal: stored as origin + k * spacing * normal, slice k would sit up to several centimetres
from where it was acquired. dcm2niix writes a corrected copy by shifting each slice within its own
plane by its offset from the first slice; this does the same with SimpleITK, one slice at a time
and from each slice's true position, so missing or uneven slices are corrected too. Only in-plane
linear interpolation happens: slice k of the output is slice k of the input, moved, so per-slice
labels still apply. The grid grows to hold every shifted slice (as dcm2niix's does); uncovered
pixels are air.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import SimpleITK as sitk

from ct25d.dicom.series import Volume

AIR_HU = -1024
_INT16 = np.iinfo(np.int16)


def correct_tilt(volume: Volume) -> Volume:
    """The volume on an orthogonal grid; flags say it was corrected.

    For a series sorted with `ingest.tilt: correct`, whose direction already holds the row, column
    and slice-normal axes and whose spacing is along the normal: only the pixels and the origin move.
    """
    series = volume.series
    row, col, _ = np.reshape(series.direction, (3, 3)).T
    _, dy, dx = series.spacing_zyx
    z, rows, cols = volume.hu.shape
    offsets = series.positions_xyz - series.positions_xyz[0]
    u, v = offsets @ row, offsets @ col  # each slice's in-plane shift (mm) from the first
    u0, v0 = float(u.min()), float(v.min())
    width = cols + math.ceil((float(u.max()) - u0) / dx - 1e-6)
    height = rows + math.ceil((float(v.max()) - v0) / dy - 1e-6)
    out = np.empty((z, height, width), dtype=np.int16)
    for k in range(z):
        image = sitk.GetImageFromArray(volume.hu[k])
        image.SetSpacing((dx, dy))
        image.SetOrigin((float(u[k]), float(v[k])))
        moved = sitk.Resample(image, (width, height), sitk.Transform(), sitk.sitkLinear, (u0, v0), (dx, dy),
                              (1.0, 0.0, 0.0, 1.0), float(AIR_HU), sitk.sitkFloat32)  # fmt: skip
        values = sitk.GetArrayFromImage(moved)
        np.clip(np.rint(values), _INT16.min, _INT16.max, out=values)
        out[k] = values
    origin = series.positions_xyz[0] + u0 * row + v0 * col
    corrected = dataclasses.replace(
        series,
        origin_xyz=tuple(float(c) for c in origin),
        flags=[*series.flags, f"tilt corrected: resampled onto an orthogonal {height}x{width} grid"],
    )
    return Volume(hu=out, series=corrected)
