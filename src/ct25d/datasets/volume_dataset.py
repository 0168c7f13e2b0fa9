"""Torch view of the volume store: one item per study, read whole (one chunk), padded with air to
one depth so that studies of different lengths batch together; `valid` marks the real slices.

Augmentation is the slice augmentation of Stage 1 applied identically to every slice of a volume:
a left-right flip, a small rotation about the patient's long axis and brightness/contrast. Head CT
is acquired head-first-supine, so these are the variations scans really show; flipping or tilting
along z would make anatomy no scanner produces. The lesion mask moves with its volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ct25d.datasets.slice_dataset import MEAN, STD, Augment
from ct25d.training.seed import derived_generator
from ct25d.volumes.fixed_store import MASK_CHANNEL, read_fixed

_CROP = 0xC0  # the crop's own random stream, apart from the augmentation's


class VolumeDataset(Dataset):
    """Items `{x (C, D, S, S) normalised, y (classes,), slice_y (D, classes), valid (D,), mask
    (1, D, S, S), has_mask, index}`; `D` is `depth` (the volumes' own depth when None).

    `table` rows: `store`, `study_id` (the volume store); keys are `(epoch, i)` or `i`.
    `slice_targets[i]` holds study i's labels per slice-store slice (NaN: unknown); the stored
    volume's `source_z` picks each stored slice's row. Without them `slice_y` is all NaN.
    `crop`: each item is a run of `crop` consecutive slices, its start drawn per (seed, epoch, i).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        targets: np.ndarray,
        augment: Augment | None = None,
        seed: int = 0,
        depth: int | None = None,
        slice_targets: list[np.ndarray] | None = None,
        crop: int | None = None,
    ) -> None:
        self.stores = table["store"].astype(str).to_numpy()
        self.study_ids = table["study_id"].astype(str).to_numpy()
        self.targets, self.slice_targets = targets, slice_targets
        self.augment, self.seed, self.depth, self.crop = augment, seed, depth, crop

    def __len__(self) -> int:
        return len(self.study_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        raw, attrs = read_fixed(self.stores[i], self.study_ids[i])
        source_z = attrs.get("source_z")
        if self.crop is not None and raw.shape[1] > self.crop:
            starts = raw.shape[1] - self.crop + 1
            start = int(torch.randint(starts, (1,), generator=derived_generator(self.seed, epoch, i, _CROP)))
            raw = raw[:, start : start + self.crop]
            source_z = None if source_z is None else source_z[start : start + self.crop]
        has_mask = attrs["channels"][-1] == MASK_CHANNEL
        volume = torch.from_numpy(raw).float().div_(255.0)
        image, mask = (volume[:-1], volume[-1:]) if has_mask else (volume, torch.zeros_like(volume[:1]))
        if self.augment is not None:
            u = self.augment.draw(derived_generator(self.seed, epoch, i))
            # (C, D, S, S) -> (D, C, S, S): every slice gets the same flip, rotation and intensity.
            slices = self.augment.geometry(image.transpose(0, 1), u)
            image = self.augment.intensity(slices, u).clamp_(0.0, 1.0).transpose(0, 1)
            mask = (self.augment.geometry(mask, u) >= 0.5).float()
        channels, depth = image.shape[:2]
        pad = (self.depth or depth) - depth
        if pad < 0:
            raise ValueError(f"{self.study_ids[i]}: {depth} slices, more than the padded depth {self.depth}")
        mean = torch.tensor([MEAN[c % 3] for c in range(channels)]).view(-1, 1, 1, 1)
        std = torch.tensor([STD[c % 3] for c in range(channels)]).view(-1, 1, 1, 1)
        # Air is 0 in every window: padding is air, normalised like the rest.
        image = F.pad(image, (0, 0, 0, 0, 0, pad))
        slice_y = np.full((depth + pad, self.targets.shape[1]), np.nan, dtype=np.float32)
        if self.slice_targets is not None and source_z is not None:
            slice_y[:depth] = self.slice_targets[i][np.asarray(source_z)]
        return {
            "x": ((image - mean) / std).contiguous(),
            "y": torch.from_numpy(self.targets[i]),
            "slice_y": torch.from_numpy(slice_y),
            "valid": torch.arange(depth + pad) < depth,
            "mask": F.pad(mask, (0, 0, 0, 0, 0, pad)).contiguous(),
            "has_mask": has_mask,
            "index": i,
        }
