"""Shard stores of int16 HU volumes in zarr v3.

One shard store (`ct25d.shards`) per shard, one array per study (Z, Y, X) with geometry in its
attributes; byte-shuffled Blosc compression.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm
from zarr.codecs import BloscCodec, BytesCodec

from ct25d.errors import ConfigError, Ct25dError
from ct25d.shards import ShardWriter, open_study, shard_studies, shard_writer

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPRESSORS = ("lz4", "zstd")


@dataclass(frozen=True)
class HUCodec:
    """How HU volumes are chunked and compressed (config `ingest.chunk_slices/compressor/compression_level`).

    Byte-shuffled Blosc-lz4 is the default: on int16 CT with 256 KiB blocks it encodes at ~3 GB/s on
    one core for a 1.9x ratio, where Blosc-zstd level 1 gives 2.5x at ~0.9 GB/s
    (benchmarks/ingest.py). lz4 keeps ingest faster than dcm2niix run per series writing raw NIfTI;
    zstd trades ~3x the encoding time for ~25% less disk.
    """

    chunk_slices: int = 64
    compressor: str = "lz4"
    level: int = 1

    def chunk_depth(self, n_slices: int) -> int:
        """At most `chunk_slices` slices per chunk, spread evenly: a 34-slice study in chunks of 32
        would compress a last chunk of 2 slices padded to 32."""
        n_chunks = -(-n_slices // self.chunk_slices)
        return -(-n_slices // n_chunks)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> HUCodec:
        for key in ("chunk_slices", "compressor", "compression_level"):
            if key not in settings:
                raise ConfigError(f"missing config key ingest.{key}")
        if settings["compressor"] not in COMPRESSORS:
            raise ConfigError(f"ingest.compressor: {settings['compressor']!r} is not one of {COMPRESSORS}")
        return cls(int(settings["chunk_slices"]), settings["compressor"], int(settings["compression_level"]))


DEFAULT_CODEC = HUCodec()
# Blosc block of half a 512x512 int16 slice: lz4 encodes ~10% faster than with Blosc's automatic
# block size on head CT, for a slightly better ratio (benchmarks/ingest.py codec table).
BLOCK_BYTES = 1 << 18


class HUStoreWriter:
    """Writes studies into an open shard store; create it with `hu_store_writer`."""

    def __init__(self, shard: ShardWriter, codec: HUCodec) -> None:
        self._shard = shard
        self._codec = codec

    def alias(self, study_id: str, source: str | Path, attrs: dict[str, Any]) -> None:
        """A study unchanged from store `source`: its attrs only, the voxels stay there."""
        self._shard.alias(study_id, source, attrs)

    def write(self, study_id: str, hu: np.ndarray, attrs: dict[str, Any]) -> None:
        if hu.dtype != np.int16 or hu.ndim != 3:
            raise ValueError(f"{study_id}: expected (Z, Y, X) int16, got {hu.shape} {hu.dtype}")
        codec = self._codec
        self._shard.write(
            study_id,
            hu,
            attrs,
            chunks=(codec.chunk_depth(hu.shape[0]), hu.shape[1], hu.shape[2]),
            serializer=BytesCodec(),
            compressors=BloscCodec(
                cname=codec.compressor,
                clevel=codec.level,
                shuffle="shuffle",
                typesize=2,
                blocksize=BLOCK_BYTES,
            ),
            fill_value=-1024,
            # Skip zarr's per-chunk comparison with the fill value: an all-air chunk is rare in a head
            # CT and the check cost as much as a tenth of the write.
            config={"write_empty_chunks": True},
        )


@contextlib.contextmanager
def hu_store_writer(
    path: str | Path, provenance: dict[str, Any], codec: HUCodec = DEFAULT_CODEC
) -> Iterator[HUStoreWriter]:
    """Open a new shard store at `path` (atomically replaced on success)."""
    with shard_writer(path, provenance) as shard:
        yield HUStoreWriter(shard, codec)


def read_volume(path: str | Path, study_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(HU volume, attributes) of one study (from the store an unchanged study points to)."""
    array, attrs = open_study(path, study_id)
    return array[...], attrs


def prepared_studies(
    path: str | Path,
    prepare: Callable[[str, np.ndarray, dict[str, Any]], T],
    rejected: list[dict[str, str]],
    desc: str,
    progress: bool = True,
) -> Iterator[tuple[str, T]]:
    """`(study_id, prepare(study_id, hu, attrs))` for each study of a HU store, one in memory at a time.

    A study `prepare` refuses (a `Ct25dError`, e.g. an all-air volume) is logged and appended to
    `rejected` with its reason; it never stops the others.
    """
    for study_id in tqdm(shard_studies(path), desc=f"{desc} {Path(path).name}", disable=not progress):
        hu, attrs = read_volume(path, study_id)
        try:
            result = prepare(study_id, hu, attrs)
        except Ct25dError as exc:
            log.warning("skipping %s: %s", study_id, exc)
            rejected.append({"study_id": study_id, "reason": str(exc)})
            continue
        yield study_id, result
