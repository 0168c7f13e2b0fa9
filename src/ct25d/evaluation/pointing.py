"""The pointing game: does a positive call's saliency peak fall inside the lesion?

Which calls: the scored studies (the outer fold, the external sets) that the fold model calls positive
for `any` at its inner split's F1 threshold on the raw logit, the threshold the comparison chooses
(`ct25d.report.compare.inner_choices`). Only true positives are scored: a false positive has no
lesion to point at, and how often a model calls one is the table's specificity already. At most
`calls` of them per set, the first by study id (ids are keyed hashes: a sample that does not depend
on the scores), each study's top `slices` slices by slice probability for a slice model, its whole
volume for a 3D net.

Where the peak is: on the Grad-CAM map's own grid, the cell with the largest value (over a slice
model's top slices together: maps of one model and class are on one scale). The last convolutional
stage of a small network at the demo's 64 px is 2 x 2 cells (stride 32) and a 3D ResNet's depth is
strided too: upsampling such a map smears its maximum into a plateau whose first pixel is an
image corner, so a point would measure the interpolation, not the model. A hit is a lesion pixel
inside the peak cell's footprint (the pixels it stands for, adaptive pooling's bins): a tolerance
of one cell, like the pointing game's own (Zhang et al. 2018: 15 px). How lenient a cell is shows
in `chance`: the share of the head's cells holding lesion, the hit rate of a pointer that picks a
head cell at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ct25d.errors import ConfigError
from ct25d.evaluation.scoring import (
    Interval,
    best_threshold,
    bootstrap,
    bootstrap_weights,
    logit,
    weighted_sensitivity,
)

SCORED = ("validation", "external")


@dataclass(frozen=True)
class PointingSettings:
    """Config `compare.saliency`: how many calls, slices and gallery tiles each fold model gets."""

    enabled: bool = True
    calls: int = 4  # true-positive calls pointed per set (outer fold, each external set)
    slices: int = 3  # a slice model's top slices per call
    gallery: int = 4  # calls drawn in the run's gallery (its most confident positive calls)
    label: str = "any"

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> PointingSettings:
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown compare.saliency setting(s) {unknown}")
        s = cls(**settings)
        if min(s.calls, s.slices) < 1 or s.gallery < 0:
            raise ConfigError("compare.saliency: calls and slices must be >= 1, gallery >= 0")
        return s


@dataclass(frozen=True)
class Pointing:
    """One call's pointing game: `hit` 1.0 / 0.0, `chance` the share of the head's cells holding
    lesion, `peak` the peak cell's footprint (slices into the mask; None for an all-zero map)."""

    hit: float
    chance: float
    peak: tuple[slice, ...] | None


def footprint(cell: tuple[int, ...], grid: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The pixels cell `cell` of a `grid` map stands for in an image of `shape`: bin i of g over n
    pixels is [floor(i n / g), ceil((i + 1) n / g)), adaptive pooling's bins."""
    return tuple(slice(i * n // g, -(-(i + 1) * n // g)) for i, g, n in zip(cell, grid, shape, strict=True))


def cells_holding(pixels: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """Bool `grid`: which cells' footprints hold a True pixel of `pixels` (any number of axes)."""
    out = np.asarray(pixels, dtype=bool)
    for axis, g in enumerate(grid):
        n = out.shape[axis]
        bins = [np.arange(i * n // g, -(-(i + 1) * n // g)) for i in range(g)]
        out = np.stack([out.take(b, axis=axis).any(axis=axis) for b in bins], axis=axis)
    return out


def peak_footprint(raw: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The footprint in an image of `shape` of the map's largest cell (None: an all-zero map)."""
    if not np.any(raw > 0):
        return None
    cell = tuple(int(i) for i in np.unravel_index(int(np.argmax(raw)), raw.shape))
    return footprint(cell, tuple(raw.shape), shape)


def point(raw: np.ndarray, mask: np.ndarray, head: np.ndarray | None = None) -> Pointing:
    """The pointing game on one map: `raw` Grad-CAM on its grid, `mask` the lesion and `head` the
    head's pixels (all True when None) on the input's grid (same number of dimensions). An
    all-zero map points nowhere: a miss."""
    if raw.ndim != mask.ndim:
        raise ValueError(f"a {raw.ndim}-D map and a {mask.ndim}-D mask")
    grid = tuple(raw.shape)
    lesion = cells_holding(mask, grid)
    inside = cells_holding(np.ones_like(mask) if head is None else head, grid)
    chance = float((lesion & inside).sum() / inside.sum()) if inside.any() else math.nan
    peak = peak_footprint(raw, tuple(mask.shape))
    hit = 0.0 if peak is None else float(mask[peak].any())
    return Pointing(hit, chance, peak)


def inner_threshold(studies: pd.DataFrame, label: str = "any") -> float:
    """The run's F1 threshold of `label` on the raw logit, chosen on its inner split only."""
    inner = studies[(studies["split"] == "inner") & studies[label].notna()]
    if inner.empty:  # as the comparison does without inner studies
        return 0.0
    return best_threshold(inner[label].to_numpy(float), logit(inner[f"prob_{label}"].to_numpy()))


def positive_calls(studies: pd.DataFrame, s: PointingSettings) -> pd.DataFrame:
    """The run's scored studies called positive, in the order the sample is drawn (set, then study
    id), with `truth` (the label) and `drawn` (among the `s.gallery` most confident calls)."""
    label = s.label
    called = studies[studies["split"].isin(SCORED)]
    called = called[logit(called[f"prob_{label}"].to_numpy()) > inner_threshold(studies, label)]
    called = called.assign(truth=called[label], prob=called[f"prob_{label}"])
    confident = called.sort_values("prob", ascending=False, kind="stable").index[: s.gallery]
    called = called.assign(drawn=called.index.isin(confident))
    return called.sort_values(["split", "dataset", "study_id"]).reset_index(drop=True)


def hit_fraction(hits: np.ndarray, patients: np.ndarray, replicates: int, seed: int) -> Interval:
    """The share of hits with its 95% bootstrap interval over patients (a patient's calls, e.g. one
    study scored by several fold models, are drawn together)."""
    hits = np.asarray(hits, dtype=np.float64)
    weights = bootstrap_weights(np.ones(len(hits)), replicates, seed, patients)
    return bootstrap(weighted_sensitivity, weights, np.ones(len(hits)), hits)
