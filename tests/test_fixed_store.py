"""The fixed volume store of the 3D families: round trip, true-position z, masks, bad studies."""

from __future__ import annotations

from pathlib import Path
from re import escape as re_escape

import numpy as np
import pytest
import zarr

from ct25d.dicom.headers import pseudonym
from ct25d.errors import ConfigError
from ct25d.slices.window import Window
from ct25d.volumes.crop import CropSettings
from ct25d.volumes.fixed_store import (
    FixedVolumeSettings,
    MaskSource,
    build_fixed_shard,
    choose_windows,
    prepare_volume,
    read_fixed,
)
from ct25d.volumes.store import HUCodec, hu_store_writer

WINDOWS = (Window("brain", 40, 80), Window("wide", 150, 500))
SETTINGS = FixedVolumeSettings(depth=8, size=24, windows=WINDOWS, crop=CropSettings(opening_mm=0.0))


def head(positions: list[float], shape: tuple[int, int] = (40, 36), value=None) -> tuple[np.ndarray, dict]:
    """A cylinder of tissue in air on 1 mm pixels; slice k holds `value(position)` HU (default 30)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inside = (yy - shape[0] / 2) ** 2 / 15**2 + (xx - shape[1] / 2) ** 2 / 13**2 < 1
    hu = np.full((len(positions), *shape), -1000, dtype=np.int16)
    for k, p in enumerate(positions):
        hu[k][inside] = 30 if value is None else value(p)
    step = float(np.median(np.diff(positions)))
    attrs = {
        "spacing_zyx": [step, 1.0, 1.0],
        "positions_mm": list(positions),
        "shape_zyx": list(hu.shape),
        "origin_xyz": [0.0, 0.0, positions[0]],
    }
    return hu, attrs


def write_hu_shard(path: Path, studies: dict[str, tuple[np.ndarray, dict]]) -> None:
    with hu_store_writer(path, {"test": True}, HUCodec()) as writer:
        for study_id, (hu, attrs) in studies.items():
            writer.write(study_id, hu, attrs)


def test_store_round_trips_and_is_byte_identical_across_builds(tmp_path: Path) -> None:
    studies = {"st-a": head([0, 5, 10, 15, 20, 25]), "st-b": head([0, 4, 8, 12], value=lambda p: 20 + p)}
    write_hu_shard(tmp_path / "hu.zarr", studies)
    table, rejected = build_fixed_shard(
        tmp_path / "hu.zarr", tmp_path / "v1.zarr", SETTINGS, {"x": 1}, progress=False
    )
    build_fixed_shard(tmp_path / "hu.zarr", tmp_path / "v2.zarr", SETTINGS, {"x": 1}, progress=False)
    assert list(table["study_id"]) == ["st-a", "st-b"] and rejected.empty
    for study_id, (hu, attrs) in studies.items():
        stored, info = read_fixed(tmp_path / "v1.zarr", study_id)
        expected, _ = prepare_volume(hu, attrs, SETTINGS, study_id)
        assert stored.shape == (2, 8, 24, 24) and stored.dtype == np.uint8
        np.testing.assert_array_equal(stored, expected)
        assert info["channels"] == ["brain", "wide"]
    chunk = sorted(
        p for p in (tmp_path / "v1.zarr" / "st-a").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    again = sorted(
        p for p in (tmp_path / "v2.zarr" / "st-a").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    assert [p.read_bytes() for p in chunk] == [p.read_bytes() for p in again]


def test_missing_slice_is_interpolated_at_its_true_position() -> None:
    ramp = lambda p: 10 + 2 * p  # noqa: E731 - HU linear in position: interpolation is exact
    full, full_attrs = head([0, 5, 10, 15, 20, 25], value=ramp)
    gap, gap_attrs = head([0, 5, 10, 20, 25], value=ramp)
    assert gap_attrs["spacing_zyx"][0] == 5.0  # ingest records the median step and the true positions
    with_gap, info = prepare_volume(gap, gap_attrs, SETTINGS, "st-gap")
    reference, _ = prepare_volume(full, full_attrs, SETTINGS, "st-full")
    np.testing.assert_array_equal(with_gap, reference)
    assert info["irregular_z_interpolated"]
    as_if_even, _ = prepare_volume(
        gap, {**gap_attrs, "positions_mm": [0, 5, 10, 15, 20]}, SETTINGS, "st-even"
    )
    assert not np.array_equal(as_if_even, reference)  # treating the gap as even spacing would be wrong


def test_mask_follows_the_volume_geometry(tmp_path: Path) -> None:
    hu, attrs = head([0, 5, 10, 15, 20, 25])
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[2:4, 18:24, 8:14] = 1  # a lesion on the left of slices 2-3
    uid = "2.25.1234"
    group = zarr.open_group(str(tmp_path / "masks.zarr"), mode="w", zarr_format=3)
    group.create_array(uid, shape=mask.shape, dtype="uint8")[...] = mask
    study_id = pseudonym(uid, "salt", "st-")
    write_hu_shard(tmp_path / "hu.zarr", {study_id: (hu, attrs), "st-other": head([0, 5, 10])})
    source = MaskSource(tmp_path / "masks.zarr", "salt")
    table, _ = build_fixed_shard(
        tmp_path / "hu.zarr", tmp_path / "v.zarr", SETTINGS, {}, source, progress=False
    )
    assert table.set_index("study_id")["has_mask"].to_dict() == {study_id: True, "st-other": False}
    assert table.set_index("study_id").loc["st-other", "mask_note"] == "no mask for this study"
    stored, info = read_fixed(tmp_path / "v.zarr", study_id)
    assert info["channels"][-1] == "mask"
    lesion = stored[-1] > 0
    zs, _, xs = np.nonzero(lesion)
    assert lesion.any() and set(np.unique(stored[-1])) <= {0, 255}
    assert 2 <= zs.mean() <= 4.5 and xs.mean() < 12  # the middle third of the depth, the left half


def test_an_all_air_study_is_reported_and_the_others_are_written(tmp_path: Path) -> None:
    air, attrs = head([0, 5, 10])
    air[...] = -1000
    write_hu_shard(tmp_path / "hu.zarr", {"st-air": (air, attrs), "st-ok": head([0, 5, 10])})
    table, rejected = build_fixed_shard(
        tmp_path / "hu.zarr", tmp_path / "v.zarr", SETTINGS, {}, progress=False
    )
    assert list(table["study_id"]) == ["st-ok"]
    assert rejected["study_id"].tolist() == ["st-air"] and "all air" in rejected["reason"].iloc[0]


def test_bad_settings_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"baselines\.volume\.windows: \['bone'\] not in"):
        choose_windows(WINDOWS, ["bone"])
    with pytest.raises(ConfigError, match=r"baselines\.volume\.depth"):
        FixedVolumeSettings(depth=2, size=24, windows=WINDOWS, crop=None)


def test_from_slices_volumes_hold_the_slice_stores_pixels(tmp_path: Path) -> None:
    """`depth: from_slices` at the slice store's size: every stored slice is bit-identical to the slice
    store's slice `source_z` (what Stage 1 learned on), so a network converted from Stage 1 sees the
    same input."""
    from ct25d.slices.build import build_slice_shard
    from ct25d.slices.store import SliceReader

    windows = (Window("brain", 40, 80), Window("subdural", 75, 215), Window("wide", 150, 500))
    crop = CropSettings(opening_mm=0.0)
    studies = {"st-a": head([0, 5, 10, 15, 20, 25], value=lambda p: 10 + 2 * p), "st-b": head([0, 4, 8, 12])}
    write_hu_shard(tmp_path / "hu.zarr", studies)
    build_slice_shard(
        tmp_path / "hu.zarr", tmp_path / "slices.zarr", crop, 24, windows, {"x": 1}, progress=False
    )
    s = FixedVolumeSettings(depth=None, size=24, windows=windows, crop=crop)
    table, rejected = build_fixed_shard(
        tmp_path / "hu.zarr", tmp_path / "v.zarr", s, {"x": 1}, progress=False
    )
    assert rejected.empty and table["from_slices"].all() and (table["pad_to"] == 64).all()
    assert list(table["depth"]) == [6, 4]
    reader = SliceReader(tmp_path / "slices.zarr")
    for study_id in studies:
        volume, attrs = read_fixed(tmp_path / "v.zarr", study_id)
        assert attrs["source_z"] == list(range(volume.shape[1]))
        np.testing.assert_array_equal(volume.transpose(1, 0, 2, 3), reader.read_study(study_id))


def test_from_slices_keeps_the_max_depth_slices_holding_the_most_head(tmp_path: Path) -> None:
    """A study longer than `max_depth` keeps the window with the most head (here: air below and a
    neck above are dropped) and records which slice-store slices it kept."""
    positions = [float(5 * k) for k in range(12)]
    hu, attrs = head(positions)
    hu[:3] = -1000  # air below the head
    hu[9:, :, :] = np.where(hu[9:] > -1000, -1000, hu[9:])
    hu[9:, 15:25, 15:21] = 30  # a narrow neck above it
    s = FixedVolumeSettings(depth=None, size=24, windows=WINDOWS, crop=None, max_depth=6)
    volume, info = prepare_volume(hu, attrs, s, "st-long")
    assert volume.shape == (2, 6, 24, 24)
    assert info["source_z"] == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    ("volume", "named"),
    [
        ({"depth": "native"}, "baselines.volume.depth: an integer or 'from_slices', got 'native'"),
        ({"size": 1.5}, "baselines.volume.size: an integer or 'from_slices', got 1.5"),
    ],
)
def test_volume_geometry_names_a_bad_value(volume: dict, named: str) -> None:
    from ct25d.volumes.fixed_store import volume_geometry

    with pytest.raises(ConfigError, match=re_escape(named)):
        volume_geometry(volume, 64)
    assert volume_geometry({}, 64) == (None, 64, 64)
    assert volume_geometry({"depth": 24, "size": 48}, 64) == (24, 48, 24)
