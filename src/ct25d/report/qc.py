"""Quality-control pictures: what the models will actually see, and what the data holds.

A montage per sampled study shows the stored windowed slices exactly as training reads them, with
the slices labelled as lesions framed, so a wrong crop, window or label misalignment is visible at
a glance. The dataset summary (CSV + PNG) shows label, site and fold balance before any training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ct25d.atomic import atomic_path, write_csv
from ct25d.labels import RSNA_LABELS, SUBTYPES
from ct25d.slices.store import SliceReader

DPI = 100
MONTAGE_COLS = 8
MONTAGE_WIDTH_IN = 16.0
STRIP_HEIGHT_IN = 4.6
HEADER_IN = 0.9
BORDER_PX = 3
LESION_RGB = (255, 40, 40)
PLAIN_RGB = (70, 70, 70)
SHORT = {
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
}


def sample_studies(studies: pd.DataFrame, per_dataset: int, seed: int) -> pd.DataFrame:
    """Up to `per_dataset` studies per dataset, half of them positive (`any`) where possible.

    Deterministic for a seed and independent of row order.
    """
    picked = []
    for dataset, part in studies.sort_values(["dataset", "study_id"]).groupby("dataset", sort=True):
        rng = np.random.default_rng([seed, *dataset.encode()])
        positive = part["any"].fillna(0).astype(int).to_numpy() == 1
        pos, neg = part[positive], part[~positive]
        n_pos = min(len(pos), max(per_dataset - len(neg), math.ceil(per_dataset / 2)))
        n_neg = min(len(neg), per_dataset - n_pos)
        for group, n in ((pos, n_pos), (neg, n_neg)):
            picked.append(group.iloc[np.sort(rng.choice(len(group), size=n, replace=False))])
    return pd.concat(picked, ignore_index=True) if picked else studies.iloc[:0]


def montage_figsize(n_slices: int, height: int, width: int) -> tuple[float, float]:
    """Figure size (inches) of a study montage; at `DPI` this is the PNG size in pixels / 100."""
    rows = max(1, math.ceil(n_slices / MONTAGE_COLS))
    grid_aspect = rows * (height + 2 * BORDER_PX) / (MONTAGE_COLS * (width + 2 * BORDER_PX))
    return MONTAGE_WIDTH_IN, round(HEADER_IN + MONTAGE_WIDTH_IN * grid_aspect + STRIP_HEIGHT_IN, 2)


def _tile_grid(slices: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """(Z, 3, H, W) uint8 -> one RGB image, tiles framed red where the slice is a lesion slice."""
    z, _, h, w = slices.shape
    rows = max(1, math.ceil(z / MONTAGE_COLS))
    th, tw = h + 2 * BORDER_PX, w + 2 * BORDER_PX
    grid = np.zeros((rows * th, MONTAGE_COLS * tw, 3), dtype=np.uint8)
    for k in range(z):
        r, c = divmod(k, MONTAGE_COLS)
        tile = grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
        tile[...] = LESION_RGB if lesion[k] else PLAIN_RGB
        tile[BORDER_PX:-BORDER_PX, BORDER_PX:-BORDER_PX] = slices[k].transpose(1, 2, 0)
    return grid


def study_montage(reader: SliceReader, study: pd.Series, slices: pd.DataFrame, out: str | Path) -> None:
    """PNG of one study: all slices as RGB (R, G, B = the three windows), lesion slices framed
    red and tagged with their subtypes; below, the key slice in each window separately."""
    volume = reader.read_study(study["study_id"])
    attrs = reader.attrs(study["study_id"])
    rows = slices.sort_values("z")
    known = rows["any"].notna().to_numpy()
    lesion = (rows["any"].fillna(0).astype(int) == 1).to_numpy()
    z, _, h, w = volume.shape
    fig = Figure(figsize=montage_figsize(z, h, w), dpi=DPI)
    fig_h = fig.get_figheight()
    strip = STRIP_HEIGHT_IN / fig_h
    header = HEADER_IN / fig_h
    ax = fig.add_axes((0.005, strip, 0.99, 1 - strip - header))
    ax.imshow(_tile_grid(volume, lesion), interpolation="nearest")
    ax.set_axis_off()
    th, tw = h + 2 * BORDER_PX, w + 2 * BORDER_PX
    for k in range(z):
        r, c = divmod(k, MONTAGE_COLS)
        tags = [SHORT[s] for s in SUBTYPES if lesion[k] and rows[s].iloc[k] == 1]
        text = f"z={k}" + (f" {'+'.join(tags)}" if tags else "")
        ax.text(
            c * tw + 2 * BORDER_PX,
            r * th + 2 * BORDER_PX,
            text,
            color="yellow",
            fontsize=8,
            va="top",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
        )
    known_labels = {label: study.get(label) for label in RSNA_LABELS if pd.notna(study.get(label))}
    positive = [label for label, value in known_labels.items() if value == 1]
    unknown = not known_labels  # an unlabelled study (role predict): not "none"
    slice_note = "slice labels: red frame = any" if known.any() else "study labels only (no slice labels)"
    fig.text(
        0.01,
        1 - 0.15 * header,
        f"{study['dataset']} / {study['study_id']}   site {study.get('site', '?')}   "
        f"fold {study.get('fold', '?')}"
        f"   study labels: {'unknown' if unknown else ', '.join(positive) or 'none'}\n"
        f"RGB = {', '.join(w['name'] for w in attrs.get('windows', []))} windows;  {slice_note};  "
        f"{h}x{w} px at {attrs['spacing_zyx'][1]:.2f} mm, {attrs['spacing_zyx'][0]:.2f} mm slices",
        va="top",
        fontsize=11,
    )
    key = int(np.flatnonzero(lesion)[len(np.flatnonzero(lesion)) // 2]) if lesion.any() else z // 2
    windows = attrs.get("windows") or [
        {"name": f"channel {i}", "center": "?", "width": "?"} for i in range(3)
    ]
    for i, win in enumerate(windows[:3]):
        sub = fig.add_axes((0.02 + i * 0.33, 0.02 * strip, 0.29, 0.86 * strip))
        sub.imshow(volume[key, i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        sub.set_title(f"z={key}  {win['name']} (c {win['center']}, w {win['width']})", fontsize=10)
        sub.set_axis_off()
    _save(fig, out)


def _save(fig: Figure, out: str | Path) -> None:
    """PNG through matplotlib's Agg renderer (a bare `Figure` needs no pyplot or GUI backend)."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")


def write_montages(
    slice_index: pd.DataFrame, studies: pd.DataFrame, per_dataset: int, seed: int, out_dir: str | Path
) -> list[Path]:
    """Montages of a deterministic sample of studies into `out_dir/<dataset>__<study_id>.png`."""
    out_dir = Path(out_dir)
    written = []
    by_study = dict(tuple(slice_index.groupby(["dataset", "study_id"], sort=False)))
    for _, study in sample_studies(studies, per_dataset, seed).iterrows():
        path = out_dir / f"{study['dataset']}__{study['study_id']}.png"
        slices = by_study[study["dataset"], study["study_id"]]
        study_montage(SliceReader(study["store"]), study, slices, path)
        written.append(path)
    return written


def summary_table(slice_index: pd.DataFrame, studies: pd.DataFrame) -> pd.DataFrame:
    """Long table: positives and totals per level (study/slice), dataset, role, site, fold, label.

    Slice counts cover slices with a known slice label only (CQ500 has none).
    """
    keys = ["dataset", "role", "site", "fold"]
    frames = []
    for level, frame in (("study", studies), ("slice", slice_index)):
        for label in RSNA_LABELS:
            known = frame[frame[label].notna()]
            counts = known.groupby(keys, dropna=False)[label].agg(positives="sum", total="size")
            counts = counts.reindex(frame[keys].drop_duplicates().set_index(keys).index, fill_value=0)
            frames.append(counts.reset_index().assign(level=level, label=label))
    table = pd.concat(frames, ignore_index=True)[["level", *keys, "label", "positives", "total"]]
    return table.astype({"positives": "int64", "total": "int64"}).sort_values(
        ["level", *keys, "label"], ignore_index=True
    )


def summary_figure(table: pd.DataFrame, studies: pd.DataFrame, out: str | Path) -> None:
    """Four panels: studies per dataset/site/fold, positive studies and slices per label, slice counts."""
    fig = Figure(figsize=(14, 9), dpi=DPI)
    axes = fig.subplots(2, 2)
    by = studies.groupby(["dataset", "site", "fold", "role"])["any"].agg(["sum", "count", "size"])
    names = [f"{d}\n{s}\nfold {f}" if f >= 0 else f"{d}\n{s}\n{r}" for d, s, f, r in by.index]
    negatives = by["count"] - by["sum"]
    ax = axes[0, 0]
    ax.bar(names, negatives, color="#8aa", label="any = 0")
    ax.bar(names, by["sum"], bottom=negatives, color="#d44", label="any = 1")
    if (by["size"] > by["count"]).any():  # unlabelled studies (role predict): unknown, not negative
        ax.bar(names, by["size"] - by["count"], bottom=by["count"], color="#ccc", label="any unknown")
    ax.set_title("Studies per dataset / site / fold")
    ax.set_ylabel("studies")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend()
    for ax, level in ((axes[0, 1], "study"), (axes[1, 0], "slice")):
        part = table[table["level"] == level].groupby(["label", "dataset"])[["positives", "total"]].sum()
        datasets = sorted(part.index.get_level_values("dataset").unique())
        width = 0.8 / max(1, len(datasets))
        x = np.arange(len(RSNA_LABELS))
        for i, ds in enumerate(datasets):
            values = [
                part.loc[(label, ds), "positives"] if (label, ds) in part.index else 0
                for label in RSNA_LABELS
            ]
            totals = [
                part.loc[(label, ds), "total"] if (label, ds) in part.index else 0 for label in RSNA_LABELS
            ]
            bars = ax.bar(x + i * width, values, width, label=f"{ds} (n={max(totals)})")
            ax.bar_label(bars, fontsize=7)
        ax.set_xticks(x + width * (len(datasets) - 1) / 2, [SHORT.get(lab, lab) for lab in RSNA_LABELS])
        noun = {"study": "studies", "slice": "slices"}[level]
        ax.set_title(
            f"Positive {noun} per label" + (" (slices with slice labels only)" if level == "slice" else "")
        )
        ax.set_ylabel(noun)
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    bins = np.histogram_bin_edges(studies["n_slices"], bins=30)
    for ds, part in studies.groupby("dataset"):
        ax.hist(part["n_slices"], bins=bins, alpha=0.6, label=ds)
    ax.set_title("Slices per study")
    ax.set_xlabel("slices")
    ax.set_ylabel("studies")
    ax.legend()
    fig.tight_layout()
    _save(fig, out)


def write_qc(
    slice_index: pd.DataFrame,
    studies: pd.DataFrame,
    out_dir: str | Path,
    per_dataset: int = 4,
    seed: int = 0,
) -> dict[str, Sequence[Path] | Path]:
    """All QC outputs into `out_dir`: montages/, summary.csv, summary.png."""
    out_dir = Path(out_dir)
    montages = write_montages(slice_index, studies, per_dataset, seed, out_dir / "montages")
    table = summary_table(slice_index, studies)
    write_csv(out_dir / "summary.csv", table)
    summary_figure(table, studies, out_dir / "summary.png")
    return {
        "montages": montages,
        "summary_csv": out_dir / "summary.csv",
        "summary_png": out_dir / "summary.png",
    }
