"""Head crop and square fitting of HU volumes.

The CT table, head holders and cushions sit in every scan, differ between scanners and sites, and
are exactly the kind of artefact a classifier learns instead of anatomy (the main design's CQ500
check). The crop keeps the largest connected body component — a morphological opening first
detaches the thin table from the head — sets everything else to air and cuts the in-plane box
around it. Slices are never dropped: slice labels are indexed by z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ct25d.errors import Ct25dError

AIR_HU = -1024
_INT16 = np.iinfo(np.int16)


class EmptyVolumeError(Ct25dError):
    """A study holds no body voxels (all air, or nothing survives the opening)."""


@dataclass(frozen=True)
class CropSettings:
    """Config `preprocess`: body threshold (HU), opening radius and box margin (mm)."""

    threshold_hu: float = -200.0
    opening_mm: float = 3.0
    margin_mm: float = 5.0


@dataclass(frozen=True)
class CropBox:
    """In-plane box [y0, y1) x [x0, x1) in voxel indices of the input volume."""

    y0: int
    y1: int
    x0: int
    x1: int

    def as_list(self) -> list[int]:
        return [self.y0, self.y1, self.x0, self.x1]


def _ball(radius_mm: float, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """Ellipsoidal structuring element of `radius_mm` on an anisotropic grid (5 mm slices -> a disc)."""
    radii = [int(radius_mm // s) for s in spacing_zyx]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist = sum((g * s / radius_mm) ** 2 for g, s in zip(grids, spacing_zyx, strict=True))
    return dist <= 1.0


def head_mask(
    hu: np.ndarray, spacing_zyx: tuple[float, ...], settings: CropSettings, study_id: str
) -> np.ndarray:
    """Boolean (Z, Y, X) mask of the head: largest 3D component of the opened body mask, holes
    filled slice by slice (air in sinuses and ventricles-free cavities stays inside)."""
    body = hu > settings.threshold_hu
    if not body.any():
        raise EmptyVolumeError(f"study {study_id}: no voxel above {settings.threshold_hu} HU (all air)")
    if settings.opening_mm > 0:
        body = ndimage.binary_opening(body, structure=_ball(settings.opening_mm, spacing_zyx))
    labels, n = ndimage.label(body)
    if n == 0:
        raise EmptyVolumeError(
            f"study {study_id}: nothing above {settings.threshold_hu} HU survives a "
            f"{settings.opening_mm} mm opening (preprocess.opening_mm)"
        )
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    head = labels == int(np.argmax(sizes))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(head, structure=in_plane)


def crop_head(
    hu: np.ndarray, spacing_zyx: tuple[float, ...], settings: CropSettings, study_id: str
) -> tuple[np.ndarray, CropBox]:
    """Air outside the head, then the in-plane bounding box of the head plus `margin_mm`."""
    mask = head_mask(hu, spacing_zyx, settings, study_id)
    ys = np.flatnonzero(mask.any(axis=(0, 2)))
    xs = np.flatnonzero(mask.any(axis=(0, 1)))
    my, mx = (round(settings.margin_mm / s) for s in spacing_zyx[1:])
    box = CropBox(
        y0=max(0, int(ys[0]) - my),
        y1=min(hu.shape[1], int(ys[-1]) + 1 + my),
        x0=max(0, int(xs[0]) - mx),
        x1=min(hu.shape[2], int(xs[-1]) + 1 + mx),
    )
    out = np.where(mask, hu, np.int16(AIR_HU)).astype(np.int16)
    return out[:, box.y0 : box.y1, box.x0 : box.x1], box


def fit_square(
    hu: np.ndarray, spacing_yx: tuple[float, float], size: int, fill: int = AIR_HU
) -> tuple[np.ndarray, tuple[float, float]]:
    """Pad the shorter in-plane side with air (`fill`) to a square field of view (in mm), then resize
    to `size` x `size` with a Gaussian anti-aliasing prefilter and linear interpolation.

    Returns the int16 volume and its new in-plane spacing (equal on both axes up to rounding).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    sy, sx = (float(s) for s in spacing_yx)
    fov = max(hu.shape[1] * sy, hu.shape[2] * sx)
    target = (max(hu.shape[1], round(fov / sy)), max(hu.shape[2], round(fov / sx)))
    pads = [(0, 0)] + [
        ((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(hu.shape[1:], target, strict=True)
    ]
    square = np.pad(hu, pads, mode="constant", constant_values=fill).astype(np.float32)
    factors = [t / size for t in target]  # input pixels per output pixel
    sigma = [0.0] + [max(0.0, (f - 1) / 2) for f in factors]
    if any(sigma):
        square = ndimage.gaussian_filter(square, sigma=sigma, mode="nearest")
    out = ndimage.zoom(square, (1.0, 1 / factors[0], 1 / factors[1]), order=1, mode="nearest", grid_mode=True)
    assert out.shape[1:] == (size, size), out.shape
    np.round(out, out=out)
    np.clip(out, _INT16.min, _INT16.max, out=out)
    return out.astype(np.int16), (target[0] * sy / size, target[1] * sx / size)
