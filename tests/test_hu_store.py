"""HU shard store settings: chunk depths spread evenly, a bad codec setting names its key, and a
store written with either compressor reads back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from ct25d.errors import ConfigError
from ct25d.volumes.store import HUCodec, hu_store_writer, read_volume


@pytest.mark.parametrize(
    ("n_slices", "limit", "depth"), [(34, 32, 17), (32, 32, 32), (31, 64, 31), (250, 64, 63), (1, 8, 1)]
)
def test_chunk_depth_is_at_most_the_limit_and_wastes_little(n_slices: int, limit: int, depth: int) -> None:
    got = HUCodec(chunk_slices=limit).chunk_depth(n_slices)
    assert got == depth
    n_chunks = -(-n_slices // got)
    assert got <= limit and n_chunks * got - n_slices < n_chunks  # padding under one slice per chunk


def test_bad_compressor_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.compressor"):
        HUCodec.from_settings({"chunk_slices": 8, "compressor": "gzip", "compression_level": 1})
    with pytest.raises(ConfigError, match=r"ingest\.chunk_slices"):
        HUCodec.from_settings({"compressor": "lz4", "compression_level": 1})


@pytest.mark.parametrize("compressor", ["lz4", "zstd"])
def test_round_trip(compressor: str, tmp_path: Path) -> None:
    hu = np.random.default_rng(0).integers(-1024, 3000, size=(34, 16, 16)).astype(np.int16)
    codec = HUCodec(chunk_slices=32, compressor=compressor, level=1)
    with hu_store_writer(tmp_path / "s.zarr", {"stage": "test"}, codec) as writer:
        writer.write("st-a", hu, {"spacing_zyx": [5.0, 1.0, 1.0]})
    back, attrs = read_volume(tmp_path / "s.zarr", "st-a")
    np.testing.assert_array_equal(back, hu)
    assert attrs["spacing_zyx"] == [5.0, 1.0, 1.0]
    array = zarr.open_array(tmp_path / "s.zarr" / "st-a", mode="r")
    assert array.chunks == (17, 16, 16)
    assert array.metadata.codecs[1].cname.value == compressor
