"""The cached input of the 3D families: every study as one `(C, D, S, S)` uint8 volume.

Resampled HU -> slices on a regular grid of their true positions (a series with a missing slice is
interpolated here, not treated as evenly spaced) -> the preprocessing head crop -> a square field
of view of `size` pixels -> the configured windows as channels. Along z, by default
(`depth: from_slices`) the study keeps its own slices, so every slice of a regular series is
bit-identical to the slice store's (the 3D side sees the pixels Stage 1 sees) and carries its
slice labels; a study with more than `max_depth` slices keeps the `max_depth` consecutive slices
holding the most head. `source_z` records the slice-store index of every stored slice. A fixed
`depth` instead resizes z to that many slices (a smaller volume, with no slice labels).
Written once per shard (one zarr array and one chunk per study: the 3D loaders read studies whole),
so training reads a few hundred kilobytes per study instead of redoing this.

Where a lesion mask is known (the synthetic cohort's `truth/masks.zarr`, or a real archive's own,
keyed by StudyInstanceUID on the chosen series' slice grid) it goes through exactly the same
geometry and is stored as one more channel (0/255), so the dual-task 3D U-Net can learn from it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage

from ct25d.dicom.headers import pseudonym
from ct25d.errors import ConfigError
from ct25d.shards import shard_writer
from ct25d.slices.window import Window, apply_windows
from ct25d.volumes.crop import CropSettings, crop_head, fit_square
from ct25d.volumes.resample import is_irregular, regular_slices
from ct25d.volumes.store import prepared_studies

log = logging.getLogger(__name__)

MASK_CHANNEL = "mask"
_MASK_ON = 100  # mask voxels travel through the HU geometry as int16 0 / 100, then threshold at half


@dataclass(frozen=True)
class FixedVolumeSettings:
    """Config `baselines.volume` plus the preprocessing crop it shares with the slice stores.

    `depth` None: the study's own slices (`from_slices`), at most `max_depth`."""

    depth: int | None
    size: int
    windows: tuple[Window, ...]
    crop: CropSettings | None
    max_depth: int = 64

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth < 4:
            raise ConfigError(f"baselines.volume.depth: must be >= 4 slices, got {self.depth}")
        if self.max_depth < 4:
            raise ConfigError(f"baselines.volume.max_depth: must be >= 4 slices, got {self.max_depth}")
        if self.size < 16:
            raise ConfigError(f"baselines.volume.size: must be >= 16 pixels, got {self.size}")
        if not self.windows:
            raise ConfigError("baselines.volume.windows: name at least one window of preprocess.windows")


FROM_SLICES = "from_slices"


def volume_geometry(volume: dict[str, Any], slice_size: int) -> tuple[int | None, int, int]:
    """(depth or None for the study's own slices, in-plane size, the depth every volume is padded
    to) of config `baselines.volume`; `from_slices` takes `preprocess.size` (`slice_size`)."""
    size, depth = volume.get("size", FROM_SLICES), volume.get("depth", FROM_SLICES)
    for key, value in (("size", size), ("depth", depth)):
        if value != FROM_SLICES and not isinstance(value, int):
            raise ConfigError(f"baselines.volume.{key}: an integer or {FROM_SLICES!r}, got {value!r}")
    fixed = None if depth == FROM_SLICES else int(depth)
    max_depth = int(volume.get("max_depth", 64))
    return fixed, slice_size if size == FROM_SLICES else int(size), fixed or max_depth


def choose_windows(all_windows: Sequence[Window], names: Sequence[str] | None) -> tuple[Window, ...]:
    """The windows named in `baselines.volume.windows` (None: all of `preprocess.windows`)."""
    if names is None:
        return tuple(all_windows)
    known = {w.name: w for w in all_windows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"baselines.volume.windows: {unknown} not in preprocess.windows {sorted(known)}")
    return tuple(known[n] for n in names)


def _to_depth(volume: np.ndarray, depth: int) -> np.ndarray:
    """Linear resize along z to `depth` slices, low-pass filtered first when shrinking."""
    factor = volume.shape[0] / depth
    data = volume.astype(np.float32)
    if factor > 1:
        data = ndimage.gaussian_filter1d(data, sigma=(factor - 1) / 2, axis=0, mode="nearest")
    out = ndimage.zoom(data, (depth / volume.shape[0], 1.0, 1.0), order=1, mode="nearest", grid_mode=True)
    assert out.shape[0] == depth, out.shape
    return out


def head_window(volume: np.ndarray, depth: int, threshold_hu: float = -500.0) -> int:
    """First index of the `depth` consecutive slices holding the most voxels above `threshold_hu`
    (the head, not the air or neck at the ends); the earliest such window on ties."""
    area = (volume > threshold_hu).sum(axis=(1, 2))
    sums = np.convolve(area, np.ones(depth, dtype=np.int64), mode="valid")
    return int(np.argmax(sums))


def nearest_source(grid: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each position of a regular grid, the index of the nearest true slice."""
    return np.abs(grid[:, None] - positions[None, :]).argmin(axis=1)


def prepare_volume(
    hu: np.ndarray,
    attrs: dict[str, Any],
    s: FixedVolumeSettings,
    study_id: str,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """`(C, D, S, S)` uint8 (windows, then the mask if given) and the geometry that produced it."""
    spacing = [float(v) for v in attrs["spacing_zyx"]]
    source_z = np.arange(hu.shape[0])
    if is_irregular(attrs):
        positions = np.asarray(attrs["positions_mm"], dtype=float)
        hu, grid = regular_slices(hu, positions, spacing[0])
        source_z = nearest_source(grid, positions)
        if mask is not None:
            mask, _ = regular_slices(mask, positions, spacing[0])
    box = None
    if s.crop is not None:
        hu, box = crop_head(hu, tuple(spacing), s.crop, study_id)
        if mask is not None:
            mask = mask[:, box.y0 : box.y1, box.x0 : box.x1]
    fitted, spacing_yx = fit_square(hu, (spacing[1], spacing[2]), s.size)
    if s.depth is None:
        start = head_window(fitted, s.max_depth) if len(fitted) > s.max_depth else 0
        keep = slice(start, start + s.max_depth)
        deep, source_z, z_mm = fitted[keep], source_z[keep], spacing[0]
        if mask is not None:
            mask = mask[keep]
    else:
        deep, z_mm = np.rint(_to_depth(fitted, s.depth)).astype(np.int16), spacing[0] * len(fitted) / s.depth
    channels = apply_windows(deep, s.windows).transpose(1, 0, 2, 3)  # (C, D, S, S)
    if mask is not None:
        square, _ = fit_square(mask, (spacing[1], spacing[2]), s.size, fill=0)
        resized = square if s.depth is None else _to_depth(square, s.depth)
        lesion = (resized >= _MASK_ON / 2).astype(np.uint8) * 255
        channels = np.concatenate([channels, lesion[None]], axis=0)
    info = {
        "channels": [w.name for w in s.windows] + ([MASK_CHANNEL] if mask is not None else []),
        # the slice-store index of each stored slice (None: z was resized to a fixed depth)
        "source_z": source_z.tolist() if s.depth is None else None,
        "spacing_zyx": [z_mm, *spacing_yx],
        "source_shape_zyx": list(hu.shape),
        "crop_box_yx": box.as_list() if box is not None else None,
        "irregular_z_interpolated": is_irregular(attrs),
    }
    return np.ascontiguousarray(channels), info


class MaskSource:
    """Lesion masks keyed by StudyInstanceUID, found by the study's pseudonym (the salt of ingest)."""

    def __init__(self, path: str | Path, salt: str, aliases: dict[str, str] | None = None) -> None:
        """`aliases` {study_id: StudyInstanceUID} name the studies an archive's layout keys by
        something else (a CQ500 study is its folder, `ct25d.dicom.scan`)."""
        self.group = zarr.open_group(str(path), mode="r")
        self.by_study = {pseudonym(uid, salt, "st-"): uid for uid in self.group.array_keys()}
        self.by_study.update(aliases or {})

    def mask_for(
        self, study_id: str, attrs: dict[str, Any], kinds: Sequence[str] | None = None
    ) -> tuple[np.ndarray | None, str]:
        """(mask as int16 0/100 on the HU grid, "") or (None, why not).

        `kinds`: only these lesion kinds, where the mask is a bit field naming its bits (the synthetic
        cohort's `bits` attribute: hemorrhage subtypes and ischemia); any voxel above 0 otherwise."""
        uid = self.by_study.get(study_id)
        if uid is None:
            return None, "no mask for this study"
        array = self.group[uid]
        mask = np.asarray(array[...])
        names = array.attrs.get("bits")
        if kinds is not None and names:
            mask = mask & sum(1 << i for i, name in enumerate(names) if name in kinds)
        source = tuple(attrs.get("source_shape_zyx") or attrs["shape_zyx"])
        if mask.shape != source:
            return None, f"mask shape {mask.shape} differs from the ingested volume {source}"
        if float(attrs.get("tilt_deg") or 0.0) > 0.01:
            return None, "gantry tilt was corrected; the mask is on the tilted grid"
        target = tuple(attrs["shape_zyx"])
        values = (mask > 0).astype(np.float32) * _MASK_ON
        if target != mask.shape:  # resampled in-plane: the same field of view on the new grid
            zoom = [t / m for t, m in zip(target, mask.shape, strict=True)]
            values = ndimage.zoom(values, zoom, order=1, mode="nearest", grid_mode=True)
        return np.rint(values).astype(np.int16), ""


def build_fixed_shard(
    resampled_store: str | Path,
    out_store: str | Path,
    settings: FixedVolumeSettings,
    provenance: dict[str, Any],
    masks: MaskSource | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write every study of a resampled HU shard; returns (one row per study written: study_id,
    depth (stored slices), pad_to (the depth the loaders pad to), from_slices, store, has_mask,
    mask_note; one row per study that could not be prepared: study_id, reason)."""
    rows, rejected = [], []
    notes: dict[str, str] = {}

    def prepare(study_id: str, hu: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        mask, notes[study_id] = (
            masks.mask_for(study_id, attrs) if masks is not None else (None, "no mask source")
        )
        return prepare_volume(hu, attrs, settings, study_id, mask)

    with shard_writer(out_store, provenance) as writer:
        for study_id, (volume, info) in prepared_studies(
            resampled_store, prepare, rejected, "volumes", progress
        ):
            writer.write(
                study_id, volume, info, chunks=volume.shape, compressors=zarr.codecs.ZstdCodec(level=1)
            )
            has_mask = info["channels"][-1] == MASK_CHANNEL
            rows.append(
                {
                    "study_id": study_id,
                    "depth": volume.shape[1],
                    "pad_to": settings.depth or settings.max_depth,
                    "from_slices": settings.depth is None,
                    "has_mask": has_mask,
                    "mask_note": notes[study_id],
                }
            )
    columns = ["study_id", "depth", "pad_to", "from_slices", "has_mask", "mask_note"]
    table = pd.DataFrame(rows, columns=columns).assign(store=str(out_store))
    log.info(
        "wrote %d volumes to %s (%d skipped, %d with masks)",
        len(table),
        out_store,
        len(rejected),
        int(table["has_mask"].sum()),
    )
    return table, pd.DataFrame(rejected, columns=["study_id", "reason"])


def read_fixed(store: str | Path, study_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One study's `(C, D, S, S)` uint8 volume and its attributes."""
    array = zarr.open_array(str(Path(store) / study_id), mode="r")
    return np.asarray(array[...]), dict(array.attrs)


def read_fixed_attrs(store: str | Path, study_id: str) -> dict[str, Any]:
    """One study's attributes (its geometry and `source_z`), without its voxels."""
    return dict(zarr.open_array(str(Path(store) / study_id), mode="r").attrs)


def volume_channels(store: str | Path, study_id: str) -> int:
    """The image channels of a store's volumes (its windows; the mask channel is no input)."""
    return len([c for c in read_fixed_attrs(store, study_id)["channels"] if c != MASK_CHANNEL])
