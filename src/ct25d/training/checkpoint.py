"""Atomic, byte-reproducible checkpoint files.

Why atomic: a job killed while writing `last.pt` must leave the previous `last.pt` intact, or the
restart would find a truncated file and lose the run. Why through memory: `torch.save` to a path
names the zip archive's folder after the file, so the temporary name (with its process id) ended
up inside the bytes and no two runs wrote the same file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ct25d.atomic import atomic_path
from ct25d.errors import ConfigError


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """`torch.save` into memory (a fixed archive name), then write a temporary sibling and rename it."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (our own files: full unpickling is allowed,
    because they carry numpy RNG states and settings dicts)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def unwrap_state_dict(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint payload, or the payload itself if it is a bare state dict."""
    return payload.get("model", payload)


def stage1_payload(checkpoint: str | os.PathLike[str] | None, backbone: str, who: str) -> dict[str, Any]:
    """A fold's Stage-1 `best.pt` for a model (`who`: its config name) that starts from it; it must
    hold the same backbone."""
    if not checkpoint:
        raise ConfigError(f"{who} init 'stage1' needs the fold's Stage-1 best.pt")
    payload = load_checkpoint(checkpoint)
    if payload["settings"]["backbone"] != backbone:
        held = payload["settings"]["backbone"]
        raise ConfigError(f"{who} backbone {backbone!r} but {checkpoint} holds {held!r}")
    return payload
