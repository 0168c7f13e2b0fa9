"""Atomic outputs: write beside the target, then rename, so a killed job never leaves a
half-written artifact under the final name (Snakemake would otherwise take it as complete)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path (file or directory); rename it onto `target` on success.

    The temporary name keeps the target's suffix so writers that dispatch on it (zarr, parquet)
    behave the same. On error the temporary is removed and the target is left untouched. A killed
    process cannot clean up, so the temporaries it left for the same target are removed here, by
    the job that writes the target again.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    remove_leftovers(target)
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        _remove(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Remove the temporaries that dead processes left for `target` (and ours); return them.

    A temporary whose process still runs on this machine is left alone: someone is writing it.
    """
    pattern = re.compile(rf"\.{re.escape(target.stem)}\.tmp-(\d+){re.escape(target.suffix)}")
    removed = []
    for sibling in target.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and (int(match.group(1)) == os.getpid() or not _alive(int(match.group(1)))):
            _remove(sibling)
            removed.append(sibling)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as stable, sorted JSON atomically (sorted keys keep reruns byte-identical)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike[str], frame: Any, metadata: dict[str, Any] | None = None) -> None:
    """Write a pandas frame to parquet atomically, with provenance in the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged[b"ct25d"] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_csv(path: str | os.PathLike[str], frame: Any) -> None:
    """Write a pandas frame to CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """`np.savez` atomically and byte-reproducibly: numpy stamps each member with the current time,
    so two runs never wrote the same file; here every member has the zip format's fixed epoch."""
    import zipfile

    import numpy as np

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
