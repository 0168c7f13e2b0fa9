"""The learning-rate schedule every trainer shares: a linear warm-up, then a cosine decay to zero.

Why one function: Stage 1, Stage 2 and the baselines must be trained with the same recipe, or the
comparison measures the schedule instead of the architecture.
"""

from __future__ import annotations

import math

import torch

from ct25d.errors import ConfigError

SCHEDULERS = ("cosine", "constant")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: `warmup_fraction` of `total_steps` rising linearly to the optimizer's LR,
    then a half cosine down to 0 at `total_steps`."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float, section: str
) -> torch.optim.lr_scheduler.LRScheduler:
    """`cosine` (warm-up + cosine) or `constant` (the optimizer's LR throughout)."""
    if name == "cosine":
        return warmup_cosine(optimizer, total_steps, warmup_fraction)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"{section}.scheduler: expected one of {list(SCHEDULERS)}, got {name!r}")
