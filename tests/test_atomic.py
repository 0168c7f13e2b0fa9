"""Atomic outputs: a killed writer's temporaries are removed by the next writer of the target, and
checkpoints and npz files have the same bytes whatever their path and time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ct25d.atomic import atomic_path, write_npz
from ct25d.training.checkpoint import load_checkpoint, save_checkpoint


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temporary_store_is_removed_by_the_rerun(tmp_path: Path) -> None:
    target = tmp_path / "hu" / "shard-0.zarr"
    target.parent.mkdir()
    killed = target.with_name(f".shard-0.tmp-{dead_pid()}.zarr")  # what `kill -9` of ingest_shard leaves
    (killed / "study").mkdir(parents=True)
    running = target.with_name(f".shard-0.tmp-{os.getppid()}.zarr")  # a live process still writing
    running.mkdir()
    other = target.with_name(f".shard-1.tmp-{dead_pid()}.zarr")  # another target's: not ours to judge
    other.mkdir()
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "zarr.json").write_text("{}")
    assert target.is_dir() and not killed.exists()
    assert running.exists() and other.exists()


def test_checkpoints_are_byte_identical_whatever_their_path(tmp_path: Path) -> None:
    payload = {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "epoch": 3,
        "rng": np.random.default_rng(0).bit_generator.state,
    }
    save_checkpoint(tmp_path / "a" / "last.pt", payload)
    save_checkpoint(tmp_path / "b" / "best-so-far.pt", payload)
    assert (tmp_path / "a" / "last.pt").read_bytes() == (tmp_path / "b" / "best-so-far.pt").read_bytes()
    assert torch.equal(load_checkpoint(tmp_path / "a" / "last.pt")["model"]["w"], payload["model"]["w"])
    assert not list(tmp_path.rglob(".*tmp*"))


def test_npz_files_carry_no_timestamp(tmp_path: Path, monkeypatch) -> None:
    arrays = {"positive": np.ones((2, 4), np.float32), "n_positive": np.array([3, 5])}
    write_npz(tmp_path / "a.npz", **arrays)
    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)  # a write on another day
    write_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as loaded:
        np.testing.assert_array_equal(loaded["n_positive"], arrays["n_positive"])
