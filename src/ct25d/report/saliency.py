"""Where the models looked, as pictures: one gallery per fold model, and the report's overview.

A tile is a slice in the brain window with the Grad-CAM map over it (its own max = 1), the lesion
outlined in green where the truth has a mask, and the peak cell (the pointing game's footprint) in
yellow: what a radiologist checks is whether yellow sits on green.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.patches import Rectangle

from ct25d.atomic import atomic_path

if TYPE_CHECKING:  # the overview needs no torch
    from ct25d.evaluation.saliency_run import Tile

COLUMNS = 4


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def draw_tile(ax: Axes, tile: Tile) -> None:
    """One tile on `ax`: slice, saliency overlay, lesion outline, peak box, caption."""
    ax.imshow(tile.image, cmap="gray", vmin=0, vmax=255)
    ax.imshow(np.ma.masked_less(tile.saliency, 0.05), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    if tile.mask is not None and tile.mask.any():
        ax.contour(tile.mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
    if tile.peak is not None:
        y0, y1, x0, x1 = tile.peak
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.0))
    ax.set_title(tile.caption, fontsize=7)
    ax.set_axis_off()


def plot_gallery(tiles: Sequence[Tile], path: str | Path, title: str) -> None:
    """A run's most confident positive calls, `COLUMNS` to a row (a note where it made none)."""
    rows = max(1, math.ceil(len(tiles) / COLUMNS))
    fig = Figure(figsize=(2 * COLUMNS, 2.2 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, COLUMNS)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, tile in zip(axes, tiles, strict=False):
        draw_tile(ax, tile)
    if not tiles:
        axes[0].text(0, 0.5, "no positive call", fontsize=9)
    fig.suptitle(f"{title}: Grad-CAM of the most confident positive calls (green: lesion, yellow: peak cell)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    _save(fig, path)


def plot_overview(galleries: Sequence[tuple[str, str | Path]], path: str | Path) -> None:
    """The report's `saliency.png`: every run's gallery, one under the other, named."""
    images = [(name, imread(str(png))) for name, png in galleries]
    heights = [image.shape[0] / 100 for _, image in images] or [1.0]
    fig = Figure(figsize=(2 * COLUMNS, sum(heights) + 0.3 * len(heights)))
    axes = np.atleast_1d(fig.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights})).ravel()
    for ax, (name, image) in zip(axes, images, strict=False):
        ax.imshow(image)
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_axis_off()
    if not images:
        axes[0].set_axis_off()
        axes[0].text(0, 0.5, "no slice or 3D model ran", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
