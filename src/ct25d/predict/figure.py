"""One picture per predicted study: the probability of `any` along z beside the slices it is highest
on, in the brain window, read from the slice store (the pixels the models saw). A reader sees at
once where the model looked for blood and what is there; a positive call may carry a saliency map
over those slices (`ct25d.predict.saliency.Overlay`), with a line saying what the map is."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ct25d.atomic import atomic_path
from ct25d.slices.store import SliceReader

if TYPE_CHECKING:
    from ct25d.predict.saliency import Overlay

DPI = 100
WINDOW = "brain"
HEAT = "jet"
HEAT_ALPHA = 0.5  # the map's opacity where it is 1 (it fades out with the map)


def top_slices(z: np.ndarray, prob: np.ndarray, k: int) -> np.ndarray:
    """The `k` slices with the highest probability, in z order (without any: `k` evenly spaced inner
    slices, the first and last of a head being mostly skull)."""
    z, prob = np.asarray(z), np.asarray(prob, dtype=np.float64)
    if np.isfinite(prob).any():
        order = np.argsort(-np.nan_to_num(prob, nan=-np.inf), kind="stable")[: min(k, len(z))]
        return np.sort(z[order])
    return np.unique(z[np.linspace(0, len(z) - 1, min(k, len(z)) + 2)[1:-1].round().astype(int)])


def shown_slices(slices: pd.DataFrame, k: int) -> np.ndarray:
    """The z of the slices a study's picture shows (`slices`: one study's z and prob_any)."""
    rows = slices.sort_values("z")
    return top_slices(rows["z"].to_numpy(), rows["prob_any"].to_numpy(dtype=np.float64), k)


def window_channel(reader: SliceReader, study_id: str) -> tuple[int, str]:
    """The channel of the brain window in the slice store (the first window where there is none)."""
    windows = reader.attrs(study_id).get("windows") or []
    names = [w.get("name") for w in windows]
    k = names.index(WINDOW) if WINDOW in names else 0
    return k, (f"{names[k]} window" if names else "channel 0")


def study_figure(
    slices: pd.DataFrame, store: str, title: str, study: float, threshold: float, k: int, out: str | Path,
    overlay: Overlay | None = None,
) -> None:  # fmt: skip
    """PNG: `prob_any` of `slices` (one study: z, prob_any) against z with the study's probability
    `study` and its threshold, and the `k` highest slices (`shown_slices`); a model without slice
    scores shows the study's probability alone and `k` evenly spaced slices. `overlay`: a saliency
    map per shown slice and its note (None: the plain slices, nothing said)."""
    reader = SliceReader(store)
    study_id = str(slices["study_id"].iloc[0])
    rows = slices.sort_values("z")
    z, prob = rows["z"].to_numpy(), rows["prob_any"].to_numpy(dtype=np.float64)
    shown = shown_slices(slices, k)
    channel, window = window_channel(reader, study_id)
    width = 4.2 + 2.0 * len(shown)
    fig = Figure(figsize=(width, 3.3), dpi=DPI)
    # A fixed layout: tight_layout would take half of the figure's time, for thousands of studies.
    grid = fig.add_gridspec(1, 1 + len(shown), width_ratios=[2.1] + [1.0] * len(shown), left=0.65 / width,
                            right=1 - 0.1 / width, bottom=0.15, top=0.8, wspace=0.25)  # fmt: skip
    ax = fig.add_subplot(grid[0, 0])
    if np.isfinite(prob).any():
        ax.plot(z, prob, "-o", ms=2.5, lw=1, color="C0")
        picked = np.isin(z, shown)
        ax.plot(z[picked], prob[picked], "o", ms=5, color="C3")  # the slices shown beside
    else:
        ax.text(0.5, 0.1, "whole-volume model: no probability per slice", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)  # fmt: skip
    if not math.isnan(study):
        ax.axhline(study, color="C1", lw=1.2)
        ax.text(z.min(), study, " study", va="bottom", fontsize=7, color="C1")
    if not math.isnan(threshold):
        ax.axhline(threshold, color="grey", ls="--", lw=0.8)
        ax.text(z.max(), threshold, "threshold ", ha="right", va="top", fontsize=7, color="grey")
    ax.set_xlim(z.min() - 0.5, z.max() + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("slice (z)")
    ax.set_ylabel("P(any)")
    for i, zi in enumerate(shown):
        sub = fig.add_subplot(grid[0, 1 + i])
        sub.imshow(
            reader.read(study_id, int(zi))[channel], cmap="gray", vmin=0, vmax=255, interpolation="nearest"
        )
        heat = None if overlay is None else overlay.maps.get(int(zi))
        if heat is not None:
            sub.imshow(heat, cmap=HEAT, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA * np.clip(heat, 0.0, 1.0),
                       interpolation="bilinear")  # fmt: skip
        p = prob[z == zi][0]
        unmapped = heat is None and overlay is not None and bool(overlay.maps)  # e.g. outside a 3D volume
        sub.set_title(f"z={int(zi)}" + ("" if math.isnan(p) else f"  p={p:.2f}") + ("  no map" * unmapped),
                      fontsize=8)  # fmt: skip
        sub.set_axis_off()
    fig.suptitle(f"{title}   ({window})", fontsize=9)
    if overlay is not None and overlay.note:
        note = textwrap.fill(overlay.note, int(12 * width))  # about the figure's width at 7 pt
        fig.text(1 - 0.1 / width, 0.015, note, ha="right", va="bottom", fontsize=7, color="0.25")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
