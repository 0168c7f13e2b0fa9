"""The saliency maps of a prediction's positive calls: each family's network found from its run, fed
as its trainer fed it, its map on the slice a picture shows (a thickened model's window centred on
it, a 3D net's through `source_z`), and the PNGs with and without them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from test_fixed_store import head, write_hu_shard
from torch import nn

from ct25d.evaluation.saliency import LoadedModel, SaliencyMaps
from ct25d.labels import RSNA_LABELS
from ct25d.predict.saliency import NO_IMAGE, ApproachSaliency, Network, network_of
from ct25d.predict.scans import COLUMNS
from ct25d.predict.write import write_folder
from ct25d.report.compare import Run
from ct25d.slices.build import build_slice_shard
from ct25d.slices.store import SliceReader
from ct25d.slices.window import Window
from ct25d.training.checkpoint import save_checkpoint
from ct25d.volumes.crop import CropSettings
from ct25d.volumes.fixed_store import FixedVolumeSettings, build_fixed_shard

WINDOWS = (Window("brain", 40, 80), Window("subdural", 75, 215), Window("wide", 150, 500))
DATASET = "newsite"
LESION_Z = 5
SIZE = 32


@dataclass
class Cohort:
    """A positive study (a bright lesion on slice LESION_Z) and a negative one, in a slice store
    and a from-slices volume store that keeps slices 2-7 (slices 0-1 hold little head)."""

    index: pd.DataFrame
    volumes: pd.DataFrame
    lesion: np.ndarray  # (S, S) the lesion's pixels on the slice store's slice LESION_Z


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    tmp = tmp_path_factory.mktemp("cohort")
    studies = {}
    for study_id, lesion in (("st-pos", True), ("st-neg", False)):
        hu, attrs = head([5.0 * k for k in range(8)])
        hu[:2] = -1000
        hu[:2, 18:22, 16:20] = 30  # the neck: little head, so the 3D window starts at slice 2
        if lesion:
            hu[LESION_Z, 12:18, 20:26] = 75  # blood-bright in the brain window, inside the head
        studies[study_id] = (hu, attrs)
    write_hu_shard(tmp / "hu.zarr", studies)
    crop = CropSettings(opening_mm=0.0)
    rows, _ = build_slice_shard(tmp / "hu.zarr", tmp / "slices.zarr", crop, SIZE, WINDOWS, {}, progress=False)
    index = rows.assign(dataset=DATASET, slice_id=lambda f: f["study_id"] + "-" + f["z"].astype(str),
                        position_mm=lambda f: 5.0 * f["z"])  # fmt: skip
    s = FixedVolumeSettings(depth=None, size=SIZE, windows=WINDOWS, crop=crop, max_depth=6)
    volumes, _ = build_fixed_shard(tmp / "hu.zarr", tmp / "volumes.zarr", s, {}, progress=False)
    brain = SliceReader(tmp / "slices.zarr").read("st-pos", LESION_Z)[0]
    return Cohort(index, volumes.assign(dataset=DATASET), brain > 200)


class Bright(nn.Module):
    """Fires where the middle slice's brain window is brighter than tissue: a strided convolution
    over that channel alone (a 4-pixel cell each), ReLU, mean pooling, one logit."""

    def __init__(self, channels: int, middle: int, dims: int = 2) -> None:
        super().__init__()
        conv: nn.Module = (
            nn.Conv2d(channels, 2, 4, stride=4) if dims == 2 else nn.Conv3d(channels, 2, (1, 4, 4), (1, 4, 4))
        )
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, middle] = 1.0 / 16  # tissue is about -0.5 normalised, the lesion about 2
            conv.bias.fill_(-0.5)
        self.features = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

        self.depths: list[int] = []  # a volume net: the depth of each input it was fed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            self.depths.append(int(x.shape[2]))
        features = self.features(x)
        return self.head(features.mean(tuple(range(2, features.dim()))))


@dataclass(frozen=True)
class Handmade(Network):
    """A fold network that is not a checkpoint: a `Bright` net, mapped on its convolution."""

    kind: str = "slices"
    thickness: int = 1
    padded: bool = True

    def load(self, in_channels: int = 3) -> tuple[LoadedModel, SaliencyMaps]:
        if self.kind == "slices":
            net = Bright(3 * self.thickness, 3 * (self.thickness // 2))  # slices x windows, as stacked
        else:
            net = Bright(in_channels, 0, dims=3)
        loaded = LoadedModel(net.eval(), self.kind, ("any",), None, self.thickness, self.padded)
        return loaded, SaliencyMaps(loaded.model, 0, layer="model.features")


def peak_in(heat: np.ndarray, lesion: np.ndarray) -> bool:
    return bool(lesion[np.unravel_index(np.argmax(heat), heat.shape)])


@pytest.mark.parametrize("thickness", [1, 3])
def test_a_slice_models_map_peaks_on_the_lesion_of_the_slice_shown(cohort: Cohort, thickness: int) -> None:
    """A thickened model reads the k-slice window centred on the shown slice: its middle slice holds
    the lesion only when the window is centred on LESION_Z (an off-centre window gives no map)."""
    networks = [Handmade(Path("none"), "a bright detector", thickness=thickness)] * 2
    saliency = ApproachSaliency(networks, cohort.index)
    overlay = saliency("st-pos", np.array([3, LESION_Z, 7]))
    assert sorted(overlay.maps) == [3, LESION_Z, 7]
    heat = overlay.maps[LESION_Z]
    assert heat.shape == cohort.lesion.shape and np.isfinite(heat).all()
    assert heat.max() == pytest.approx(1.0) and peak_in(heat, cohort.lesion)
    assert heat[~cohort.lesion].mean() < 0.1  # the map lies on the lesion, not on the head
    assert overlay.maps[3].max() == overlay.maps[7].max() == 0.0  # no lesion: a zero map
    assert overlay.note == "Grad-CAM of P(any) of a bright detector, mean over 2 fold models"


def test_a_3d_nets_map_is_read_at_the_shown_slice_through_source_z(cohort: Cohort) -> None:
    """The volume keeps slices 2-7 (its slice d is slice-store slice d + 2): the map of the lesion's
    stored slice lands on LESION_Z; slice 1 is outside the volume and gets no map."""
    network = Handmade(Path("none"), "a 3D detector", "volume")
    overlay = ApproachSaliency([network], cohort.index, cohort.volumes)("st-pos", np.array([1, 3, LESION_Z]))
    assert sorted(overlay.maps) == [3, LESION_Z]
    heat = overlay.maps[LESION_Z]
    assert peak_in(heat, cohort.lesion) and heat.max() == pytest.approx(1.0)
    assert overlay.maps[3].max() == 0.0
    assert "on its volume, read at each slice" in overlay.note
    assert overlay.note.endswith("none on slices outside its volume")


@pytest.mark.parametrize("padded", [True, False])
def test_a_3d_net_is_fed_the_volume_as_its_trainer_fed_it(cohort: Cohort, padded: bool) -> None:
    """A net trained on whole studies padded to the store's depth (10 here) sees the study padded;
    one trained on runs of slices (`crop_depth`) sees the study's own 6 slices, as it was scored."""
    network = Handmade(Path("none"), "a 3D detector", "volume", padded=padded)
    saliency = ApproachSaliency([network], cohort.index, cohort.volumes.assign(pad_to=10))
    overlay = saliency("st-pos", np.array([LESION_Z]))
    assert saliency._models[0][0].model.depths == [10 if padded else 6]
    assert peak_in(overlay.maps[LESION_Z], cohort.lesion)


def stage1_checkpoint(path: Path, seed: int) -> Path:
    from ct25d.training.stage1 import Stage1Settings, build_model

    torch.manual_seed(seed)
    s = Stage1Settings(backbone="resnet10t", image_size=64)
    model = build_model(s, len(RSNA_LABELS), pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "settings": s.to_dict(), "num_classes": 6,
                           "class_names": list(RSNA_LABELS), "epoch": 0})  # fmt: skip
    return path


def stage1_runs(results: Path) -> list[Run]:
    """Two folds of `2D resnet10t: thresholded head`, as `load_runs` names their folders."""
    runs = []
    for fold in (0, 1):
        stage1_checkpoint(results / "stage1" / "resnet10t" / f"fold{fold}" / "best.pt", fold)
        folder = results / "stage1" / "resnet10t" / f"fold{fold}" / "eval" / "head"
        runs.append(Run("2D resnet10t: thresholded head", "stage1", fold, folder, key="resnet10t:head"))
    return runs


def test_each_family_finds_its_network_from_its_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    stage1 = network_of(stage1_runs(results)[0])
    assert stage1 is not None and stage1.checkpoint == results / "stage1" / "resnet10t" / "fold0" / "best.pt"
    # Stage 2: the checkpoint its embeddings were made with, as embeddings/settings.json records it.
    embeddings = results / "stage1" / "resnet10t" / "fold0" / "embeddings"
    embeddings.mkdir()
    recorded = stage1_checkpoint(tmp_path / "elsewhere" / "best.pt", 0)
    (embeddings / "settings.json").write_text(json.dumps({"settings": {"checkpoint": str(recorded)}}))
    stage2 = Run("2.5D: Stage 2 bilstm", "stage2", 0, results / "stage2" / "bilstm" / "resnet10t" / "fold0",
                 key="resnet10t:bilstm")  # fmt: skip
    network = network_of(stage2)
    assert network is not None and network.checkpoint == recorded
    assert "whose embeddings Stage 2 reads" in network.name
    for name, inputs in (("thick5", "slices"), ("resnet10_3d", "volume"), ("cnn25", "embeddings")):
        folder = results / "baselines" / name / "fold0"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"inputs": inputs}))
        network = network_of(Run(f"x: {name}", "baseline", 0, folder, key=name))
        assert (network is None) == (inputs == "embeddings")
        assert network is None or (network.checkpoint, network.name) == (folder / "best.pt", name)


def write(cohort: Cohort, folder: Path, saliency: ApproachSaliency | None) -> None:
    """`st-pos` called positive (its highest slice LESION_Z), `st-neg` negative."""
    studies = pd.DataFrame({"dataset": DATASET, "study_id": ["st-pos", "st-neg"], "s_any": [2.0, -2.0],
                            "t_any": 0.0})  # fmt: skip
    slices = cohort.index[["dataset", "study_id", "z"]].assign(p_any=0.2)
    slices.loc[slices["z"] == LESION_Z, "p_any"] = 0.9
    records = pd.DataFrame({c: "" for c in COLUMNS}, index=[0, 1]).assign(study_id=["st-pos", "st-neg"])
    write_folder(folder, "an approach", studies, slices, records, cohort.index, ["any"], DATASET, 3, {},
                 saliency)  # fmt: skip


def differences(a: Path, b: Path) -> np.ndarray:
    """Rows of two PNGs (of one size) where they differ."""
    one, two = imread(a), imread(b)
    assert one.shape == two.shape
    return (one != two).any(axis=(1, 2))


def test_a_positive_call_gets_the_map_over_its_slices_and_a_negative_one_stays_plain(
    cohort: Cohort, tmp_path: Path
) -> None:
    """With a Stage-1 approach's two fold checkpoints: the positive call's tiles carry the map (rows
    of the slice tiles differ from the plain picture) and its note; the negative call's PNG is the
    plain one, pixel for pixel."""
    saliency = ApproachSaliency.of_runs(stage1_runs(tmp_path / "results"), cohort.index)
    start = time.perf_counter()
    overlay = saliency("st-pos", np.array([4, LESION_Z, 6]))
    print(f"2 resnet10t folds, 3 slices: {time.perf_counter() - start:.2f} s")
    assert all(np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 for m in overlay.maps.values())
    assert max(m.max() for m in overlay.maps.values()) > 0  # a map, not nothing
    write(cohort, tmp_path / "plain", None)
    write(cohort, tmp_path / "mapped", saliency)
    rows = differences(tmp_path / "plain" / "st-pos.png", tmp_path / "mapped" / "st-pos.png")
    height = len(rows)
    assert rows[int(0.2 * height) : int(0.85 * height)].any()  # the tiles
    assert rows[int(0.93 * height) :].any()  # the note under them
    assert not differences(tmp_path / "plain" / "st-neg.png", tmp_path / "mapped" / "st-neg.png").any()


def test_a_model_without_image_input_says_so_and_draws_nothing(cohort: Cohort, tmp_path: Path) -> None:
    folder = tmp_path / "baselines" / "cnn25" / "fold0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"inputs": "embeddings"}))
    run = Run("2.5D stacked embeddings: cnn25", "baseline", 0, folder)
    saliency = ApproachSaliency.of_runs([run], cohort.index)
    overlay = saliency("st-pos", np.array([LESION_Z]))
    assert overlay.maps == {} and overlay.note == NO_IMAGE
    write(cohort, tmp_path / "plain", None)
    write(cohort, tmp_path / "noted", saliency)
    rows = differences(tmp_path / "plain" / "st-pos.png", tmp_path / "noted" / "st-pos.png")
    assert rows[int(0.93 * len(rows)) :].any() and not rows[: int(0.93 * len(rows))].any()  # the note alone
