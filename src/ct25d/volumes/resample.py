"""Resample HU volumes onto a common voxel spacing with SimpleITK.

Scanners differ mostly in-plane (0.4-1 mm pixels) while slice spacing is a protocol choice; the
main design keeps slices native (2.5D models see one slice at a time), so `slice_mm=None` leaves
the slice axis untouched. The output grid keeps the volume's direction and the centre of its
field of view, so a tilted or rotated series stays where it was in patient space.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from ct25d.errors import ConfigError
from ct25d.shards import shard_studies
from ct25d.volumes.store import DEFAULT_CODEC, HUCodec, hu_store_writer, read_volume

log = logging.getLogger(__name__)

AIR_HU = -1024
INTERPOLATORS: dict[str, int] = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "gaussian": sitk.sitkGaussian,
    "lanczos": sitk.sitkLanczosWindowedSinc,
    "hamming": sitk.sitkHammingWindowedSinc,
    "cosine": sitk.sitkCosineWindowedSinc,
    "welch": sitk.sitkWelchWindowedSinc,
    "blackman": sitk.sitkBlackmanWindowedSinc,
}
_INT16 = np.iinfo(np.int16)


def sitk_interpolator(name: str) -> int:
    """The SimpleITK enum for a config name; unknown names fail before any work is done."""
    try:
        return INTERPOLATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"preprocess.interpolator: unknown interpolator {name!r}; expected one of {sorted(INTERPOLATORS)}"
        ) from None


def target_grid(
    shape_zyx: tuple[int, ...],
    spacing_zyx: tuple[float, ...],
    in_plane_mm: float | None,
    slice_mm: float | None,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(shape, spacing) that cover the same physical extent (n * spacing) at the new spacing."""
    for key, value in (("in_plane_mm", in_plane_mm), ("slice_mm", slice_mm)):
        if value is not None and not value > 0:
            raise ConfigError(f"preprocess.{key}: must be > 0 or null, got {value!r}")
    wanted = (slice_mm, in_plane_mm, in_plane_mm)
    spacing = tuple(float(old if new is None else new) for old, new in zip(spacing_zyx, wanted, strict=True))
    shape = tuple(
        int(n) if new == old else max(1, round(n * old / new))
        for n, old, new in zip(shape_zyx, spacing_zyx, spacing, strict=True)
    )
    return shape, spacing  # type: ignore[return-value]


def resample_to_grid(
    hu: np.ndarray,
    attrs: dict[str, Any],
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
    interp: int,
) -> tuple[np.ndarray, list[float]]:
    """Resample onto a grid of the given shape/spacing, same direction and field-of-view centre.

    Returns the int16 volume (rounded to nearest, ties to even; clipped; -1024 outside the input) and
    the new origin (x, y, z).
    """
    old_spacing = np.asarray(attrs["spacing_zyx"], dtype=float)[::-1]  # x, y, z as ITK wants
    new_spacing = np.asarray(spacing_zyx, dtype=float)[::-1]
    old_size = np.asarray(hu.shape, dtype=float)[::-1]
    new_size = np.asarray(shape_zyx, dtype=float)[::-1]
    direction = np.asarray(attrs["direction"], dtype=float).reshape(3, 3)
    origin = np.asarray(attrs["origin_xyz"], dtype=float)
    centre = origin + direction @ ((old_size - 1) * old_spacing / 2)
    new_origin = centre - direction @ ((new_size - 1) * new_spacing / 2)

    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(tuple(old_spacing))
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(direction.ravel()))
    out = sitk.Resample(
        image,
        [int(v) for v in new_size],
        sitk.Transform(),
        interp,
        tuple(new_origin),
        tuple(new_spacing),
        tuple(direction.ravel()),
        float(AIR_HU),
        sitk.sitkFloat32,
    )
    values = sitk.GetArrayFromImage(out)
    np.round(values, out=values)
    np.clip(values, _INT16.min, _INT16.max, out=values)
    return values.astype(np.int16), [float(v) for v in new_origin]


def regular_slices(
    hu: np.ndarray, positions_mm: np.ndarray, slice_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """(volume, positions) on a regular grid of `slice_mm` from the first slice's position, each
    new slice linearly interpolated between the two true slices around it.

    Written by hand because an ITK image has one slice spacing: a series with a missing or
    unevenly spaced slice cannot be described to SimpleITK, and treating its slices as evenly
    spaced would move every slice after the gap.
    """
    positions = np.asarray(positions_mm, dtype=float)
    grid = positions[0] + slice_mm * np.arange(
        int(np.floor((positions[-1] - positions[0]) / slice_mm + 1e-6)) + 1
    )
    upper = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    weight = np.clip((grid - positions[upper - 1]) / (positions[upper] - positions[upper - 1]), 0.0, 1.0)
    below, above = hu[upper - 1].astype(np.float32), hu[upper].astype(np.float32)
    values = below + weight[:, None, None].astype(np.float32) * (above - below)
    return np.clip(np.rint(values), _INT16.min, _INT16.max).astype(np.int16), grid


def is_irregular(attrs: dict[str, Any]) -> bool:
    """Whether the volume's slices are not evenly spaced (ingest kept them at their true positions)."""
    positions = attrs.get("positions_mm")
    if positions is None or len(positions) < 3:
        return False
    steps = np.diff(positions)
    return bool(np.abs(steps - attrs["spacing_zyx"][0]).max() > 1e-3)


def resample_volume(
    hu: np.ndarray,
    attrs: dict[str, Any],
    in_plane_mm: float | None,
    slice_mm: float | None,
    interpolator: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Resample a (Z, Y, X) int16 HU volume; `None` keeps that axis' native spacing.

    When nothing changes the volume is returned as is (a copy; `resample_shard` then stores no copy).
    A volume with uneven slices is first put on a regular `slice_mm` grid from its true positions
    (`regular_slices`); SimpleITK then does the rest. The attrs gain `source_spacing_zyx` /
    `source_shape_zyx`, and geometry keys are updated.
    """
    interp = sitk_interpolator(interpolator)
    source_spacing, source_shape = [float(v) for v in attrs["spacing_zyx"]], list(hu.shape)
    if slice_mm is not None and is_irregular(attrs):
        hu, positions = regular_slices(hu, np.asarray(attrs["positions_mm"]), float(slice_mm))
        attrs = {
            **attrs,
            "spacing_zyx": [float(slice_mm), *source_spacing[1:]],
            "positions_mm": positions.tolist(),
        }
    spacing_in = tuple(float(v) for v in attrs["spacing_zyx"])
    shape, spacing = target_grid(hu.shape, spacing_in, in_plane_mm, slice_mm)
    if spacing == spacing_in:
        out, origin = hu.astype(np.int16, copy=True), list(attrs["origin_xyz"])
    else:
        out, origin = resample_to_grid(hu, attrs, shape, spacing, interp)
    new_attrs = {
        **attrs,
        "spacing_zyx": list(spacing),
        "origin_xyz": origin,
        "shape_zyx": list(out.shape),
        "source_spacing_zyx": source_spacing,
        "source_shape_zyx": source_shape,
    }
    if "positions_mm" in attrs and spacing[0] != spacing_in[0]:  # new slices, about the same centre
        centre = float(attrs["positions_mm"][0]) + (hu.shape[0] - 1) * spacing_in[0] / 2
        offsets = (np.arange(out.shape[0]) - (out.shape[0] - 1) / 2) * spacing[0]
        new_attrs["positions_mm"] = (centre + offsets).tolist()
    return out, new_attrs


def resample_shard(
    in_store: str | Path,
    out_store: str | Path,
    settings: dict[str, Any],
    provenance: dict[str, Any],
    codec: HUCodec = DEFAULT_CODEC,
    progress: bool = True,
) -> pd.DataFrame:
    """Resample every study of a HU shard store into a new store, one study in memory at a time.

    `settings` holds `in_plane_mm`, `slice_mm` (number or None) and `interpolator`. A study that
    resampling leaves unchanged (`null` settings on a regular grid) is stored as an alias of its
    input, not a second copy of its voxels. Returns one row per study: study_id, the source and new
    shape/spacing, and `unchanged`.
    """
    for key in ("in_plane_mm", "slice_mm", "interpolator"):
        if key not in settings:
            raise ConfigError(f"missing config key preprocess.{key}")
    sitk_interpolator(settings["interpolator"])  # fail before opening any store
    rows = []
    studies = shard_studies(in_store)
    with hu_store_writer(out_store, provenance, codec) as writer:
        for study_id in tqdm(studies, desc=f"resample {Path(in_store).name}", disable=not progress):
            hu, attrs = read_volume(in_store, study_id)
            out, new_attrs = resample_volume(
                hu, attrs, settings["in_plane_mm"], settings["slice_mm"], settings["interpolator"]
            )
            unchanged = out.shape == hu.shape and np.array_equal(out, hu)
            if unchanged:
                writer.alias(study_id, in_store, new_attrs)
            else:
                writer.write(study_id, out, new_attrs)
            rows.append(
                {
                    "study_id": study_id,
                    "source_shape_zyx": list(hu.shape),
                    "source_spacing_zyx": new_attrs["source_spacing_zyx"],
                    "shape_zyx": list(out.shape),
                    "spacing_zyx": new_attrs["spacing_zyx"],
                    "unchanged": unchanged,
                }
            )
    same = sum(row["unchanged"] for row in rows)
    log.info("resampled %d studies from %s to %s (%d unchanged: stored as aliases, no copy)",
             len(rows), in_store, out_store, same)  # fmt: skip
    return pd.DataFrame(rows)
