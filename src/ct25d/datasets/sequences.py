"""Studies as sequences of Stage-1 slice embeddings, read one study at a time.

Each item is one study: its embeddings in slice order (one contiguous range of a shard's array, so
one read), its slice labels and its study labels. Nothing holds more than a batch of studies, so
memory is bounded by the longest studies, not by the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import Dataset

from ct25d.datasets.slice_dataset import multilabel_targets
from ct25d.errors import Ct25dError


@dataclass(frozen=True)
class StudySpan:
    """Where a study's slices lie in the embedding store."""

    dataset: str
    study_id: str
    shard: str
    start: int
    length: int


def study_spans(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per study from `rows.parquet` of `ct25d embed`; its rows must be contiguous and in z order.

    `position` is where the study's first row stands in `rows` as given.
    """
    rows = rows.assign(position=np.arange(len(rows)))
    spans = rows.groupby(["dataset", "study_id"], sort=True).agg(
        position=("position", "min"),
        shard=("shard", "first"), n_shards=("shard", "nunique"), start=("row", "min"),
        stop=("row", "max"), length=("row", "size"), z_sorted=("z", lambda z: z.is_monotonic_increasing),
    ).reset_index()  # fmt: skip
    broken = spans[(spans["n_shards"] > 1) | (spans["stop"] - spans["start"] + 1 != spans["length"])
                   | ~spans["z_sorted"]]  # fmt: skip
    if len(broken):
        raise Ct25dError(
            f"embedding rows of study {broken['study_id'].iloc[0]} are not one contiguous z-ordered run"
        )
    return spans[["dataset", "study_id", "shard", "start", "length", "position"]]


class StudySequences(Dataset):
    """Items `(embeddings (L, D) float32, slice targets (L, C) with NaN unknown, study targets (C,))`."""

    def __init__(self, embeddings_dir: str | os.PathLike[str], rows: pd.DataFrame, studies: pd.DataFrame,
                 labels: Sequence[str]) -> None:  # fmt: skip
        self.dir = Path(embeddings_dir)
        self.rows = rows.sort_values(["shard", "row"]).reset_index(drop=True)
        self.spans = study_spans(self.rows)
        keyed = studies.set_index(["dataset", "study_id"])
        missing = self.spans.set_index(["dataset", "study_id"]).index.difference(keyed.index)
        if len(missing):
            raise Ct25dError(f"study {missing[0]} has embeddings but no row in the study table")
        order = pd.MultiIndex.from_frame(self.spans[["dataset", "study_id"]])
        self.study_targets = multilabel_targets(keyed.loc[order].reset_index(), labels)
        self.slice_targets = multilabel_targets(self.rows, labels)
        self._arrays: dict[str, zarr.Array] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.spans)

    def _array(self, shard: str) -> zarr.Array:
        if self._pid != os.getpid():  # fresh handles in each DataLoader worker
            self._arrays, self._pid = {}, os.getpid()
        if shard not in self._arrays:
            self._arrays[shard] = zarr.open_array(self.dir / f"{shard}.zarr" / "embedding", mode="r")
        return self._arrays[shard]

    def rows_of(self, i: int) -> slice:
        """Study `i`'s rows in `self.rows` (and in `slice_targets`)."""
        span = self.spans.iloc[i]
        return slice(span.position, span.position + span.length)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        span = self.spans.iloc[i]
        x = np.asarray(self._array(span.shard)[span.start : span.start + span.length], dtype=np.float32)
        y = self.slice_targets[self.rows_of(i)]
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(self.study_targets[i]), i


def pad_batch(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Collate studies of different lengths: zero padding at the end and a boolean mask."""
    lengths = [len(x) for x, *_ in items]
    batch, longest = len(items), max(lengths)
    dim, classes = items[0][0].shape[1], items[0][1].shape[1]
    x = torch.zeros(batch, longest, dim)
    y = torch.full((batch, longest, classes), float("nan"))
    mask = torch.zeros(batch, longest, dtype=torch.bool)
    for b, (xi, yi, _, _) in enumerate(items):
        x[b, : len(xi)], y[b, : len(yi)], mask[b, : len(xi)] = xi, yi, True
    return {
        "x": x, "y": y, "mask": mask, "study_y": torch.stack([s for _, _, s, _ in items]),
        "index": torch.tensor([i for *_, i in items]),
    }  # fmt: skip
