"""One fold model's saliency: its positive calls, their Grad-CAM maps and their pointing game.

For each call (`ct25d.evaluation.pointing.positive_calls`) that is pointed at or drawn: a slice model
(Stage 1, thickened 2D) gets the Grad-CAM of its top slices by slice probability, fed as its trainer
fed them (`SliceDataset`); a 3D net the Grad-CAM of the study score on its volume, fed as its trainer
fed it (`VolumeDataset`: padded, or whole where it trained on runs of slices). The lesion masks are
the slice store's (`ct25d.evaluation.truth`); a 3D volume's slice d is slice-store slice
`source_z[d]`. Returns one row per positive call and the gallery's tiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ct25d.datasets.slice_dataset import SliceDataset
from ct25d.evaluation.pointing import Pointing, PointingSettings, peak_footprint, point, positive_calls
from ct25d.evaluation.saliency import LoadedModel, SaliencyMaps, upsample
from ct25d.evaluation.truth import Truth
from ct25d.slices.store import SliceReader
from ct25d.volumes.fixed_store import MASK_CHANNEL, read_fixed

log = logging.getLogger(__name__)

ROW_COLUMNS = ["key", "fold", "split", "dataset", "study_id", "patient_id", "prob", "truth", "pointed",
               "drawn", "hit", "chance", "z", "grid", "note"]  # fmt: skip


@dataclass
class Tile:
    """One gallery picture: a slice in the brain window, the saliency on it (max 1), its lesion
    mask, the peak cell's box (y0, y1, x0, x1) and a caption."""

    image: np.ndarray
    saliency: np.ndarray
    mask: np.ndarray | None
    peak: tuple[int, int, int, int] | None
    caption: str


@dataclass
class _Looked:
    """What one call's map gave: the pointing game (None unless scored), the slice-store slice
    shown, the map's grid and the tile."""

    pointing: Pointing | None
    z: int
    grid: tuple[int, ...]
    tile: Tile


def _box(peak: tuple[slice, ...] | None) -> tuple[int, int, int, int] | None:
    """The in-plane (y0, y1, x0, x1) of a footprint."""
    return None if peak is None else (peak[-2].start, peak[-2].stop, peak[-1].start, peak[-1].stop)


class _SliceLooker:
    """Grad-CAM of a slice model on a study's top slices, fed as its trainer fed them."""

    def __init__(self, loaded: LoadedModel, maps: SaliencyMaps, index: pd.DataFrame, slices: pd.DataFrame,
                 label: str, top: int) -> None:  # fmt: skip
        self.loaded, self.maps, self.top = loaded, maps, top
        self.rows = {key: part.sort_values("z") for key, part in index.groupby(["dataset", "study_id"])}
        self.probs = {key: part.set_index("z")[f"prob_{label}"]
                      for key, part in slices.groupby(["dataset", "study_id"])}  # fmt: skip

    def __call__(self, dataset: str, study_id: str, mask: np.ndarray | None, score: bool) -> _Looked:
        rows = self.rows[dataset, study_id].reset_index(drop=True)
        zs = self.probs[dataset, study_id].sort_index().nlargest(self.top, keep="first").index.to_numpy()
        # The whole study, so that a thickened model's k-slice windows clamp at its real ends.
        data = SliceDataset(rows, None, self.loaded.image_size, thickness=self.loaded.thickness)
        positions = [int(np.flatnonzero(rows["z"].to_numpy() == z)[0]) for z in zs]
        raw = self.maps.raw(torch.stack([data[p][0] for p in positions]))  # (k, h, w)
        reader = SliceReader(rows["store"].iloc[0])
        images = np.stack([reader.read(study_id, int(z)) for z in zs])  # (k, 3, S, S) uint8
        shape = (len(zs), *images.shape[-2:])
        pointing = point(raw, mask[zs], (images > 0).any(1)) if score and mask is not None else None
        peak = peak_footprint(raw, shape)
        k = 0 if peak is None else peak[0].start
        tile = Tile(images[k, 0], upsample(raw[k][None], shape[1:])[0],
                    None if mask is None else mask[zs[k]], _box(peak), "")  # fmt: skip
        return _Looked(pointing, int(zs[k]), tuple(raw.shape[1:]), tile)


class _VolumeLooker:
    """Grad-CAM of a 3D net's study score on a study's volume, fed as its trainer fed it; the
    slice shown is the peak cell's slice holding the most lesion (its middle one without)."""

    def __init__(self, loaded: LoadedModel, maps: SaliencyMaps, volumes: pd.DataFrame) -> None:
        self.loaded, self.maps = loaded, maps
        self.table = volumes.set_index(["dataset", "study_id"])

    def __call__(self, dataset: str, study_id: str, mask: np.ndarray | None, score: bool) -> _Looked:
        entry = self.table.loc[(dataset, study_id)]
        item = self.loaded.volume_input(entry["store"], study_id, int(entry["pad_to"]))
        depth = int(item["x"].shape[1])
        raw = self.maps.raw(item["x"][None], item["valid"][None])[0]  # (d, h, w)
        volume, attrs = read_fixed(entry["store"], study_id)
        if attrs["channels"][-1] == MASK_CHANNEL:
            volume = volume[:-1]
        real = volume.shape[1]
        head = np.zeros((depth, *volume.shape[2:]), dtype=bool)
        head[:real] = (volume > 0).any(0)
        source_z = attrs.get("source_z")  # None: z resized, no slice-store slice to hold a mask
        lesion = None
        if mask is not None and source_z is not None:
            lesion = np.zeros_like(head)
            lesion[:real] = mask[np.asarray(source_z)]
        pointing = point(raw, lesion, head) if score and lesion is not None else None
        peak = peak_footprint(raw, head.shape)
        display = upsample(raw[None], head.shape)[0]
        # The slice shown: the peak cell's slice with the most lesion in the cell (its middle slice
        # without); an all-zero map has no peak: the slice with the most lesion, or the middle one.
        zs = np.arange(depth)[peak[0]] if peak is not None else np.arange(real)
        zs = zs[zs < real]
        box = (slice(None), *peak[1:]) if peak is not None else (slice(None),)
        if not len(zs):  # the peak lies in the padding
            zs, box = np.arange(real), (slice(None),)
        in_box = lesion[zs][box].reshape(len(zs), -1).sum(1) if lesion is not None else np.zeros(len(zs))
        d = int(zs[in_box.argmax()] if in_box.any() else zs[len(zs) // 2])
        z = int(source_z[d]) if source_z is not None else d
        tile = Tile(volume[0, d], display[d], None if lesion is None else lesion[d], _box(peak), "")
        return _Looked(pointing, z, tuple(raw.shape), tile)


def _note(call: pd.Series, why: str, looked: _Looked | None) -> str:
    """Why a call has no hit (or an all-zero map's); "" for a plain hit or miss."""
    if why:
        return why
    if call["truth"] != 1:
        return "false positive: no lesion to point at"
    if not call["pointed"]:
        return "not sampled"
    if looked is not None and looked.pointing is None:
        return "resized volume: no slice-store slices to hold the mask"
    if looked is not None and looked.pointing is not None and looked.pointing.peak is None:
        return "all-zero map: points nowhere"
    return ""


def _sample(calls: pd.DataFrame, stores: pd.Series, truth: Truth, s: PointingSettings,
            ) -> tuple[dict[int, np.ndarray], dict[int, str]]:  # fmt: skip
    """The pointed calls' masks (the first `s.calls` true positives of each set, in `calls`' order,
    whose study has a mask with a lesion in it) and why the true positives passed over have none."""
    masks: dict[int, np.ndarray] = {}
    why: dict[int, str] = {}
    for _, part in calls[calls["truth"] == 1].groupby(["split", "dataset"], sort=False):
        taken = 0
        for i, call in part.iterrows():
            if taken == s.calls:
                break
            key = (call["dataset"], call["study_id"])
            mask, why[i] = truth.masks(*key[:1], stores[key], key[1])
            if mask is not None and not mask.any():
                mask, why[i] = None, "mask holds no lesion"
            if mask is not None:
                masks[i], taken = mask, taken + 1
    return masks, why


def saliency_run(
    loaded: LoadedModel,
    studies: pd.DataFrame,
    slices: pd.DataFrame,
    index: pd.DataFrame,
    truth: Truth,
    s: PointingSettings,
    key: str,
    fold: int,
    volumes: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[Tile]]:
    """(one row per positive call: `ROW_COLUMNS`; the gallery's tiles, most confident first).

    `studies` / `slices`: the run's `predictions_studies` / `predictions_slices`; `index`: the slice
    index (stores, patients); `volumes`: the volume index (3D nets)."""
    if s.label not in loaded.labels or f"prob_{s.label}" not in studies:
        log.warning("%s fold %d predicts %s, not %r: no saliency", key, fold, list(loaded.labels), s.label)
        return pd.DataFrame(columns=ROW_COLUMNS), []
    maps = SaliencyMaps(loaded.model, loaded.class_index(s.label))
    if loaded.kind == "slices":
        looker: _SliceLooker | _VolumeLooker = _SliceLooker(loaded, maps, index, slices, s.label, s.slices)
    else:
        if volumes is None:
            raise ValueError("a 3D net's saliency needs the volume index")
        looker = _VolumeLooker(loaded, maps, volumes)
    keyed = index.drop_duplicates(["dataset", "study_id"]).set_index(["dataset", "study_id"])
    patients, stores = keyed["patient_id"], keyed["store"]
    calls = positive_calls(studies, s)
    masks, why = _sample(calls, stores, truth, s)
    calls["pointed"] = calls.index.isin(list(masks))
    rows, tiles = [], []
    for i, call in calls.iterrows():
        dataset, study_id = call["dataset"], call["study_id"]
        mask = masks.get(i)
        looked = None
        if mask is not None or call["drawn"]:
            shown = mask if mask is not None else truth.masks(dataset, stores[dataset, study_id], study_id)[0]
            looked = looker(dataset, study_id, shown, score=mask is not None)
        pointing = None if looked is None else looked.pointing
        scored = pointing is not None
        rows.append({
            "key": key, "fold": fold, "split": call["split"], "dataset": dataset, "study_id": study_id,
            "patient_id": patients[dataset, study_id], "prob": float(call["prob"]),
            "truth": float(call["truth"]), "pointed": bool(call["pointed"]), "drawn": bool(call["drawn"]),
            "hit": pointing.hit if scored else np.nan, "chance": pointing.chance if scored else np.nan,
            "z": looked.z if looked is not None else -1,
            "grid": "x".join(map(str, looked.grid)) if looked is not None else "",
            "note": _note(call, why.get(i, ""), looked),
        })  # fmt: skip
        if call["drawn"] and looked is not None:
            verdict = "" if not scored else (" hit" if pointing.hit else " miss")
            truth_text = "TP" if call["truth"] == 1 else ("FP" if call["truth"] == 0 else "unlabelled")
            looked.tile.caption = (f"{dataset} {study_id[3:11]} z{looked.z}\n"
                                   f"p={call['prob']:.2f} {truth_text}{verdict}")  # fmt: skip
            tiles.append((call["prob"], looked.tile))
    frame = pd.DataFrame(rows, columns=ROW_COLUMNS)
    log.info("%s fold %d: %d positive calls, %d pointed (%d hits), %d drawn", key, fold, len(frame),
             int(frame["hit"].notna().sum()), int(frame["hit"].sum()), len(tiles))  # fmt: skip
    return frame, [tile for _, tile in sorted(tiles, key=lambda t: -t[0])]
