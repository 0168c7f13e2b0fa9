"""HU shard store -> windowed slice store: crop, fit to a square, window, write.

One study in memory at a time. The per-study recipe is `prepare_study` (a pure function), so a
test or a notebook can reproduce any stored slice bit for bit from the HU store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ct25d.slices.store import SliceStoreWriter
from ct25d.slices.window import Window, apply_windows
from ct25d.volumes.crop import CropSettings, crop_head, fit_square
from ct25d.volumes.store import prepared_studies

log = logging.getLogger(__name__)


def prepare_study(
    hu: np.ndarray, attrs: dict[str, Any], crop: CropSettings | None, size: int, study_id: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """(Z, size, size) int16 HU ready for windowing, and the geometry that produced it."""
    spacing = tuple(float(v) for v in attrs["spacing_zyx"])
    box = None
    if crop is not None:
        hu, box = crop_head(hu, spacing, crop, study_id)
    fitted, spacing_yx = fit_square(hu, spacing[1:], size)
    info = {
        "spacing_zyx": [spacing[0], *spacing_yx],
        "source_spacing_zyx": list(spacing),
        "source_shape_zyx": list(attrs.get("shape_zyx", [])),
        "crop_box_yx": box.as_list() if box is not None else None,
        "series_id": attrs.get("series_id"),
        "patient_id": attrs.get("patient_id"),
    }
    return fitted, info


def build_slice_shard(
    resampled_store: str | Path,
    out_store: str | Path,
    crop: CropSettings | None,
    size: int,
    windows: Sequence[Window],
    provenance: dict[str, Any],
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the windowed slices of every study in a HU store.

    Returns (one row per slice: study_id, z, store; one row per study that could not be prepared,
    e.g. an all-air volume: study_id, reason). A bad study is reported and skipped, never fatal.
    """
    frames: list[pd.DataFrame] = []
    rejected: list[dict[str, str]] = []

    def prepare(study_id: str, hu: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return prepare_study(hu, attrs, crop, size, study_id)

    with SliceStoreWriter(out_store, provenance) as writer:
        for study_id, (fitted, info) in prepared_studies(
            resampled_store, prepare, rejected, "slices", progress
        ):
            info["windows"] = [{"name": w.name, "center": w.center, "width": w.width} for w in windows]
            info["source_store"] = str(resampled_store)
            writer.write_study(study_id, apply_windows(fitted, windows), info)
            frames.append(pd.DataFrame({"study_id": study_id, "z": np.arange(len(fitted), dtype=np.int64)}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"study_id": [], "z": []})
    table["store"] = str(out_store)
    log.info(
        "wrote %d slices of %d studies to %s (%d skipped)", len(table), len(frames), out_store, len(rejected)
    )
    return table.astype({"study_id": str, "z": "int64", "store": str}), pd.DataFrame(
        rejected, columns=["study_id", "reason"]
    )
