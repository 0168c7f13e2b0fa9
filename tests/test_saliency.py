"""Where the models looked: the pointing game's geometry, Grad-CAM on a net that learned a bright
square, every family's Grad-CAM layer, the truth masks on the slice store's pixels, the calls, and
the comparison's cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

from ct25d.dicom.headers import pseudonym
from ct25d.evaluation.pointing import (
    PointingSettings,
    cells_holding,
    footprint,
    inner_threshold,
    point,
    positive_calls,
)
from ct25d.evaluation.saliency import SaliencyMaps, load_model, target_layer
from ct25d.evaluation.truth import NO_MASKS, Truth, slice_masks
from ct25d.labels import RSNA_LABELS
from ct25d.report.compare import inner_choices
from ct25d.report.pointing import pointing_cells, pointing_records, pointing_scores
from ct25d.volumes.fixed_store import MaskSource


def lesion_at(shape: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box] = True
    return mask


def test_a_peak_outside_the_mask_scores_0_and_inside_scores_1() -> None:
    """A 4 x 4 map over 32 x 32 pixels: each cell stands for 8 x 8 pixels. The lesion sits in cell
    (1, 2); a map peaking there hits, one peaking on the skull's corner cell or elsewhere misses."""
    mask = lesion_at((32, 32), (slice(10, 13), slice(18, 21)))
    inside, outside = np.zeros((4, 4)), np.zeros((4, 4))
    inside[1, 2] = 1.0
    outside[0, 0], outside[1, 2] = 2.0, 1.0  # looks at the corner (skull) more than at the lesion
    hit, miss = point(inside, mask), point(outside, mask)
    assert hit.hit == 1.0 and hit.peak == (slice(8, 16), slice(16, 24))
    assert miss.hit == 0.0 and miss.peak == (slice(0, 8), slice(0, 8))
    assert hit.chance == miss.chance == pytest.approx(1 / 16)  # one cell of 16 holds lesion
    head = lesion_at((32, 32), (slice(8, 32), slice(0, 32)))  # the top row of cells is air
    assert point(inside, mask, head).chance == pytest.approx(1 / 12)
    flat = point(np.zeros((4, 4)), mask)  # an all-zero map points nowhere: a miss
    assert flat.hit == 0.0 and flat.peak is None


def test_a_3d_peak_and_a_stack_of_top_slices_point_into_their_own_slice() -> None:
    """3D: a (2, 2, 2) map over 8 slices of 16 x 16; a stack of 3 slices' maps: one slice per cell."""
    mask = lesion_at((8, 16, 16), (slice(5, 6), slice(2, 4), slice(12, 14)))
    raw = np.zeros((2, 2, 2))
    raw[1, 0, 1] = 1.0
    assert point(raw, mask).hit == 1.0 and point(raw, mask).peak == (slice(4, 8), slice(0, 8), slice(8, 16))
    raw[1, 0, 1], raw[0, 0, 1] = 0.0, 1.0  # the right cell, the wrong half of the slices
    assert point(raw, mask).hit == 0.0
    stack = np.zeros((3, 2, 2))
    stack[2, 0, 1] = 1.0  # the third top slice holds the peak
    slices = lesion_at((3, 16, 16), (slice(2, 3), slice(2, 4), slice(12, 14)))
    assert point(stack, slices).hit == 1.0
    assert point(stack, np.roll(slices, 1, axis=0)).hit == 0.0  # lesion on another top slice


def test_footprints_tile_the_image_when_the_grid_does_not_divide_it() -> None:
    shape = (10, 7)
    covered = np.zeros(shape, dtype=int)
    for i in range(3):
        for j in range(2):
            covered[footprint((i, j), (3, 2), shape)] += 1
    assert (covered >= 1).all() and covered.max() <= 4  # bins overlap by at most one pixel per axis
    pixels = np.zeros(shape, dtype=bool)
    pixels[9, 6] = True
    assert cells_holding(pixels, (3, 2)).tolist() == [[False, False], [False, False], [False, True]]


class SquareNet(nn.Module):
    """Three convolutions (stride 4 in all: an 8 x 8 map at 32 px), average pooling, one logit."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def squares(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noise images, half with a bright 6 x 6 square somewhere: (images, labels, square masks)."""
    images = torch.rand(n, 1, 32, 32, generator=generator) * 0.5
    labels = (torch.arange(n) % 2).float()
    masks = np.zeros((n, 32, 32), dtype=bool)
    corners = torch.randint(0, 26, (n, 2), generator=generator)
    for k in range(n):
        if labels[k]:
            y, x = (int(v) for v in corners[k])
            images[k, 0, y : y + 6, x : x + 6] = 1.0
            masks[k, y : y + 6, x : x + 6] = True
    return images, labels, masks


def test_gradcam_of_a_net_trained_to_find_a_bright_square_peaks_on_the_square() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = SquareNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(80):
        images, labels, _ = squares(32, generator)
        loss = nn.functional.binary_cross_entropy_with_logits(net(images)[:, 0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels, masks = squares(16, generator)
    positives = labels.bool().numpy()
    assert float(loss.detach()) < 0.2  # it learned the square
    maps = SaliencyMaps(net, 0, layer="model.features")
    raw = maps.raw(images[positives])
    assert raw.shape == (8, 8, 8)
    hits = [point(r, m).hit for r, m in zip(raw, masks[positives], strict=True)]
    assert np.mean(hits) == 1.0, hits
    shown = maps.upsampled(images[positives])
    assert shown.shape == (8, 32, 32) and np.allclose(shown.reshape(8, -1).max(1), 1.0)


@pytest.mark.parametrize(
    ("entry", "grid"),
    [
        ({"name": "resnet10", "conv1_t_stride": 2, "pooling": "max", "norm": "group"}, (1, 1, 1)),
        ({"name": "resnet10", "conv1_t_stride": 2, "supervision": "slice", "pooling": "max"}, (16, 1, 1)),
        ({"name": "unet_dual", "features": [4, 4, 8, 8, 16, 4], "supervision": "slice"}, (16, 32, 32)),
        ({"name": "acs", "backbone": "resnet10t", "mode": "2.5d", "supervision": "slice"}, (16, 1, 1)),
    ],
)
def test_every_3d_family_gives_a_map_on_its_last_stage(entry: dict, grid: tuple[int, ...]) -> None:
    """Grad-CAM of the study score on a padded volume: a slice-supervised net's study score is its
    max over the real slices (padding never scores), so the map is of that."""
    from ct25d.models.baselines import BASELINES

    torch.manual_seed(0)
    model = BASELINES.from_config(entry, num_classes=len(RSNA_LABELS), in_channels=3).eval()
    maps = SaliencyMaps(model, len(RSNA_LABELS) - 1)
    valid = torch.arange(16)[None] < 12
    raw = maps.raw(torch.randn(1, 3, 16, 32, 32), valid)
    assert raw.shape == (1, *grid) and np.isfinite(raw).all() and (raw >= 0).all()
    assert maps.layer == target_layer(model)


def test_slice_models_map_their_encoders_last_stage_and_load_from_a_checkpoint(tmp_path: Path) -> None:
    """Stage 1 and the thickened 2D are rebuilt from a best.pt as their trainer wrote it; the map is
    layer4's (2 x 2 at 64 px: stride 32)."""
    from ct25d.training.checkpoint import save_checkpoint
    from ct25d.training.stage1 import Stage1Settings, build_model

    for thickness, multiplex in ((1, False), (3, True)):
        s = Stage1Settings(backbone="resnet10t", image_size=64, thickness=thickness, multiplex=multiplex)
        model = build_model(s, len(RSNA_LABELS), pretrained=False)
        path = tmp_path / f"k{thickness}.pt"
        save_checkpoint(path, {"model": model.state_dict(), "settings": s.to_dict(), "num_classes": 6,
                               "class_names": list(RSNA_LABELS), "epoch": 0})  # fmt: skip
        loaded = load_model(path)
        assert loaded.kind == "slices" and loaded.thickness == thickness and loaded.image_size == 64
        maps = SaliencyMaps(loaded.model, loaded.class_index("any"))
        assert maps.layer == "model.encoder.layer4"
        assert maps.raw(torch.randn(2, 3 * thickness, 64, 64)).shape == (2, 2, 2)


def test_a_3d_checkpoint_loads_without_its_initial_weights(tmp_path: Path) -> None:
    from ct25d.models.baselines import BASELINES
    from ct25d.training.checkpoint import save_checkpoint

    entry = {"name": "resnet10", "conv1_t_stride": 2, "pooling": "max", "norm": "group"}
    model = BASELINES.from_config(entry, num_classes=6, in_channels=3).eval()
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": {**entry, "pretrained": "/nowhere.pth"},
                           "meta": {"settings": {"labels": list(RSNA_LABELS)}}})  # fmt: skip
    loaded = load_model(path)
    x = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        assert loaded.kind == "volume" and torch.allclose(loaded.model(x), model(x))
    assert loaded.padded and loaded.volume_depth(32) == 32
    # Trained on runs of slices (crop_depth): scored, and looked at, on whole unpadded studies.
    settings = {"labels": list(RSNA_LABELS), "crop_depth": 16}
    save_checkpoint(path, {"model": model.state_dict(), "config": entry, "meta": {"settings": settings}})
    assert load_model(path).volume_depth(32) is None


def test_truth_masks_are_the_3d_stores_mask_channel_and_keep_the_kinds_asked(tmp_path: Path) -> None:
    """The slice store's masks go through the geometry the 3D store's mask channel goes through (the
    same pixels); only the asked kinds count (the synthetic masks are bit fields: bit 0 an epidural,
    bit 5 an ischemic lesion)."""
    from test_fixed_store import head, write_hu_shard

    from ct25d.slices.build import build_slice_shard
    from ct25d.slices.store import SliceReader
    from ct25d.slices.window import Window
    from ct25d.synth.phantom import LESION_KINDS
    from ct25d.volumes.crop import CropSettings
    from ct25d.volumes.fixed_store import FixedVolumeSettings, build_fixed_shard, read_fixed

    hu, attrs = head([0, 5, 10, 15, 20, 25], shape=(40, 30))
    bits = np.zeros(hu.shape, dtype=np.uint8)
    bits[2:4, 18:24, 8:14] = 1  # an epidural on slices 2-3
    bits[4, 10:16, 15:20] = 1 << 5  # an ischemic lesion on slice 4
    uid = "2.25.99"
    group = zarr.open_group(str(tmp_path / "masks.zarr"), mode="w", zarr_format=3)
    array = group.create_array(uid, shape=bits.shape, dtype="uint8")
    array[...] = bits
    array.attrs["bits"] = list(LESION_KINDS)
    study_id = pseudonym(uid, "salt", "st-")
    write_hu_shard(tmp_path / "hu.zarr", {study_id: (hu, attrs)})
    windows = (Window("brain", 40, 80), Window("subdural", 75, 215), Window("wide", 150, 500))
    crop = CropSettings(opening_mm=0.0)
    build_slice_shard(tmp_path / "hu.zarr", tmp_path / "slices.zarr", crop, 24, windows, {}, progress=False)
    s = FixedVolumeSettings(depth=None, size=24, windows=windows, crop=crop)
    source = MaskSource(tmp_path / "masks.zarr", "salt")
    build_fixed_shard(tmp_path / "hu.zarr", tmp_path / "v.zarr", s, {}, source, progress=False)
    reader = SliceReader(tmp_path / "slices.zarr")
    every, _ = slice_masks(source, reader, study_id, LESION_KINDS)
    volume, _ = read_fixed(tmp_path / "v.zarr", study_id)
    np.testing.assert_array_equal(every, volume[-1] > 0)
    bleeding, note = slice_masks(source, reader, study_id)  # the hemorrhage subtypes only
    assert note == "" and bleeding[2:4].any() and not bleeding[4].any() and every[4].any()
    truth = Truth({"rsna": tmp_path / "masks.zarr"}, "salt")
    assert truth.masks("cq500", str(tmp_path / "slices.zarr"), study_id) == (None, NO_MASKS)


def predictions(seed: int = 0, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    prob = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, n))))
    split = np.array(["inner", "validation", "external"])[np.arange(n) % 3]
    return pd.DataFrame({"dataset": np.where(split == "external", "cq500", "rsna"),
                         "study_id": [f"st-{k:04x}" for k in rng.permutation(n)], "split": split,
                         "prob_any": prob.astype(np.float32), "any": y})  # fmt: skip


def test_calls_are_the_comparisons_calls_and_the_sample_is_by_study_id() -> None:
    studies = predictions()
    assert inner_threshold(studies) == inner_choices(studies, ["any"])["any"].threshold
    s = PointingSettings(gallery=3)
    calls = positive_calls(studies, s)
    scored = studies[studies["split"] != "inner"]
    from ct25d.evaluation.scoring import logit

    expected = scored[logit(scored["prob_any"].to_numpy()) > inner_threshold(studies)]
    assert sorted(calls["study_id"]) == sorted(expected["study_id"])
    for _, part in calls.groupby(["split", "dataset"]):  # drawn in study-id order within each set
        assert part["study_id"].is_monotonic_increasing
    top = expected.nlargest(3, "prob_any")["study_id"]
    assert set(calls.loc[calls["drawn"], "study_id"]) == set(top)


def test_pointing_cells_give_a_number_with_its_n_or_say_why_not() -> None:
    rows = []
    for k in range(12):  # 9 hits of 12 calls on 6 patients, internal set
        rows.append({"approach": "A", "set": "internal (OOF)", "truth": 1.0, "hit": float(k % 4 != 0),
                     "chance": 0.25, "patient_id": f"p{k // 2}", "note": ""})  # fmt: skip
    for k in range(3):  # real data: true positives without masks
        rows.append({"approach": "A", "set": "hospital", "truth": 1.0, "hit": np.nan, "chance": np.nan,
                     "patient_id": f"h{k}", "note": NO_MASKS})  # fmt: skip
    rows.append({"approach": "A", "set": "cq500", "truth": 1.0, "hit": 1.0, "chance": 0.3,
                 "patient_id": "c", "note": ""})  # fmt: skip
    rows.append({"approach": "A", "set": "other", "truth": 0.0, "hit": np.nan, "chance": np.nan,
                 "patient_id": "o", "note": "false positive: no lesion to point at"})  # fmt: skip
    cells = pointing_cells(pointing_scores(pd.DataFrame(rows), 500, 0))
    internal = cells["A", "internal (OOF)"]
    assert internal.startswith("0.750 [") and internal.endswith("(n 12, chance 0.25)")
    assert cells["A", "hospital"] == "no masks"
    assert cells["A", "cq500"] == "too few calls (n 1)"  # not "1.000 [1.000, 1.000]"
    assert cells["A", "other"] == "no true-positive call"


def calls_of(n: int, hits: list[float]) -> pd.DataFrame:
    """`n` scored true-positive calls of approach A on one set, one patient each."""
    return pd.DataFrame({"approach": "A", "set": "cq500", "truth": 1.0, "hit": hits[:n], "chance": 0.2,
                         "patient_id": [f"p{k}" for k in range(n)], "note": ""})  # fmt: skip


def test_a_pointing_game_needs_min_positives_scored_calls() -> None:
    """Four misses are no result: the cell says too few (no `0.000 [0.000, 0.000]`) and the record's
    value and interval are missing, as an AUC's below `min_positives`; from five calls on, a number
    and its interval."""
    misses = [0.0] * 4
    few = pointing_scores(calls_of(4, misses), 200, 0, min_calls=5)
    assert pointing_cells(few)["A", "cq500"] == "too few calls (n 4)"
    interval = few["A", "cq500"].interval
    assert np.isnan([interval.value, interval.low, interval.high]).all()
    (record,) = pointing_records(few)
    assert record["metric"] == "pointing_game" and record["note"] == "too few calls (n 4)"
    assert record["value"] is None and record["low"] is None and record["high"] is None
    assert record["n"] == 4
    enough = pointing_scores(calls_of(5, [1.0, 0.0, 1.0, 0.0, 0.0]), 200, 0, min_calls=5)
    cell = pointing_cells(enough)["A", "cq500"]
    assert cell.startswith("0.400 [") and cell.endswith("] (n 5, chance 0.20)"), cell
    (record,) = pointing_records(enough)
    assert record["value"] == 0.4 and record["low"] <= 0.4 <= record["high"] and record["note"] == ""
    assert pointing_cells(pointing_scores(calls_of(4, misses), 200, 0, min_calls=4))["A", "cq500"].startswith(
        "0.000 ["
    )  # the rule is the setting's, not a constant


def test_the_schema_fills_the_saliency_settings_the_package_reads() -> None:
    import yaml
    from snakemake.utils import validate

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    validate(config, str(root / "config" / "schema.yaml"))
    saliency = config["compare"]["saliency"]
    assert saliency == {"enabled": True, "calls": 4, "slices": 3, "gallery": 4}
    assert PointingSettings.from_dict(saliency) == PointingSettings()


def test_the_comparison_table_gets_a_pointing_game_column_per_set(tmp_path: Path) -> None:
    """Calls of the baseline `weak` (its config name in `key`) become its cells; the Stage-2 row reads
    no image (n/a); a set where it made no call says so; without pointing files, no column."""
    from test_scoring import fake_run

    from ct25d.report.compare import write_comparison

    good = [("b:good", fake_run(tmp_path / "good0", 0, "good", 0.6, 0))]
    weak = [fake_run(tmp_path / "weak0", 0, "weak", 0.05, 10)]
    calls = pd.DataFrame({"key": "weak", "fold": 0, "split": "validation", "dataset": "rsna",
                          "study_id": [f"rsna-f0-{i}" for i in range(6)],
                          "patient_id": [f"p{i}" for i in range(6)],
                          "prob": 0.9, "truth": 1.0, "pointed": True, "drawn": False,
                          "hit": [1.0, 1.0, 0.0, 1.0, 0.0, 1.0], "chance": 0.25, "z": 3, "grid": "2x2",
                          "note": ""})  # fmt: skip
    calls.to_parquet(tmp_path / "pointing.parquet")
    table = write_comparison(
        [], good, tmp_path / "out", weak, replicates=200, pointing=[tmp_path / "pointing.parquet"]
    )
    table = table.set_index("approach")
    assert table.loc["3D: weak", "pointing game (OOF)"].endswith("(n 6, chance 0.25)")
    assert table.loc["3D: weak", "pointing game (OOF)"].startswith("0.667 [")
    assert table.loc["3D: weak", "pointing game (cq500)"] == "no positive call"
    assert table.loc["2.5D: Stage 2 good", "pointing game (OOF)"] == "n/a"
    assert "Pointing game:" in (tmp_path / "out" / "comparison.md").read_text()
    records = json.loads((tmp_path / "out" / "comparison.json").read_text())["intervals"]
    pointed = {r["set"]: r for r in records if r["metric"] == "pointing_game"}
    assert pointed["internal (OOF)"]["n"] == 6 and abs(pointed["internal (OOF)"]["value"] - 4 / 6) < 1e-9
    assert pointed["cq500"]["value"] is None and pointed["cq500"]["note"] == "no positive call"
    # With min_positives 7, six calls are too few: no number in the table or the json.
    strict = write_comparison([], good, tmp_path / "strict", weak, replicates=200, min_positives=7,
                              pointing=[tmp_path / "pointing.parquet"]).set_index("approach")  # fmt: skip
    assert strict.loc["3D: weak", "pointing game (OOF)"] == "too few calls (n 6)"
    records = json.loads((tmp_path / "strict" / "comparison.json").read_text())["intervals"]
    (internal,) = [r for r in records if r["metric"] == "pointing_game" and r["set"] == "internal (OOF)"]
    assert internal["value"] is None and internal["low"] is None and internal["note"] == "too few calls (n 6)"
    plain = write_comparison([], good, tmp_path / "plain", weak, replicates=200)
    assert not [c for c in plain.columns if c.startswith("pointing")]
