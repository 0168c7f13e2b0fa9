"""The slice store: one zarr v3 group per shard, one `(Z, 3, H, W)` uint8 array per study.

Chunks hold one slice each (`(1, 3, H, W)`, zstd), because training reads single slices in random
order, and each study's chunks live in one zarr shard file (`sharding_indexed`): a study is two
files (its `zarr.json` and its shard), not one per slice (RSNA: ~25k studies, not ~750k slices).
zarr-python's per-call asyncio overhead makes `array[z]` about as slow as PNG decoding, so
`SliceReader.read` reads the shard's chunk index once per study and then each slice by one
byte-range read, decoding it with zstd itself — but only after checking the array's `zarr.json`
describes exactly the layout it knows; anything else goes through zarr. Stores written before
sharding (one file per slice) are read the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from ct25d.shards import ShardWriter, check_study_id, shard_writer

# zstd level -1: on windowed head CT (benchmarks/slice_io.py) it decodes ~1.9x faster than level 3
# for 0.43 of the raw bytes (level 1: 0.29 of raw, 1.3x faster than 3; level 3 is not smaller).
DEFAULT_ZSTD_LEVEL = -1
CHANNELS = 3
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class SliceStoreWriter:
    """Write one shard's store; it appears under `path` only when the `with` block succeeds.

    One process owns a shard while writing (zarr does not guard against concurrent writers).
    """

    def __init__(
        self, path: str | os.PathLike[str], provenance: dict[str, Any], level: int = DEFAULT_ZSTD_LEVEL
    ) -> None:
        self.path = Path(path)
        self.provenance = provenance
        self.level = level
        self._context: contextlib.AbstractContextManager[ShardWriter] | None = None
        self._shard: ShardWriter | None = None

    def __enter__(self) -> SliceStoreWriter:
        self._context = shard_writer(self.path, self.provenance)
        self._shard = self._context.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        context, self._context, self._shard = self._context, None, None
        assert context is not None
        return context.__exit__(exc_type, exc, tb)

    def write_study(self, study_id: str, slices: np.ndarray, attrs: dict[str, Any]) -> None:
        """Store a study's windowed slices `(Z, 3, H, W)` uint8 with its attrs (spacing, ...)."""
        if self._shard is None:
            raise RuntimeError("SliceStoreWriter.write_study called outside its `with` block")
        if slices.ndim != 4 or slices.shape[1] != CHANNELS or slices.dtype != np.uint8:
            raise ValueError(
                f"study {study_id}: expected (Z, {CHANNELS}, H, W) uint8 slices, "
                f"got {slices.shape} {slices.dtype}"
            )
        self._shard.write(
            study_id,
            slices,
            attrs,
            chunks=(1, *slices.shape[1:]),
            shards=slices.shape,
            compressors=ZstdCodec(level=self.level),
            fill_value=0,
        )


def _zstd_content_size(frame: bytes) -> int | None:
    """Decompressed size recorded in a zstd frame header (RFC 8878, 3.1.1.1), None if absent.

    numcodecs only rejects a too-small output buffer, so `read` checks the size itself rather than
    return a slice whose tail was never written.
    """
    if len(frame) < 6 or frame[:4] != _ZSTD_MAGIC:
        return None
    descriptor = frame[4]
    single_segment = (descriptor >> 5) & 1
    start = 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3]
    size = (single_segment, 2, 4, 8)[descriptor >> 6]
    if size == 0:
        return None
    value = int.from_bytes(frame[start : start + size], "little")
    return value + 256 if size == 2 else value


@dataclass(frozen=True)
class _FastLayout:
    """What the fast path needs from an array's `zarr.json`, once it is known to be supported."""

    shape: tuple[int, int, int, int]
    fill_value: int
    key_prefix: str  # directory + chunk key up to the slice index (the shard's key when sharded)
    key_suffix: str  # chunk key after the slice index
    sharded: bool  # one shard file holds every slice, located by the index at its end


# The one shard layout `read` decodes: inner chunks of one slice, bytes + zstd, and the index (offset,
# nbytes per slice, uint64 little-endian) at the end of the file followed by its crc32c.
_SHARD_INDEX = ([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}], "end")
_EMPTY_CHUNK = 2**64 - 1


def _fast_layout(array_dir: Path, meta: dict[str, Any]) -> _FastLayout | None:
    """The layout if `meta` is exactly what `read` can decode (uint8, one slice per chunk,
    `bytes` + `zstd`, either one file per slice or one shard per study, no transformers), else None
    so the caller uses zarr instead."""
    shape = tuple(meta.get("shape", ()))
    grid = tuple(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", ()))
    codecs = meta.get("codecs", [])
    sharded = [c.get("name") for c in codecs] == ["sharding_indexed"]
    if sharded:
        config = codecs[0].get("configuration", {})
        index = (config.get("index_codecs"), config.get("index_location", "end"))
        if grid != shape or index != _SHARD_INDEX:
            return None
        grid, codecs = tuple(config.get("chunk_shape", ())), config.get("codecs", [])
    keys = meta.get("chunk_key_encoding", {})
    separator = keys.get("configuration", {}).get("separator", "/" if keys.get("name") == "default" else ".")
    if not (
        meta.get("zarr_format") == 3
        and meta.get("node_type") == "array"
        and meta.get("data_type") == "uint8"
        and len(shape) == 4
        and meta.get("chunk_grid", {}).get("name") == "regular"
        and grid == (1, *shape[1:])
        and [c.get("name") for c in codecs] == ["bytes", "zstd"]
        and not meta.get("storage_transformers")
        and keys.get("name") in ("default", "v2")
        and separator in ("/", ".")
        and isinstance(meta.get("fill_value"), int)
    ):
        return None
    head = "c" + separator if keys["name"] == "default" else ""
    return _FastLayout(
        shape=shape,  # type: ignore[arg-type]
        fill_value=meta["fill_value"],
        key_prefix=f"{array_dir}{os.sep}{head}",
        key_suffix=f"{separator}0" * 3,
        sharded=sharded,
    )


class SliceReader:
    """Random-access reads from a slice store, safe to pickle into DataLoader workers.

    Nothing is opened until first use and all cached state is dropped on pickling and after a fork,
    so each worker process builds its own.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"no slice store at {self.path}")
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._layouts: dict[str, _FastLayout | None] = {}
        self._indexes: dict[str, np.ndarray] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._group: zarr.Group | None = None
        self._zstd = numcodecs.Zstd()
        self._crc = numcodecs.CRC32C(location="end")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._reset()

    def _fresh(self) -> None:
        if self._pid != os.getpid():
            self._reset()

    def _zarr_group(self) -> zarr.Group:
        self._fresh()
        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r", zarr_format=3)
        return self._group

    def _array(self, study_id: str) -> zarr.Array:
        check_study_id(study_id)
        group = self._zarr_group()
        if study_id not in self._arrays:
            self._arrays[study_id] = group[study_id]
        return self._arrays[study_id]

    def _layout(self, study_id: str) -> _FastLayout | None:
        self._fresh()
        if study_id not in self._layouts:
            check_study_id(study_id)
            array_dir = self.path / study_id
            try:
                meta = json.loads((array_dir / "zarr.json").read_bytes())
            except FileNotFoundError:
                raise KeyError(f"study {study_id!r} not in slice store {self.path}") from None
            layout = _fast_layout(array_dir, meta)
            if layout is None:
                warnings.warn(
                    f"{array_dir}: array layout not supported by the fast path; reading via zarr",
                    stacklevel=3,
                )
            self._layouts[study_id] = layout
        return self._layouts[study_id]

    def studies(self) -> list[str]:
        """Study ids in the store, sorted."""
        return list(self._zarr_group().attrs["studies"])

    @property
    def provenance(self) -> dict[str, Any]:
        """The provenance stamp the writer stored on the group."""
        return dict(self._zarr_group().attrs["provenance"])

    def attrs(self, study_id: str) -> dict[str, Any]:
        """The attrs stored with a study (spacing, ...)."""
        return dict(self._array(study_id).attrs)

    def shape(self, study_id: str) -> tuple[int, ...]:
        """`(Z, 3, H, W)` of a study, from its metadata."""
        layout = self._layout(study_id)
        return layout.shape if layout is not None else self._array(study_id).shape

    def read(self, study_id: str, z: int) -> np.ndarray:
        """Slice `z` of a study as a writable `(3, H, W)` uint8 array (the training hot path)."""
        layout = self._layout(study_id)
        depth = layout.shape[0] if layout is not None else self._array(study_id).shape[0]
        if not 0 <= z < depth:
            raise IndexError(f"slice {z} out of range for study {study_id!r} with {depth} slices")
        if layout is None:
            return np.array(self._array(study_id)[z])
        out = np.empty(layout.shape[1:], dtype=np.uint8)
        if layout.sharded:
            chunk = f"{layout.key_prefix}0{layout.key_suffix}"
            offset, nbytes = self._shard_index(study_id, chunk, depth)[z]
            if offset == _EMPTY_CHUNK:  # zarr does not write chunks that are all fill value
                out.fill(layout.fill_value)
                return out
            with open(chunk, "rb") as f:
                f.seek(int(offset))
                raw = f.read(int(nbytes))
        else:
            chunk = f"{layout.key_prefix}{z}{layout.key_suffix}"
            try:
                with open(chunk, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:  # zarr does not write chunks that are all fill value
                out.fill(layout.fill_value)
                return out
        if _zstd_content_size(raw) != out.nbytes:
            raise ValueError(f"{chunk}: not a zstd frame of {out.nbytes} bytes; the store is corrupt")
        self._zstd.decode(raw, out=out)
        return out

    def _shard_index(self, study_id: str, path: str, depth: int) -> np.ndarray:
        """`(Z, 2)` (offset, nbytes) of each slice in a study's shard, read once and checksummed."""
        index = self._indexes.get(study_id)
        if index is None:
            size = depth * 16 + 4
            try:
                with open(path, "rb") as f:
                    f.seek(-size, os.SEEK_END)
                    raw = f.read(size)
                index = np.frombuffer(self._crc.decode(raw), dtype="<u8").reshape(depth, 2)
            except FileNotFoundError:  # every slice is fill value: zarr wrote no shard
                index = np.full((depth, 2), _EMPTY_CHUNK, dtype="<u8")
            except RuntimeError as exc:  # numcodecs: checksum mismatch
                raise ValueError(f"{path}: shard index fails its checksum; the store is corrupt") from exc
            self._indexes[study_id] = index
        return index

    def read_study(self, study_id: str) -> np.ndarray:
        """All slices of a study `(Z, 3, H, W)`, through zarr (whole-volume reads amortise its overhead)."""
        return np.asarray(self._array(study_id)[...])
