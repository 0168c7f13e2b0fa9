"""Torch view of the slice index: one item per slice, read from the slice store.

Randomness never comes from shared state: the epoch's order is a function of `(seed, epoch)` and a
sample's augmentation of `(seed, epoch, row)`. Why: a run resumed mid-epoch (or with a different
number of loader workers) then replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix as _inverse_affine

from ct25d.slices.store import SliceReader
from ct25d.training.seed import derive_seed, derived_generator

# ImageNet statistics: every timm backbone we use was pretrained with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation of the seed: flips, small rotations, brightness/contrast."""

    hflip: float = 0.5  # probability
    rotate_deg: float = 10.0  # uniform in [-rotate_deg, rotate_deg]
    brightness: float = 0.1  # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.1  # factor uniform in [1 - c, 1 + c], about mid-grey 0.5

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float (3, H, W) image in [0, 1]; always draws the same 4 numbers."""
        u = self.draw(generator)
        return self.intensity(self.geometry(image, u), u)

    @staticmethod
    def draw(generator: torch.Generator) -> list[float]:
        return torch.rand(4, generator=generator, dtype=torch.float64).tolist()

    @staticmethod
    def draws(seed: int, epoch: int, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """`(B, 4)` float64: the numbers a loader would draw for these rows in this epoch (for `batch`)."""
        draws = [Augment.draw(derived_generator(seed, epoch, int(r))) for r in rows]
        return torch.tensor(draws, dtype=torch.float64)

    def geometry(self, image: torch.Tensor, u: list[float]) -> torch.Tensor:
        """Flip and rotation of `(..., H, W)` by the drawn numbers `u` (a mask moves with its image)."""
        if u[0] < self.hflip:
            image = TF.horizontal_flip(image)
        angle = (2 * u[1] - 1) * self.rotate_deg
        if angle:
            # Background is air, which every window maps to 0.
            image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        return image

    def intensity(self, image: torch.Tensor, u: list[float]) -> torch.Tensor:
        """Brightness and contrast of `(..., 1 or 3, H, W)` by the drawn numbers `u`."""
        image = TF.adjust_brightness(image, 1 + (2 * u[2] - 1) * self.brightness)
        # Contrast about a fixed 0.5 rather than torchvision's image mean: a mean is a reduction whose
        # rounding depends on the thread count, which differs between loader workers and the main
        # process, and would break bit-identical resumes. (0.5 is each window's centre.)
        return image.sub(0.5).mul_(1 + (2 * u[3] - 1) * self.contrast).add_(0.5)

    def batch(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The same augmentation on a whole `(B, C, H, W)` batch where it lies (a GPU: no loader
        worker spends ~1 ms per slice on it), row b by its drawn numbers `u[b]` (`(B, 4)`), clamped.

        torchvision's `rotate` takes one angle per call, so its grid transform is rebuilt here for
        per-row angles with its own arithmetic (inverse matrix of `-(angle % 360)`, pixel-centre
        grid, a ones channel as the fill mask): each row equals `geometry` then `intensity`."""
        b, _, h, w = images.shape
        device, dtype = images.device, images.dtype
        u64 = u.detach().to("cpu", torch.float64)
        flip = (u64[:, 0] < self.hflip).to(device).view(b, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        angles = [(2 * v - 1) * self.rotate_deg for v in u64[:, 1].tolist()]
        matrices = [_inverse_affine([0.0, 0.0], -(a % 360), [0.0, 0.0], 1.0, [0.0, 0.0]) for a in angles]
        theta = torch.tensor(matrices, dtype=dtype, device=device).view(b, 2, 3)
        base = torch.empty(1, h, w, 3, dtype=dtype, device=device)
        base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
        base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device)[:, None])
        base[..., 2].fill_(1)
        scale = torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=device)
        grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(theta.transpose(1, 2).div(scale)).view(b, h, w, 2)
        ones = torch.ones((b, 1, h, w), dtype=dtype, device=device)
        sampled = F.grid_sample(torch.cat((images, ones), 1), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # fmt: skip
        rotated = sampled[:, :-1].mul(sampled[:, -1:])  # fill 0 (air in every window) where the mask is 0
        turned = torch.tensor([a != 0 for a in angles], device=device).view(b, 1, 1, 1)
        images = torch.where(turned, rotated, images)
        brightness = (1 + (2 * u64[:, 2] - 1) * self.brightness).to(device, dtype).view(b, 1, 1, 1)
        contrast = (1 + (2 * u64[:, 3] - 1) * self.contrast).to(device, dtype).view(b, 1, 1, 1)
        return images.mul(brightness).clamp_(0, 1).sub_(0.5).mul_(contrast).add_(0.5).clamp_(0.0, 1.0)

    @classmethod
    def from_settings(cls, value: dict[str, Any] | bool | None) -> Augment | None:
        """`augment` setting: false/None (off), true (defaults) or a dict of the fields."""
        if not value:
            return None
        return cls() if value is True else cls(**value)


def multilabel_targets(index: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """(N, C) float32 targets; unknown (NA) labels become NaN so the loss can mask them."""
    return index[list(labels)].astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan)


def multiclass_targets(index: pd.DataFrame, column: str) -> np.ndarray:
    """(N,) int64 class ids; NA becomes -100 (`CrossEntropyLoss`'s ignore index)."""
    return index[column].astype("Int64").fillna(-100).to_numpy(dtype=np.int64)


class SliceDataset(Dataset):
    """Items `(image (3, S, S) float32 normalised, target, row)`; `row` is the position in `index`.

    Keys are a row position or `(epoch, row)` (what `EpochBatchSampler` yields). Readers are opened
    lazily, one per store, in whichever process reads (so DataLoader workers build their own).
    """

    def __init__(
        self,
        index: pd.DataFrame,
        targets: np.ndarray | None = None,
        image_size: int | None = None,
        augment: Augment | None = None,
        seed: int = 0,
        thickness: int = 1,
        normalize: bool = True,
    ) -> None:
        self.stores = index["store"].astype(str).to_numpy()
        self.study_ids = index["study_id"].astype(str).to_numpy()
        self.zs = index["z"].to_numpy(dtype=np.int64)
        # Thickened input: `thickness` slices centred on the row's, repeated at the volume's ends.
        self.thickness = thickness
        self.last_z = index.groupby(["store", "study_id"])["z"].transform("max").to_numpy(dtype=np.int64)
        if targets is not None and len(targets) != len(index):
            raise ValueError(f"{len(targets)} targets for {len(index)} index rows")
        self.targets = targets
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self._mean = torch.tensor(MEAN).repeat(thickness).view(-1, 1, 1)
        self._std = torch.tensor(STD).repeat(thickness).view(-1, 1, 1)
        self._normalize = normalize  # False: items stay in [0, 1] for augmentation on the device
        self._readers: dict[str, SliceReader] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}}

    def __len__(self) -> int:
        return len(self.zs)

    def _reader(self, store: str) -> SliceReader:
        if store not in self._readers:
            self._readers[store] = SliceReader(store)
        return self._readers[store]

    def load(self, row: int, epoch: int = 0) -> torch.Tensor:
        """The (3k, S, S) float image in [0, 1] of index row `row` (k = thickness, the row's slice in the
        middle), augmented if training (the same flip, rotation and intensity for all k slices)."""
        reader, study, z = self._reader(self.stores[row]), self.study_ids[row], int(self.zs[row])
        half = self.thickness // 2
        zs = np.clip(np.arange(z - half, z + half + 1), 0, self.last_z[row])
        image = torch.from_numpy(np.stack([reader.read(study, int(k)) for k in zs])).float().div_(255.0)
        if self.image_size is not None and image.shape[-2:] != (self.image_size, self.image_size):
            image = TF.resize(image, [self.image_size, self.image_size], antialias=True)
        if self.augment is not None:
            image = self.augment(image, derived_generator(self.seed, epoch, row)).clamp_(0.0, 1.0)
        return image.flatten(0, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of `(..., 3k, S, S)` images in [0, 1], on their device."""
        return (images - self._mean.to(images.device)) / self._std.to(images.device)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, row = key if isinstance(key, tuple) else (0, key)
        image = self.load(row, epoch)
        if self._normalize:
            image = self.normalize(image)
        target = torch.as_tensor(self.targets[row]) if self.targets is not None else torch.zeros(0)
        return image, target, row


def balancing_weights(classes: np.ndarray) -> np.ndarray:
    """Per-row sampling weights 1/count(class), so each class is drawn equally often."""
    _, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    return (1.0 / counts[inverse]).astype(np.float64)


class EpochBatchSampler:
    """Batches of `(epoch, row)` keys; epoch `e`'s order depends only on `(seed, e)`.

    Without weights each epoch is a seeded permutation; with weights it is `num_samples` seeded
    draws with replacement (class-balanced sampling). `start(epoch, skip_batches)` makes the next
    iteration resume inside an epoch — what a restarted job needs.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        weights: np.ndarray | None = None,
        num_samples: int | None = None,
        min_last: int = 2,
    ) -> None:
        if n == 0:
            raise ValueError("no rows to sample from")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.num_samples = num_samples or n
        self.min_last = min_last
        self.epoch = 0
        self.skip = 0

    def order(self, epoch: int) -> np.ndarray:
        """Row positions of one epoch, in the order they are served."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch, 0x5A3B))
        if self.weights is None:
            return rng.permutation(self.n)[: self.num_samples]
        return rng.choice(self.n, size=self.num_samples, replace=True, p=self.weights / self.weights.sum())

    def start(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        batches = math.ceil(self.num_samples / self.batch_size)
        # A last batch under `min_last` joins the batch before it: batch norm cannot train on a
        # batch of one, and with DDP every rank needs a share of it (`min_last` = the ranks).
        short_last = 0 < self.num_samples % self.batch_size < self.min_last
        return batches - 1 if batches > 1 and short_last else batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        order = self.order(epoch)
        last = len(self) - 1
        for b in range(skip, len(self)):
            stop = len(order) if b == last else (b + 1) * self.batch_size
            yield [(epoch, int(row)) for row in order[b * self.batch_size : stop]]


def worker_init(_: int) -> None:
    """One intra-op thread per loader worker: the workers, not torch's pool, give the parallelism."""
    torch.set_num_threads(1)
