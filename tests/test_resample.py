"""Resampling: grid arithmetic, exact identity, analytic values on a linear ramp, interpolator names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ct25d.errors import ConfigError
from ct25d.shards import shard_studies
from ct25d.volumes.resample import (
    INTERPOLATORS,
    is_irregular,
    regular_slices,
    resample_shard,
    resample_to_grid,
    resample_volume,
    sitk_interpolator,
    target_grid,
)
from ct25d.volumes.store import hu_store_writer, read_volume

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def attrs_for(shape: tuple[int, ...], spacing: tuple[float, float, float], direction=IDENTITY) -> dict:
    return {
        "spacing_zyx": list(spacing),
        "origin_xyz": [0.0, 0.0, 0.0],
        "direction": list(direction),
        "shape_zyx": list(shape),
        "series_id": "se-1",
    }


def test_target_grid_keeps_extent_and_native_slices() -> None:
    shape, spacing = target_grid((34, 256, 256), (5.0, 0.9, 0.9), 1.0, None)
    assert spacing == (5.0, 1.0, 1.0)
    assert shape == (34, 230, 230)  # 256 * 0.9 = 230.4 mm
    shape, spacing = target_grid((10, 64, 64), (5.0, 0.5, 0.5), None, 2.5)
    assert (shape, spacing) == ((20, 64, 64), (2.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match=r"preprocess\.in_plane_mm"):
        target_grid((1, 2, 2), (1.0, 1.0, 1.0), 0.0, None)


def test_identity_is_exact_for_every_interpolator() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, (4, 9, 11), dtype=np.int16)
    attrs = attrs_for(hu.shape, (5.0, 0.7, 0.7), direction=[1, 0, 0, 0, 0.8, 0.6, 0, -0.6, 0.8])
    out, new_attrs = resample_volume(hu, attrs, 0.7, None, "bspline")
    assert np.array_equal(out, hu) and out is not hu
    assert new_attrs["origin_xyz"] == attrs["origin_xyz"]
    for name, interp in INTERPOLATORS.items():  # the SimpleITK path on an unchanged grid, too
        if name == "gaussian":  # a smoothing kernel, not an interpolating one
            continue
        same, origin = resample_to_grid(hu, attrs, hu.shape, (5.0, 0.7, 0.7), interp)
        assert np.array_equal(same, hu), name
        np.testing.assert_allclose(origin, [0.0, 0.0, 0.0], atol=1e-12)


def test_linear_ramp_matches_analytic_values() -> None:
    # 4 HU per mm along x on a 1 mm grid, resampled to 0.5 mm: the new grid is centred on the old
    # field of view, so sample k sits at x = -0.25 + 0.5 k mm and must read 4 x = 2 k - 1 exactly.
    x = np.arange(21)
    hu = np.broadcast_to((4 * x).astype(np.int16), (3, 5, 21)).copy()
    out, attrs = resample_volume(hu, attrs_for(hu.shape, (5.0, 1.0, 1.0)), 0.5, None, "linear")
    assert out.shape == (3, 10, 42)
    assert attrs["spacing_zyx"] == [5.0, 0.5, 0.5]
    assert attrs["source_spacing_zyx"] == [5.0, 1.0, 1.0]
    np.testing.assert_allclose(attrs["origin_xyz"], [-0.25, -0.25, 0.0])
    k = np.arange(1, 41)  # samples inside [0, 20] mm
    assert np.array_equal(out[1, 4, k], 2 * k - 1)


def test_nearest_keeps_values_in_the_input_set() -> None:
    rng = np.random.default_rng(1)
    values = np.array([-1000, 0, 37, 1500], dtype=np.int16)
    hu = rng.choice(values, size=(3, 17, 19))
    out, _ = resample_volume(hu, attrs_for(hu.shape, (5.0, 0.9, 0.9)), 0.65, None, "nearest")
    assert out.shape == (3, 24, 26)
    assert set(np.unique(out)) <= {*values.tolist(), -1024}
    linear, _ = resample_volume(hu, attrs_for(hu.shape, (5.0, 0.9, 0.9)), 0.65, None, "linear")
    assert not set(np.unique(linear)) <= set(values.tolist())  # the check above can fail


def test_unknown_interpolator_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"preprocess\.interpolator.*'cubic'"):
        sitk_interpolator("cubic")
    hu = np.zeros((1, 2, 2), dtype=np.int16)
    with pytest.raises(ConfigError, match=r"preprocess\.interpolator"):
        resample_volume(hu, attrs_for(hu.shape, (1.0, 1.0, 1.0)), None, None, "cubic")


def test_resample_shard_streams_studies_deterministically(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = tmp_path / "in.zarr"
    with hu_store_writer(src, {"stage": "test"}) as writer:
        for name in ("st-a", "st-b"):
            hu = rng.integers(-1000, 1000, (3, 12, 12), dtype=np.int16)
            writer.write(name, hu, attrs_for(hu.shape, (5.0, 0.8, 0.8)))
    settings = {"in_plane_mm": 1.2, "slice_mm": None, "interpolator": "lanczos"}
    outs = []
    for run in ("a", "b"):
        table = resample_shard(src, tmp_path / f"{run}.zarr", settings, {"stage": "resample"}, progress=False)
        assert table["study_id"].tolist() == ["st-a", "st-b"]
        outs.append(
            [read_volume(tmp_path / f"{run}.zarr", s) for s in shard_studies(tmp_path / f"{run}.zarr")]
        )
    for (hu_a, attrs_a), (hu_b, _) in zip(*outs, strict=True):
        assert hu_a.shape == (3, 8, 8) and hu_a.dtype == np.int16
        assert attrs_a["spacing_zyx"] == [5.0, 1.2, 1.2]
        assert np.array_equal(hu_a, hu_b)
    with pytest.raises(ConfigError, match=r"preprocess\.slice_mm"):
        resample_shard(src, tmp_path / "c.zarr", {"in_plane_mm": 1.0, "interpolator": "linear"}, {})


def test_a_study_resampling_leaves_unchanged_is_an_alias_not_a_copy(tmp_path: Path) -> None:
    import shutil

    rng = np.random.default_rng(3)
    results = tmp_path / "results"
    src = results / "hu" / "shard-0.zarr"
    volumes = {}
    with hu_store_writer(src, {"stage": "test"}) as writer:
        for name, spacing in (("same", (5.0, 0.8, 0.8)), ("finer", (5.0, 0.5, 0.5))):
            volumes[name] = rng.integers(-1000, 1000, (3, 12, 12), dtype=np.int16)
            writer.write(name, volumes[name], attrs_for(volumes[name].shape, spacing))
    out = results / "resampled" / "shard-0.zarr"
    table = resample_shard(src, out, {"in_plane_mm": 0.8, "slice_mm": None, "interpolator": "linear"}, {},
                           progress=False)  # fmt: skip
    assert table.set_index("study_id")["unchanged"].to_dict() == {"same": True, "finer": False}
    assert not (out / "same" / "c").exists()  # no voxels stored for it: they stay in the HU store
    shutil.move(results, tmp_path / "moved")  # the whole results folder elsewhere: still found
    moved = tmp_path / "moved" / "resampled" / "shard-0.zarr"
    hu, attrs = read_volume(moved, "same")
    assert np.array_equal(hu, volumes["same"])
    assert attrs["spacing_zyx"] == [5.0, 0.8, 0.8] and attrs["source_shape_zyx"] == [3, 12, 12]
    assert "alias_of" not in attrs
    assert shard_studies(moved) == ["finer", "same"]


def test_uneven_slices_are_interpolated_on_their_true_positions() -> None:
    """A missing slice (a 10 mm step among 5 mm ones): a regular grid read on the true positions
    gives the analytic ramp; assuming even spacing would shift every slice after the gap."""
    positions = np.array([0.0, 5.0, 10.0, 20.0, 25.0, 30.0])
    hu = np.broadcast_to((3 * positions).astype(np.int16)[:, None, None], (6, 4, 4)).copy()  # 3 HU per mm
    attrs = {**attrs_for(hu.shape, (5.0, 1.0, 1.0)), "positions_mm": positions.tolist()}
    assert is_irregular(attrs)
    out, new_attrs = resample_volume(hu, attrs, None, 2.5, "linear")
    grid = np.arange(0.0, 30.01, 2.5)
    assert out.shape == (len(grid), 4, 4)
    np.testing.assert_array_equal(out[:, 0, 0], np.rint(3 * grid))
    np.testing.assert_allclose(new_attrs["positions_mm"], grid)
    assert new_attrs["source_shape_zyx"] == [6, 4, 4] and new_attrs["spacing_zyx"][0] == 2.5
    regular, _ = regular_slices(hu, positions, 5.0)
    np.testing.assert_array_equal(regular[:, 0, 0], 3 * np.arange(0.0, 30.01, 5.0))  # 15 HU: the missing one
