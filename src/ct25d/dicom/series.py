"""A series of images -> one sorted int16 HU volume with its true geometry.

Slices are ordered by their position along the slice normal (never by InstanceNumber, which
scanners number either way), and the spacing is derived from positions (SliceThickness is not the
spacing when slices overlap or leave gaps). Direction cosines are normalised first: real headers
carry vectors of length 0.9995, which would otherwise shrink the spacing and fake a gantry tilt.

Only what cannot form a volume is refused (mixed sizes or orientations, a single slice, conflicting
duplicates, a tilt beyond the configured limit), as a SeriesError naming the file or the measured
values. One odd image does not refuse its series: an image whose header cannot join the rest (a
missing geometry tag, another Rows/Columns) is set aside with its reason when such images are
fewer than half the series, as an image whose pixels cannot be decoded is. What leaves the volume
usable is returned as flags: missing or unevenly spaced slices are kept with each slice's true
position (2D and 2.5D need no regular grid; stages that do interpolate on the positions), gantry
tilt is corrected or kept as configured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ct25d.dicom.headers import SliceHeader
from ct25d.dicom.hu import rescale_of, rescale_type_flag
from ct25d.dicom.pixels import read_hu, read_hu_native
from ct25d.errors import SeriesError, SliceError

POSITION_EPS_MM = 1e-3
ORIENTATION_EPS = 1e-4
TILT_EPS_DEG = 0.01  # below this a "tilt" is rounding in the position strings
TILT_MODES = ("correct", "keep", "reject")


@dataclass(frozen=True)
class GeometryRules:
    """How series geometry is judged, from config `ingest`.

    `spacing_tolerance`: relative deviation of a slice step from the median step above which the
    series is flagged irregular. `tilt`: `correct` resamples a tilted series onto an orthogonal grid,
    `keep` stores the sheared geometry as acquired, `reject` refuses it; any tilt above
    `max_tilt_deg` is refused.
    """

    spacing_tolerance: float = 0.1
    max_tilt_deg: float = 30.0
    tilt: str = "correct"

    def __post_init__(self) -> None:
        if self.tilt not in TILT_MODES:
            raise ValueError(f"ingest.tilt: expected one of {TILT_MODES}, got {self.tilt!r}")


@dataclass
class SortedSeries:
    """Images in slice order plus the geometry derived from them."""

    headers: list[SliceHeader]
    positions_mm: np.ndarray  # position of each slice along the unit slice normal
    positions_xyz: np.ndarray  # (Z, 3) ImagePositionPatient of each slice
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # SimpleITK order: row-major 3x3, columns are the x, y, z axes
    tilt_deg: float
    # (kept, duplicate) images at one position: their pixels are compared when decoding.
    duplicates: list[tuple[SliceHeader, SliceHeader]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    # images set aside for their headers (a missing geometry tag, another size), with their reasons
    dropped: list[SliceError] = field(default_factory=list)


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
            "positions_mm": [round(float(v), 4) for v in s.positions_mm],
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


GEOMETRY_TAGS = {"position": "ImagePositionPatient", "orientation": "ImageOrientationPatient",
                 "pixel_spacing": "PixelSpacing"}  # fmt: skip


def _image_defect(h: SliceHeader) -> str:
    """Why one image's header keeps it out of any volume ("" if it does not)."""
    if h.modality != "CT":
        return f"modality {h.modality or '(none)'} is not CT"
    if not h.has_pixels:
        return "no pixel data"
    missing = next((tag for name, tag in GEOMETRY_TAGS.items() if getattr(h, name) is None), "")
    return f"missing or malformed {missing}" if missing else ""


def _check_headers(headers: Sequence[SliceHeader]) -> None:
    """Refuse a set of images that is not one CT series with the geometry tags a volume needs."""
    if not headers:
        raise SeriesError("empty series")
    ids = {h.series_id for h in headers}
    if len(ids) > 1:
        raise SeriesError(f"mixed series: {len(ids)} SeriesInstanceUIDs in one set of files", headers[0].path)
    for h in headers:
        if defect := _image_defect(h):
            raise SeriesError(defect, h.path)
    if len(headers) < 2:
        raise SeriesError("single slice: a volume needs at least 2", headers[0].path)


def _set_aside_odd(headers: Sequence[SliceHeader]) -> tuple[list[SliceHeader], list[SliceError]]:
    """(the images that fit together, the others with their reasons): an image with a defect of its
    own, or a Rows/Columns other than the commonest, is set aside when such images are fewer than
    half the series. More, and the series itself is at fault: nothing is set aside, and the checks
    refuse it naming the first odd file."""
    reasons = [_image_defect(h) for h in headers]
    sizes = Counter((h.rows, h.columns) for h, r in zip(headers, reasons, strict=True) if not r)
    if sizes:
        (rows, columns), _ = sizes.most_common(1)[0]
        reasons = [r or ("" if (h.rows, h.columns) == (rows, columns) else
                         f"Rows/Columns {h.rows}x{h.columns} differ from the series' {rows}x{columns}")
                   for h, r in zip(headers, reasons, strict=True)]  # fmt: skip
    n_odd = sum(map(bool, reasons))
    if not n_odd or 2 * n_odd >= len(headers):
        return list(headers), []
    kept = [h for h, r in zip(headers, reasons, strict=True) if not r]
    return kept, [SliceError(r, h.path, h.frame) for h, r in zip(headers, reasons, strict=True) if r]


def unit_axes(orientation: Sequence[float], path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, normal) unit vectors from ImageOrientationPatient, normalised as dcm2niix does."""
    values = np.asarray(orientation, dtype=float)
    row, col = values[:3], values[3:]
    lengths = np.linalg.norm(row), np.linalg.norm(col)
    if min(lengths) < 0.5:
        raise SeriesError(f"ImageOrientationPatient {list(values)} does not hold two direction vectors", path)
    row, col = row / lengths[0], col / lengths[1]
    if abs(float(row @ col)) > 0.01:
        raise SeriesError(
            f"ImageOrientationPatient row and column are not perpendicular (cos {row @ col:.3f})", path
        )
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _drop_duplicates(
    headers: list[SliceHeader], positions: np.ndarray, along: np.ndarray
) -> tuple[list[SliceHeader], np.ndarray, np.ndarray, list[tuple[SliceHeader, SliceHeader]]]:
    """Keep the first image at each position; the others are returned as (kept, duplicate) pairs."""
    keep = np.concatenate([[True], np.diff(along) > POSITION_EPS_MM])
    kept_index = np.cumsum(keep) - 1
    kept = [h for h, k in zip(headers, keep, strict=True) if k]
    pairs = [(kept[kept_index[i]], headers[i]) for i in np.flatnonzero(~keep)]
    return kept, positions[keep], along[keep], pairs


def _spacing_flag(along: np.ndarray, tolerance: float) -> tuple[float, str]:
    """(median step, "" or a flag describing missing / uneven slices)."""
    steps = np.diff(along)
    spacing = float(np.median(steps))
    deviation = (steps - spacing) / spacing
    odd = np.abs(deviation) > tolerance
    if not odd.any():
        return spacing, ""
    worst = int(np.abs(deviation).argmax())
    gaps, overlaps = int((deviation > tolerance).sum()), int((deviation < -tolerance).sum())
    return spacing, (
        f"irregular slice spacing: {gaps} gap(s), {overlaps} short step(s); largest deviation "
        f"{steps[worst]:.2f} mm between slices {worst} and {worst + 1} (median {spacing:.2f} mm); "
        "slices kept at their true positions"
    )


def sort_series(headers: Sequence[SliceHeader], rules: GeometryRules) -> SortedSeries:
    """Validate and order a series' images, setting aside the few that cannot join the rest (in
    `dropped`); raise SeriesError on anything that cannot form a volume."""
    kept, dropped = _set_aside_odd(headers)
    try:
        series = _sort(kept, rules)
    except SeriesError as exc:
        if not dropped:
            raise
        raise SeriesError(_after(exc.reason, dropped, "whose headers differ from the series'"), exc.path,
                          dropped) from exc  # fmt: skip
    series.dropped = dropped
    return series


def _sort(headers: Sequence[SliceHeader], rules: GeometryRules) -> SortedSeries:
    """Order images that fit together and derive the geometry; SeriesError if they cannot form a volume."""
    _check_headers(headers)
    _consistent(headers, "rows")
    _consistent(headers, "columns")
    row, col, normal = unit_axes(_consistent(headers, "orientation", ORIENTATION_EPS), headers[0].path)
    pixel_spacing = _consistent(headers, "pixel_spacing", 1e-4)

    positions = np.array([h.position for h in headers], dtype=float)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = [headers[i] for i in order]
    ordered, positions, along, duplicates = _drop_duplicates(ordered, positions[order], along[order])
    flags = [f"{len(duplicates)} duplicate slice position(s) set aside"] if duplicates else []
    if len(ordered) < 2:
        raise SeriesError("single slice position: every image lies at one position", ordered[0].path)

    spacing, irregular = _spacing_flag(along, rules.spacing_tolerance)
    flags += [flag for flag in (irregular, rescale_type_flag(ordered)) if flag]

    travel = positions[-1] - positions[0]
    cos_tilt = min(1.0, abs(float(travel @ normal)) / float(np.linalg.norm(travel)))
    tilt = float(np.degrees(np.arccos(cos_tilt)))
    if tilt > rules.max_tilt_deg:
        raise SeriesError(
            f"gantry tilt {tilt:.1f} deg exceeds max_tilt_deg {rules.max_tilt_deg}", ordered[0].path
        )
    third, step = normal, spacing
    if tilt > TILT_EPS_DEG:
        if rules.tilt == "reject":
            raise SeriesError(f"gantry tilt {tilt:.2f} deg (ingest.tilt: reject)", ordered[0].path)
        flags.append(f"gantry tilt {tilt:.1f} deg")
        if rules.tilt == "keep":  # the sheared grid as acquired: slice k at origin + k * step * travel
            third, step = travel / np.linalg.norm(travel), spacing / cos_tilt

    direction = np.stack([row, col, third], axis=1)
    return SortedSeries(
        headers=ordered,
        positions_mm=along,
        positions_xyz=positions,
        spacing_zyx=(step, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin_xyz=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
        tilt_deg=tilt,
        duplicates=duplicates,
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


def decode_image(h: SliceHeader, out: np.ndarray) -> None:
    """One image's HU into `out`; SliceError naming the file (and frame) when it cannot be decoded."""
    try:
        if h.pixel_offset >= 0:
            read_hu_native(h.path, h.pixel_offset, rescale_of(h), out)
        else:
            read_hu(h.path, rescale_of(h), out, h.frame)
    except SliceError as exc:
        frame = f"frame {h.frame + 1}: " if h.frame >= 0 else ""
        raise SliceError(frame + exc.reason, h.path, h.frame) from exc


def _decode(series: SortedSeries, scratch: ScratchVolume | None) -> tuple[Volume, list[SliceError]]:
    """The volume, and the duplicates set aside because their pixels equal the kept image's.

    A duplicate whose pixels differ from the kept image's is a conflict no rule can settle: the
    series is refused naming both files.
    """
    first = series.headers[0]
    shape = (len(series.headers), first.rows, first.columns)
    hu = scratch.take(shape) if scratch else np.empty(shape, dtype=np.int16)
    for z, h in enumerate(series.headers):
        decode_image(h, hu[z])
    z_of = {h.key: z for z, h in enumerate(series.headers)}
    set_aside = []
    other = np.empty(shape[1:], dtype=np.int16)
    for kept, duplicate in series.duplicates:
        decode_image(duplicate, other)
        at = f"{series.positions_mm[z_of[kept.key]]:.2f} mm"
        if not np.array_equal(other, hu[z_of[kept.key]]):
            raise SeriesError(
                f"conflicting duplicates: {duplicate.name} and {kept.name} lie at one position ({at}) "
                "with different pixels",
                duplicate.path,
            )
        set_aside.append(SliceError(f"duplicate of {kept.name} at {at} (identical pixels)", duplicate.path,
                                    duplicate.frame))  # fmt: skip
    return Volume(hu=hu, series=series), set_aside


def load_volume(
    series: SortedSeries, rules: GeometryRules, scratch: ScratchVolume | None = None
) -> tuple[Volume, list[SliceError]]:
    """Decode a sorted series into one (Z, Y, X) int16 HU array (in `scratch`'s memory if given).

    An image whose pixels cannot be decoded is dropped (and returned, so the caller reports it) and
    the remaining images are sorted again: a dropped slice leaves a shorter volume, or a gap that is
    flagged. When what is left cannot form a volume, the SeriesError carries the dropped images and
    names the first of them in its reason, so the real cause is never lost.
    """
    set_aside = list(series.dropped)  # for their headers, by `sort_series`
    dropped: list[SliceError] = []  # here, for their pixels
    while True:
        try:
            volume, duplicates = _decode(series, scratch)
            return volume, set_aside + dropped + duplicates
        except SliceError as exc:
            dropped.append(exc)
        except SeriesError as exc:
            raise SeriesError(_after(exc.reason, dropped), exc.path, set_aside + dropped) from exc
        gone = (dropped[-1].path, dropped[-1].frame)
        remaining = [h for h in series.headers + [d for _, d in series.duplicates] if h.key != gone]
        try:
            series = sort_series(remaining, rules)
        except SeriesError as exc:
            raise SeriesError(_after(exc.reason, dropped), dropped[0].path,
                              set_aside + dropped + exc.dropped) from exc  # fmt: skip
        set_aside += series.dropped


def _after(reason: str, dropped: list[SliceError], why: str = "that could not be decoded") -> str:
    """A series' failure reason, with the images dropped before it and the first one's own reason."""
    if not dropped:
        return reason
    more = f" and {len(dropped) - 1} more" if len(dropped) > 1 else ""
    first = f"{dropped[0].reason}{more}"
    return f"{reason}, after dropping {len(dropped)} image(s) {why} ({first})"
