"""Lesion masks on the slice store's pixels: where a saliency peak must fall to point at the lesion.

A mask (the synthetic cohort's `truth/masks.zarr`, or a real archive's own) lies on the ingested
series' grid. It goes through the geometry the slice store's pixels went through, step by step as
the 3D store takes its mask channel (`ct25d.volumes.fixed_store`): the in-plane resampling
(`MaskSource.mask_for`), the slice store's own head crop (`crop_box_yx` in its attributes), then
`fit_square` with no lesion as the padding, thresholded at half. The slice store keeps every
native slice, so mask slice z is slice-store slice z.

Only the lesions the score is about count: for `any`, the five hemorrhage subtypes, not the
ischemic hypodensities that share the synthetic masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ct25d.dicom.headers import pseudonym
from ct25d.labels import SUBTYPES
from ct25d.shards import open_study
from ct25d.slices.store import SliceReader
from ct25d.volumes.crop import fit_square
from ct25d.volumes.fixed_store import MaskSource

# Which lesion kinds a label's saliency should point at.
KINDS = {"any": SUBTYPES, **{name: (name,) for name in SUBTYPES}}
_ON = 100  # MaskSource's value of a lesion voxel
NO_MASKS = "no lesion masks for this dataset"


def slice_masks(
    source: MaskSource, reader: SliceReader, study_id: str, kinds: Sequence[str] = SUBTYPES
) -> tuple[np.ndarray | None, str]:
    """(`(Z, S, S)` bool lesion mask on the study's stored slices, "") or (None, why there is none)."""
    attrs = reader.attrs(study_id)
    if "source_store" not in attrs:
        return None, "the slice store does not name its HU store"
    _, hu_attrs = open_study(Path(attrs["source_store"]), study_id)
    mask, note = source.mask_for(study_id, hu_attrs, kinds)
    if mask is None:
        return None, note
    box = attrs.get("crop_box_yx")
    if box is not None:
        y0, y1, x0, x1 = box
        mask = mask[:, y0:y1, x0:x1]
    spacing = attrs.get("source_spacing_zyx") or attrs["spacing_zyx"]
    size = reader.shape(study_id)[-1]
    square, _ = fit_square(mask, (float(spacing[1]), float(spacing[2])), size, fill=0)
    return square >= _ON / 2, ""


def folder_aliases(masks: str | Path, salt: str) -> dict[str, str]:
    """{study_id: StudyInstanceUID} of a synthetic cohort whose studies are each their own top folder
    (the CQ500 layout: scan names such a study by its folder, not its UID), from the cohort's
    `truth/studies.parquet` beside its masks; empty for any other cohort or archive."""
    table = Path(masks).parent / "studies.parquet"
    if not table.is_file():
        return {}
    studies = pd.read_parquet(table, columns=["study_uid", "folder"])
    top = studies["folder"].astype(str).str.split("/").str[0]
    if top.eq("").any() or top.duplicated().any():
        return {}
    return {pseudonym(t, salt, "st-"): uid for t, uid in zip(top, studies["study_uid"], strict=True)}


class Truth:
    """Lesion masks of the studies of several datasets, each read once (`masks` {dataset: path})."""

    def __init__(self, masks: dict[str, str | Path], salt: str, kinds: Sequence[str] = SUBTYPES) -> None:
        self.sources = {dataset: MaskSource(path, salt, folder_aliases(path, salt))
                        for dataset, path in masks.items()}  # fmt: skip
        self.kinds = tuple(kinds)
        self._readers: dict[str, SliceReader] = {}

    def masks(self, dataset: str, store: str, study_id: str) -> tuple[np.ndarray | None, str]:
        """The study's `(Z, S, S)` mask on the slice store `store`, or (None, why not)."""
        if dataset not in self.sources:
            return None, NO_MASKS
        reader = self._readers.setdefault(store, SliceReader(store))
        return slice_masks(self.sources[dataset], reader, study_id, self.kinds)
