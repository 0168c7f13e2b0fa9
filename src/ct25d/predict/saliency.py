"""Where an approach's networks looked on a positive call: the Grad-CAM of `any` on the slices its
picture shows, one map per fold model, averaged over the folds.

Which network gives the map:
- Stage 1 (head, cosine): the fold's Stage-1 network (`stage1/<backbone>/fold<k>/best.pt`);
- Stage 2: the Stage-1 network whose embeddings it read (the checkpoint `embeddings/settings.json`
  of `stage1/<backbone>/fold<k>` records): the map shows what Stage 2's inputs saw, not Stage 2;
- a thickened-2D baseline: its own `best.pt`, fed the k-slice window centred on the shown slice;
- a 3D baseline: its own `best.pt`, Grad-CAM on the volume as it was fed in training (padded,
  or whole and unpadded for a net trained on runs of slices), read at the shown slice through
  the volume store's `source_z`;
- a model that reads no image (the 2.5CNN on embeddings): no map, and the picture says so.

The networks are fed as their trainers fed them (`SliceDataset`, `VolumeDataset`) and mapped by
`ct25d.evaluation.saliency` (MONAI's Grad-CAM on the last convolutional stage), on the CPU. Each fold's
maps are upsampled to the slice store's pixels and scaled by that fold's maximum over the study (its
shown slices; a 3D net's whole volume), so that a weak slice stays weak and every fold weighs the
same; their mean is drawn (a maximum below 1 means the folds looked at different places).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ct25d.datasets.slice_dataset import SliceDataset
from ct25d.errors import ConfigError
from ct25d.evaluation.saliency import LoadedModel, SaliencyMaps, load_model, upsample
from ct25d.report.compare import Run
from ct25d.slices.store import SliceReader
from ct25d.volumes.fixed_store import read_fixed_attrs, volume_channels

log = logging.getLogger(__name__)

LABEL = "any"
NO_IMAGE = "no image saliency for this model: it reads Stage-1 embeddings, not the slices"


@dataclass
class Overlay:
    """What a positive call's picture draws over its shown slices: per slice-store z a map at the
    slice store's pixels in [0, 1] (a shown slice without one stays plain), and what the maps are."""

    maps: dict[int, np.ndarray] = field(default_factory=dict)
    note: str = ""


# What `write_folder` calls for a positive call: (study_id, the z of its shown slices) -> Overlay.
Saliency = Callable[[str, np.ndarray], Overlay]


@dataclass(frozen=True)
class Network:
    """One fold's image network of an approach: its checkpoint and what the picture calls it."""

    checkpoint: Path
    name: str

    def load(self, in_channels: int = 3) -> tuple[LoadedModel, SaliencyMaps]:
        """The network rebuilt from its checkpoint on the CPU, with its Grad-CAM of `any`."""
        loaded = load_model(self.checkpoint, in_channels)
        return loaded, SaliencyMaps(loaded.model, loaded.class_index(LABEL))


def network_of(run: Run) -> Network | None:
    """The image network that gives `run`'s map (None: the run reads no image)."""
    if run.stage == "stage1":  # stage1/<backbone>/fold<k>/eval/<head|cosine>
        stage1 = run.folder.parent.parent
        return Network(stage1 / "best.pt", f"the Stage-1 {stage1.parent.name} network")
    if run.stage == "stage2":  # stage2/<model>/<backbone>/fold<k>
        backbone = run.folder.parent.name
        return Network(
            Path(run.embedded()["checkpoint"]),
            f"the Stage-1 {backbone} network whose embeddings Stage 2 reads (its own head, not Stage 2's)",
        )
    inputs = json.loads((run.folder / "metrics.json").read_text()).get("inputs")
    if inputs not in ("slices", "volume"):
        return None
    return Network(run.folder / "best.pt", run.key or run.folder.parent.name)


def _scaled(raw: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A fold's raw maps at `size`, scaled by their maximum together (a zero map stays 0): `raw` and
    `size` have the same first axis (slices, or a volume's depth), so the interpolation keeps it."""
    return upsample(raw[None], size)[0]


@dataclass
class _Volume:
    """One study's volume as its 3D trainer fed it, read once for every fold model."""

    x: torch.Tensor
    valid: torch.Tensor
    source_z: np.ndarray | None  # the slice-store z of each stored slice (None: z was resized)


class ApproachSaliency:
    """Grad-CAM of `any` of an approach's fold networks on one dataset's studies (`index`: its slice
    index rows; `volumes`: the volume index, for a 3D net). Models load on the first call."""

    def __init__(self, networks: list[Network], index: pd.DataFrame, volumes: pd.DataFrame | None = None,
                 why_none: str = NO_IMAGE) -> None:  # fmt: skip
        self.networks, self.why_none, self.index = networks, why_none, index
        self.volumes = None if volumes is None else volumes.drop_duplicates("study_id").set_index("study_id")

    @classmethod
    def of_runs(
        cls, runs: list[Run], index: pd.DataFrame, volumes: pd.DataFrame | None = None
    ) -> ApproachSaliency:
        """The fold networks of one approach's runs (none where its models read no image)."""
        networks = [network_of(run) for run in sorted(runs, key=lambda r: r.fold)]
        return cls([n for n in networks if n is not None] if all(networks) else [], index, volumes)

    @functools.cached_property
    def _studies(self) -> dict[str, np.ndarray]:
        return self.index.groupby("study_id", sort=False).indices

    def _rows(self, study_id: str) -> pd.DataFrame:
        """The study's slice index rows, in z order."""
        return self.index.iloc[self._studies[study_id]].sort_values("z").reset_index(drop=True)

    @functools.cached_property
    def _models(self) -> list[tuple[LoadedModel, SaliencyMaps]]:
        in_channels = 3
        if self.volumes is not None and len(self.volumes):
            in_channels = volume_channels(self.volumes["store"].iloc[0], str(self.volumes.index[0]))
        return [network.load(in_channels) for network in self.networks]

    def _note(self, volume: bool) -> str:
        n = len(self.networks)
        where = " on its volume, read at each slice" if volume else ""
        folds = f"{n} fold model{'s' * (n > 1)}"
        return f"Grad-CAM of P({LABEL}) of {self.networks[0].name}{where}, mean over {folds}"

    def __call__(self, study_id: str, zs: np.ndarray) -> Overlay:
        if not self.networks:
            return Overlay({}, self.why_none)
        try:
            models = self._models
        except ConfigError as error:  # a family without a known layer, a model without `any`
            log.warning("no saliency: %s", error)
            self.networks, self.why_none = [], f"no image saliency: {error}"
            return Overlay({}, self.why_none)
        zs = np.asarray(zs, dtype=np.int64)
        rows = self._rows(study_id)
        size = SliceReader(rows["store"].iloc[0]).shape(study_id)[-2:]
        volume: list[_Volume] = []  # read by the first 3D fold model, shared by the others
        folds = [
            self._slices(loaded, cam, rows, zs, size) if loaded.kind == "slices"
            else self._volume(loaded, cam, study_id, zs, size, volume)
            for loaded, cam in models
        ]  # fmt: skip
        maps = {int(z): np.mean([fold[int(z)] for fold in folds], axis=0)
                for z in zs if all(int(z) in fold for fold in folds)}  # fmt: skip
        note = self._note(models[0][0].kind == "volume")
        if len(maps) < len(zs):
            note += "; none on slices outside its volume"
        if maps and not any(m.any() for m in maps.values()):  # Grad-CAM's ReLU left nothing here
            note += "; all zero on these slices"
        return Overlay(maps, note)

    @staticmethod
    def _slices(loaded: LoadedModel, cam: SaliencyMaps, rows: pd.DataFrame, zs: np.ndarray,
                size: tuple[int, ...]) -> dict[int, np.ndarray]:  # fmt: skip
        """A slice model's maps of the shown slices, fed as `SliceDataset` fed its trainer."""
        # The whole study, so that a thickened model's k-slice windows clamp at its real ends.
        data = SliceDataset(rows, None, loaded.image_size, thickness=loaded.thickness)
        positions = [int(np.flatnonzero(rows["z"].to_numpy() == z)[0]) for z in zs]
        raw = cam.raw(torch.stack([data[p][0] for p in positions]))  # (k, h, w)
        scaled = _scaled(raw, (len(zs), *size))
        return {int(z): scaled[i] for i, z in enumerate(zs)}

    def _volume(self, loaded: LoadedModel, cam: SaliencyMaps, study_id: str, zs: np.ndarray,
                size: tuple[int, ...], cache: list[_Volume]) -> dict[int, np.ndarray]:  # fmt: skip
        """A 3D net's map of the study score on its volume as its trainer fed it, at the shown
        slices through `source_z` (none where z was resized or the slice lies outside the volume)."""
        if self.volumes is None:
            raise ValueError("a 3D net's saliency needs the volume index")
        if study_id not in self.volumes.index:
            return {}
        if not cache:
            entry = self.volumes.loc[study_id]
            item = loaded.volume_input(entry["store"], study_id, int(entry["pad_to"]))
            source_z = read_fixed_attrs(entry["store"], study_id).get("source_z")
            stored = None if source_z is None else np.asarray(source_z)
            cache.append(_Volume(item["x"], item["valid"], stored))
        volume = cache[0]
        if volume.source_z is None:
            return {}
        raw = cam.raw(volume.x[None], volume.valid[None])[0]  # (d, h, w)
        display = _scaled(raw, (volume.x.shape[1], *size))[: len(volume.source_z)]
        # Slices interpolated at an irregular series' gaps share a source slice: the max of theirs.
        return {int(z): display[volume.source_z == z].max(0) for z in zs if (volume.source_z == z).any()}
