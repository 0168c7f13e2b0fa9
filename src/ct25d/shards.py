"""Shard stores: one zarr v3 group per shard and one array per study, written by one process under
a temporary name and renamed into place when complete, with the provenance and the list of studies
in the group's attributes. The HU stores and the slice stores are both such groups.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ct25d.atomic import atomic_path


def check_study_id(study_id: str) -> None:
    """Study ids become directory names: refuse anything zarr or the file system would mangle."""
    if (
        not isinstance(study_id, str)
        or not study_id
        or "/" in study_id
        or "\\" in study_id
        or study_id.startswith("__")
        or set(study_id) == {"."}
    ):
        raise ValueError(f"invalid study id {study_id!r}: must be a non-empty name without '/'")


def jsonable(obj: Any) -> Any:
    """Round-trip through JSON so numpy scalars/arrays in attrs are stored as plain numbers/lists."""

    def default(value: Any) -> Any:
        if isinstance(value, np.generic | np.ndarray):
            return value.tolist()
        raise TypeError(f"attribute value {value!r} is not JSON-serialisable")

    return json.loads(json.dumps(obj, default=default))


class ShardWriter:
    """An open shard group; create it with `shard_writer`."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = path
        self.studies: list[str] = []

    def write(self, study_id: str, data: np.ndarray, attrs: dict[str, Any], **array: Any) -> None:
        """Store one study's array; `array` holds zarr's chunking and codec arguments."""
        check_study_id(study_id)
        if study_id in self.studies:
            raise ValueError(f"study {study_id}: already written to {self.path}")
        stored = self._group.create_array(
            name=study_id,
            shape=data.shape,
            dtype=data.dtype,
            attributes=jsonable(attrs),
            **array,
        )
        stored[...] = data
        self.studies.append(study_id)

    def alias(self, study_id: str, source: str | os.PathLike[str], attrs: dict[str, Any]) -> None:
        """Record a study whose array is `source`'s, unchanged, with its own attrs: a node with no
        data that `open_study` follows (a path relative to this store, so moving the results folder
        as a whole keeps it valid)."""
        check_study_id(study_id)
        if study_id in self.studies:
            raise ValueError(f"study {study_id}: already written to {self.path}")
        target = os.path.relpath(Path(source) / study_id, self.path.parent / self.path.name / study_id)
        self._group.create_group(study_id, attributes=jsonable({**attrs, ALIAS_KEY: target}))
        self.studies.append(study_id)


ALIAS_KEY = "alias_of"


def open_study(path: str | os.PathLike[str], study_id: str) -> tuple[zarr.Array, dict[str, Any]]:
    """A study's array and attrs, following an alias (`ShardWriter.alias`) to the store that holds it."""
    check_study_id(study_id)
    node = zarr.open(Path(path) / study_id, mode="r")
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Array):
        return node, attrs
    target = os.path.normpath(Path(path) / study_id / attrs.pop(ALIAS_KEY))
    return zarr.open_array(target, mode="r"), attrs


@contextlib.contextmanager
def shard_writer(path: str | os.PathLike[str], provenance: dict[str, Any]) -> Iterator[ShardWriter]:
    """Open a new shard store at `path`; it replaces `path` only when the `with` block succeeds.

    One process owns a shard while writing (zarr does not guard against concurrent writers).
    """
    # Compact metadata: with an indent, json.dumps falls back to its pure-Python encoder, which cost
    # ~10% of writing a HU shard.
    with atomic_path(path) as tmp, zarr.config.set({"json_indent": None}):
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        writer = ShardWriter(group, Path(path))
        yield writer
        # The study list lives in the attributes: listing the folder would also meet files that are
        # not zarr nodes (Snakemake's `.snakemake_timestamp` in directory outputs).
        group.attrs.update({"provenance": jsonable(provenance), "studies": sorted(writer.studies)})


def shard_studies(path: str | os.PathLike[str]) -> list[str]:
    """Study ids held by a shard store, sorted."""
    return list(zarr.open_group(path, mode="r").attrs["studies"])
