"""A series of single-slice files -> one sorted int16 HU volume with its geometry.

Slices are ordered by their position along the slice normal (never by InstanceNumber, which
scanners number either way), and the spacing is derived from positions (SliceThickness is not the
spacing when slices overlap or leave gaps). Problems that make a volume wrong are raised as
SeriesError naming the file or the measured values; problems a user should know about but that
leave the volume correct are returned as flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ct25d.dicom.headers import SliceHeader
from ct25d.dicom.pixels import Rescale, read_hu, read_hu_native
from ct25d.errors import SeriesError, SliceError

POSITION_EPS_MM = 1e-3
ORIENTATION_EPS = 1e-4


@dataclass(frozen=True)
class GeometryRules:
    """Tolerances for accepting a series, from config `ingest`."""

    spacing_tolerance: float = 0.1
    max_tilt_deg: float = 30.0


@dataclass
class SortedSeries:
    """Headers in slice order plus the geometry derived from them."""

    headers: list[SliceHeader]
    positions_mm: np.ndarray  # position of each slice along the normal
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # SimpleITK order: row-major 3x3, columns are the x, y, z axes
    tilt_deg: float
    flags: list[str] = field(default_factory=list)


@dataclass
class Volume:
    """A decoded series: HU voxels (Z, Y, X) and geometry."""

    hu: np.ndarray
    series: SortedSeries

    def attrs(self) -> dict[str, Any]:
        s = self.series
        return {
            "spacing_zyx": list(s.spacing_zyx),
            "origin_xyz": list(s.origin_xyz),
            "direction": list(s.direction),
            "tilt_deg": round(s.tilt_deg, 3),
            "flags": list(s.flags),
            "shape_zyx": list(self.hu.shape),
        }


def _consistent(headers: Sequence[SliceHeader], key: str, tol: float | None = None) -> Any:
    """The value every header shares (within `tol`); SeriesError naming the first file that differs."""
    values = [getattr(h, key) for h in headers]
    first = values[0]
    if tol is None:
        same = np.array([v == first for v in values])
    else:  # one array comparison: np.allclose per header costs more than reading the header
        same = (np.abs(np.asarray(values, dtype=float) - np.asarray(first, dtype=float)) <= tol).all(axis=1)
    if not same.all():
        odd = int(np.argmin(same))
        raise SeriesError(f"mixed {key} within the series ({first} vs {values[odd]})", headers[odd].path)
    return first


def sort_series(headers: Sequence[SliceHeader], rules: GeometryRules) -> SortedSeries:
    """Validate and order a series' headers; raise SeriesError on anything that breaks the volume."""
    if not headers:
        raise SeriesError("empty series")
    ids = {h.series_id for h in headers}
    if len(ids) > 1:
        raise SeriesError(f"mixed series: {len(ids)} SeriesInstanceUIDs in one set of files", headers[0].path)
    for h in headers:
        if h.modality != "CT":
            raise SeriesError(f"modality {h.modality or '(none)'} is not CT", h.path)
        if not h.has_pixels:
            raise SeriesError("no pixel data", h.path)
        for name in ("position", "orientation", "pixel_spacing"):
            if getattr(h, name) is None:
                tag = {"position": "ImagePositionPatient", "orientation": "ImageOrientationPatient"}
                raise SeriesError(f"missing or malformed {tag.get(name, 'PixelSpacing')}", h.path)
    if len(headers) < 2:
        raise SeriesError("single slice: a volume needs at least 2", headers[0].path)
    _consistent(headers, "rows")
    _consistent(headers, "columns")
    orientation = np.asarray(_consistent(headers, "orientation", ORIENTATION_EPS), dtype=float)
    pixel_spacing = _consistent(headers, "pixel_spacing", 1e-4)

    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([h.position for h in headers], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]

    flags: list[str] = []
    keep = np.concatenate([[True], np.diff(along) > POSITION_EPS_MM])
    if not keep.all():
        flags.append(f"dropped {int((~keep).sum())} duplicate slice position(s)")
        headers = [h for h, k in zip(headers, keep, strict=True) if k]
        positions, along = positions[keep], along[keep]
        if len(headers) < 2:
            raise SeriesError("single slice after removing duplicate positions", headers[0].path)

    steps = np.diff(along)
    spacing = float(np.median(steps))
    deviation = np.abs(steps - spacing) / spacing
    if deviation.max() > rules.spacing_tolerance:
        worst = int(deviation.argmax())
        kind = "gap" if steps[worst] > spacing else "overlap"
        raise SeriesError(
            f"inconsistent slice spacing: {kind} of {steps[worst]:.2f} mm between slices {worst} and "
            f"{worst + 1} (median {spacing:.2f} mm, tolerance {rules.spacing_tolerance:.0%})",
            headers[worst + 1].path,
        )

    travel = positions[-1] - positions[0]
    cos_tilt = abs(float(travel @ normal)) / float(np.linalg.norm(travel))
    tilt = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
    if tilt > rules.max_tilt_deg:
        raise SeriesError(
            f"gantry tilt {tilt:.1f} deg exceeds max_tilt_deg {rules.max_tilt_deg}", headers[0].path
        )
    if tilt > 0.01:
        flags.append(f"gantry tilt {tilt:.1f} deg")

    direction = np.stack([row, col, normal], axis=1)
    return SortedSeries(
        headers=list(headers),
        positions_mm=along,
        spacing_zyx=(spacing, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin_xyz=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
        tilt_deg=tilt,
        flags=flags,
    )


class ScratchVolume:
    """A reusable int16 buffer for decoding one volume after another.

    A fresh 100 MB array costs ~13 ms of page faults on first touch, a third of decoding it; a
    caller that is done with each volume before decoding the next (ingest writes it to the store
    first) reuses the memory instead.
    """

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.int16)

    def take(self, shape: tuple[int, int, int]) -> np.ndarray:
        size = shape[0] * shape[1] * shape[2]
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=np.int16)
        return self._buffer[:size].reshape(shape)


def _decode(series: SortedSeries, scratch: ScratchVolume | None) -> Volume:
    first = series.headers[0]
    shape = (len(series.headers), first.rows, first.columns)
    hu = scratch.take(shape) if scratch else np.empty(shape, dtype=np.int16)
    for z, h in enumerate(series.headers):
        if h.pixel_offset >= 0:
            rescale = Rescale(h.rescale_slope, h.rescale_intercept, h.bits_stored, h.pixel_representation)
            read_hu_native(h.path, h.pixel_offset, rescale, hu[z])
        else:
            read_hu(h.path, hu[z])
    return Volume(hu=hu, series=series)


def load_volume(
    series: SortedSeries, rules: GeometryRules, scratch: ScratchVolume | None = None
) -> tuple[Volume, list[SliceError]]:
    """Decode a sorted series into one (Z, Y, X) int16 HU array (in `scratch`'s memory if given).

    A file whose pixels cannot be decoded is dropped (and returned, so the caller reports it) and
    the remaining slices are checked again: a dropped end slice leaves a shorter but correct volume,
    a dropped inner slice leaves a gap, which rejects the series.
    """
    dropped: list[SliceError] = []
    while True:
        try:
            return _decode(series, scratch), dropped
        except SliceError as exc:
            dropped.append(exc)
        remaining = [h for h in series.headers if h.path != dropped[-1].path]
        try:
            series = sort_series(remaining, rules)
        except SeriesError as exc:
            note = f"after dropping {len(dropped)} undecodable slice(s): {exc.reason}"
            raise SeriesError(note, exc.path) from exc
