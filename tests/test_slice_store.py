"""Slice store: exact round trips, the fast read path against zarr, atomic writes, worker safety."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from ct25d.slices import SliceReader, SliceStoreWriter

PROVENANCE = {"stage": "slices", "settings_key": "abc123"}


def make_studies() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    studies = {
        "1.2.840.1": rng.integers(0, 256, (5, 3, 16, 12), dtype=np.uint8),
        "ID_b": rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8),
        "ID_c": np.zeros((4, 3, 8, 8), dtype=np.uint8),
    }
    studies["ID_b"][1] = 0  # an all-fill slice amid data: its chunk is never written
    return studies


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    studies = make_studies()
    path = tmp_path / "shard0.zarr"
    with SliceStoreWriter(path, PROVENANCE) as writer:
        for study_id, slices in studies.items():
            writer.write_study(study_id, slices, {"spacing": np.array([5.0, 0.5, 0.5]), "n": np.int64(3)})
    return path, studies


def test_round_trip_exact(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, studies = store
    reader = SliceReader(path)
    assert reader.studies() == sorted(studies)
    assert reader.provenance == PROVENANCE
    for study_id, slices in studies.items():
        assert reader.attrs(study_id) == {"spacing": [5.0, 0.5, 0.5], "n": 3}
        assert reader.shape(study_id) == slices.shape
        assert np.array_equal(reader.read_study(study_id), slices)
        for z in range(slices.shape[0]):
            assert np.array_equal(reader.read(study_id, z), slices[z])


def test_layout_on_disk(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, studies = store
    meta = json.loads((path / "ID_b" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 3, 8, 8]  # one shard per study
    (sharding,) = meta["codecs"]
    assert sharding["configuration"]["chunk_shape"] == [1, 3, 8, 8]  # of one slice each
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "zstd"]
    # files: the group's zarr.json, then per study its zarr.json and one shard (none if all zero)
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert len(files) == 1 + 2 * len(studies) - 1
    assert not (path / "ID_c" / "c").exists()  # all-zero study: no shard, the fast path fills it


def test_fast_path_equals_zarr(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, studies = store
    reader = SliceReader(path)
    group = zarr.open_group(path, mode="r")
    for study_id, slices in studies.items():
        for z in range(slices.shape[0]):
            fast = reader.read(study_id, z)
            assert fast.flags.writeable and fast.dtype == np.uint8
            assert np.array_equal(fast, group[study_id][z])


def test_read_errors(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = store
    reader = SliceReader(path)
    with pytest.raises(IndexError):
        reader.read("ID_b", 3)
    with pytest.raises(IndexError):
        reader.read("ID_b", -1)
    with pytest.raises(KeyError):
        reader.read("nope", 0)
    with pytest.raises(ValueError, match="invalid study id"):
        reader.read("../shard0.zarr", 0)


def test_corrupt_shard_is_an_error(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    import numcodecs

    path, _ = store
    shard = path / "ID_b" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF  # the index no longer matches its checksum
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        SliceReader(path).read("ID_b", 0)
    # a chunk that decodes to too few bytes, with a valid index pointing at it
    frame = numcodecs.Zstd().encode(np.zeros(10, np.uint8))
    index = np.array([[0, len(frame)], [2**64 - 1] * 2, [0, len(frame)]], dtype="<u8").tobytes()
    shard.write_bytes(bytes(frame) + bytes(numcodecs.CRC32C(location="end").encode(index)))
    with pytest.raises(ValueError, match="corrupt"):
        SliceReader(path).read("ID_b", 2)


def test_stores_written_one_file_per_slice_still_take_the_fast_path(tmp_path: Path) -> None:
    path = tmp_path / "old.zarr"
    data = np.random.default_rng(1).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    data[2] = 0
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array(name="s", shape=data.shape, dtype=np.uint8, chunks=(1, 3, 8, 8),
                       compressors=zarr.codecs.ZstdCodec(level=-1), fill_value=0)  # fmt: skip
    group["s"][...] = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to zarr
        assert all(np.array_equal(SliceReader(path).read("s", z), data[z]) for z in range(4))


def test_unsupported_codecs_fall_back_to_zarr(tmp_path: Path) -> None:
    path = tmp_path / "other.zarr"
    data = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array(
        name="s",
        shape=data.shape,
        dtype=np.uint8,
        chunks=(1, 3, 4, 4),
        compressors=zarr.codecs.BloscCodec(),
    )
    group["s"][...] = data
    reader = SliceReader(path)
    with pytest.warns(UserWarning, match="fast path"):
        assert np.array_equal(reader.read("s", 1), data[1])


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shard1.zarr"
    with pytest.raises(RuntimeError, match="boom"), SliceStoreWriter(path, PROVENANCE) as writer:
        writer.write_study("a", np.ones((2, 3, 4, 4), np.uint8), {})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_store(tmp_path: Path) -> None:
    path = tmp_path / "shard.zarr"
    for value in (1, 2):
        with SliceStoreWriter(path, PROVENANCE) as writer:
            writer.write_study(f"s{value}", np.full((1, 3, 4, 4), value, np.uint8), {})
    assert SliceReader(path).studies() == ["s2"]
    assert [p.name for p in tmp_path.iterdir()] == ["shard.zarr"]


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with SliceStoreWriter(tmp_path / "s.zarr", PROVENANCE) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write_study("a", np.zeros((2, 3, 4, 4), np.int16), {})
        with pytest.raises(ValueError, match="uint8"):
            writer.write_study("a", np.zeros((2, 1, 4, 4), np.uint8), {})
        with pytest.raises(ValueError, match="invalid study id"):
            writer.write_study("a/b", np.zeros((2, 3, 4, 4), np.uint8), {})
        writer.write_study("a", np.zeros((2, 3, 4, 4), np.uint8), {})
        with pytest.raises(ValueError, match="already written"):
            writer.write_study("a", np.zeros((2, 3, 4, 4), np.uint8), {})


def _read_in_child(reader: SliceReader) -> list[np.ndarray]:
    return [reader.read("ID_b", z) for z in range(3)] + [reader.read_study("1.2.840.1")]


def test_pickle_and_fork(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, studies = store
    reader = SliceReader(path)
    reader.read("ID_b", 0)  # warm the parent's caches and zarr handles before forking
    reader.read_study("ID_b")
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone.read("1.2.840.1", 4), studies["1.2.840.1"][4])
    expected = [*studies["ID_b"], studies["1.2.840.1"]]
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            for got in pool.map(_read_in_child, [reader, reader]):
                assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_fresh_subprocess(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, studies = store
    code = (
        "import pickle, sys; r = pickle.loads(sys.stdin.buffer.read()); "
        "sys.stdout.buffer.write(r.read('1.2.840.1', 2).tobytes())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(SliceReader(path)), capture_output=True, check=True
    )
    assert out.stdout == studies["1.2.840.1"][2].tobytes()


def test_studies_ignore_foreign_files(store: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """Snakemake drops `.snakemake_timestamp` into directory outputs; it is not a study."""
    path, studies = store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    (copy / ".snakemake_timestamp").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SliceReader(copy).studies() == sorted(studies)
