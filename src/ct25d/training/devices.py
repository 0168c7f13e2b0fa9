"""Give each running GPU job its own device.

Snakemake's `gpu` resource only counts GPUs; it never says which one a job may use
(snakemake#281), so two concurrent trainings would both land on cuda:0. Each job therefore takes an
exclusive `flock` on one lock file per device and holds it for its whole life; the kernel drops the
lock when the process dies, so a killed job can never leak a device. Under SLURM the scheduler has
already restricted CUDA_VISIBLE_DEVICES to the job's devices, so no lock is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ct25d.errors import ConfigError

log = logging.getLogger(__name__)


def default_lock_dir() -> Path:
    """Per-machine, per-user lock folder (override with CT25D_GPU_LOCK_DIR)."""
    env = os.environ.get("CT25D_GPU_LOCK_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"ct25d-gpu-locks-{os.getuid()}"


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def lease_device(
    prefer: str = "auto",
    lock_dir: Path | None = None,
    n_devices: int | None = None,
    timeout_s: float = 24 * 3600,
    poll_s: float = 2.0,
) -> Iterator[str]:
    """Yield a torch device string (`cuda:<i>` or `cpu`) that no other ct25d job holds.

    `prefer="cpu"` skips GPUs. `n_devices` overrides the detected count (tests use it to exercise
    the locking without a GPU). Waits up to `timeout_s` when every device is taken.
    """
    with lease_devices(1, prefer, lock_dir, n_devices, timeout_s, poll_s) as devices:
        yield devices[0]


@contextlib.contextmanager
def lease_devices(
    n: int,
    prefer: str = "auto",
    lock_dir: Path | None = None,
    n_devices: int | None = None,
    timeout_s: float = 24 * 3600,
    poll_s: float = 2.0,
) -> Iterator[list[str]]:
    """Yield `n` devices that no other ct25d job holds (`n` times `cpu` on a machine without GPUs).

    All `n` are taken together or none is held while waiting, so two jobs that each hold part of
    what they need can never wait on each other.
    """
    count = cuda_device_count() if n_devices is None else n_devices
    if prefer == "cpu" or count == 0:
        yield ["cpu"] * n
        return
    if n > count:
        raise ConfigError(f"{n} GPUs asked for, but this machine has {count}")
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("CUDA_VISIBLE_DEVICES") and n_devices is None:
        yield [f"cuda:{i}" for i in range(n)]  # the scheduler's allocation, renumbered from 0
        return
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        held = _try_locks(lock_dir, count, n)
        if held:
            indices = [index for index, _ in held]
            log.info("leased %s (locks in %s)", ", ".join(f"cuda:{i}" for i in indices), lock_dir)
            try:
                yield [f"cuda:{i}" for i in indices]
            finally:
                _release(held)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {n} free GPUs of {count} after {timeout_s:.0f} s (locks in {lock_dir})")
        time.sleep(poll_s)


def _try_locks(lock_dir: Path, count: int, n: int) -> list[tuple[int, IO[str]]]:
    """Lock `n` free devices and return them, or lock none and return []."""
    held: list[tuple[int, IO[str]]] = []
    for index in range(count):
        handle = open(lock_dir / f"gpu{index}.lock", "a+")  # noqa: SIM115 - held for the job's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        held.append((index, handle))
        if len(held) == n:
            return held
    _release(held)
    return []


def _release(held: list[tuple[int, IO[str]]]) -> None:
    for _, handle in held:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
