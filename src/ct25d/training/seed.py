"""Seeding and RNG snapshots.

Why: a training job killed mid-epoch must resume to bit-identical weights, so every random stream
that touches training (python, numpy, torch CPU/CUDA) is seeded once and captured in checkpoints,
and per-sample randomness is derived from `(seed, epoch, index)` rather than from shared state.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_kernels(enabled: bool = True) -> Iterator[None]:
    """Ask torch for deterministic kernels inside the block (restored after: it is process-wide).

    warn_only: a few CUDA kernels have no deterministic variant and should not stop a run; when
    disabled, cuDNN may autotune (faster, not reproducible).
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


def numerics() -> dict[str, Any]:
    """What decides a run's floating-point results besides its seed and inputs, for its metrics.json.

    On one machine a run is bit-identical when rerun. Across machines it is not unless these match:
    the intra-op thread count splits the reductions of convolutions and matmuls differently (5
    AdamW steps of a ResNet-10t on CPU end with other weights at 1, 2 and 4 threads), and so does
    the vector instruction set torch dispatches to. Snakemake sets OMP_NUM_THREADS to the job's
    threads, so `--cores` below a rule's `threads:` changes it too."""
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, index); equal parts, equal seed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def derived_generator(*parts: int) -> torch.Generator:
    """A CPU torch generator seeded from `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def rng_state(device: str = "cpu") -> dict[str, Any]:
    """Snapshot of every global RNG a job on `device` draws from, for checkpoints.

    Only the job's own CUDA device: reading every device's state (`get_rng_state_all`) would open
    a CUDA context, and take its memory, on the GPUs other jobs hold.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: str = "cpu") -> None:
    """Restore a `rng_state(device)` snapshot."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)
