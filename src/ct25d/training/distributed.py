"""Data-parallel training across the devices of one node (PyTorch DDP, started by `torchrun`).

A run on N devices learns what a single process learns from the same global batch, up to float
rounding, so `stage1.gpus` is a runtime setting and never a reason to retrain:
- each rank takes a contiguous share of every global batch (`RankBatchSampler`), so the batches,
  their order and their augmentation (a function of seed, epoch and row) are the single run's;
- batch norm uses the statistics of the global batch (`sync_batch_norm`);
- the loss is divided by the global loss weight (`Ranks.total`), so DDP's gradient average is the
  gradient of the single process's weighted mean.
Only dropout draws differ: each rank has its own torch RNG stream.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d, convert_sync_batchnorm
from torch import nn

from ct25d.errors import Ct25dError
from ct25d.training.devices import lease_devices

log = logging.getLogger(__name__)

# Rank 0 validates a share and writes checkpoints while the others wait: generous, not NCCL's 10 min.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one training (rank 0 of 1 without DDP)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks `torchrun` set (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))

    @property
    def main(self) -> bool:
        """The rank that writes files."""
        return self.rank == 0

    def device(self) -> str:
        """`cuda:<local rank>` (the launcher made the leased devices visible, in order), else `cpu`."""
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"

    def start(self, device: str) -> None:
        """Join the process group: NCCL between GPUs, gloo between CPU processes."""
        if self.world == 1 or dist.is_initialized():
            return
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
        log.info("rank %d of %d on %s", self.rank, self.world, device)

    def stop(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (no gradient flows through it)."""
        if self.world == 1:
            return values
        values = values.detach().clone()
        dist.all_reduce(values)
        return values

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def share(self, n: int) -> np.ndarray:
        """This rank's contiguous positions among `n` items (shares differ in size by at most one)."""
        return np.array_split(np.arange(n), self.world)[self.rank]


SINGLE = Ranks()


class RankBatchSampler:
    """This rank's contiguous share of each global batch of an `EpochBatchSampler`.

    The shares of one step, concatenated in rank order, are the single process's batch.
    """

    def __init__(self, batches: Any, ranks: Ranks) -> None:
        self.batches, self.ranks = batches, ranks

    def start(self, epoch: int, skip_batches: int = 0) -> None:
        self.batches.start(epoch, skip_batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self.batches:
            yield [batch[i] for i in self.ranks.share(len(batch))]


def _global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, biased variance and count per channel over every rank's batch, with gradients.

    Each rank's (count, mean, M2) are gathered and merged with Chan's formula: one collective per
    layer, and no cancellation as in E[x^2] - E[x]^2.
    """
    # Imported here: only CPU ranks need it, and older torch (a GPU image's) names it otherwise.
    from torch.distributed._functional_collectives import all_gather_single_autograd

    dims = [d for d in range(x.dim()) if d != 1]
    count = torch.full((1, x.shape[1]), x.numel() / x.shape[1], dtype=torch.float32, device=x.device)
    mean = x.float().mean(dims).unsqueeze(0)
    m2 = ((x.float() - mean.view(1, -1, *[1] * (x.dim() - 2))) ** 2).sum(dims).unsqueeze(0)
    stats = all_gather_single_autograd(torch.cat([count, mean, m2]), 0, dist.group.WORLD)
    counts, means, m2s = stats[0::3], stats[1::3], stats[2::3]
    n = counts.sum(0)
    global_mean = (counts * means).sum(0) / n
    var = (m2s + counts * (means - global_mean) ** 2).sum(0) / n
    return global_mean, var, n


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    mean, var, n = _global_moments(x)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
            unbiased = var.detach() * n / (n - 1).clamp_min(1)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    shape = (1, -1, *[1] * (x.dim() - 2))
    y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


def _training_across_ranks(module: nn.Module) -> bool:
    return module.training and dist.is_available() and dist.is_initialized()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d` with global-batch statistics on any device.

    Written here because `torch.nn.SyncBatchNorm` refuses CPU tensors, and the CPU is where the
    multi-process path is tested; on CUDA `sync_batch_norm` uses torch's own.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _training_across_ranks(self):
            return super().forward(x)
        return _global_batch_norm(self, x)


class GlobalBatchNormAct2d(BatchNormAct2d):
    """timm's fused batch norm + activation, with `GlobalBatchNorm2d`'s statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _training_across_ranks(self):
            return super().forward(x)
        return self.act(self.drop(_global_batch_norm(self, x)))


def _to_global(module: nn.Module) -> nn.Module:
    kinds = {nn.BatchNorm2d: GlobalBatchNorm2d, BatchNormAct2d: GlobalBatchNormAct2d}
    kind = kinds.get(type(module))
    if kind is not None:
        module.__class__ = kind  # same parameters, buffers and names: checkpoints load unchanged
        return module
    for name, child in module.named_children():
        setattr(module, name, _to_global(child))
    return module


def sync_batch_norm(model: nn.Module, device: str) -> nn.Module:
    """Batch norm over the global batch: torch's (and timm's) SyncBatchNorm on CUDA, ours on CPU.

    Parameter and buffer names do not change, so the weights load into the plain model.
    """
    if device.startswith("cuda"):
        return convert_sync_batchnorm(model)
    return _to_global(model)


def launch(n: int, prefer: str, argv: Sequence[str]) -> None:
    """Run `ct25d <argv>` as `n` ranks under `torchrun`, on `n` devices leased for the whole run.

    The leased GPUs become the ranks' CUDA_VISIBLE_DEVICES, so rank r uses `cuda:r`; without GPUs
    the ranks are CPU processes talking over gloo (what the tests run).
    """
    with lease_devices(n, prefer) as devices:
        env = dict(os.environ)
        if devices[0] != "cpu":
            visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
            ids = [int(d.split(":")[1]) for d in devices]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if visible else str(i) for i in ids)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   "-m", "ct25d", *argv]  # fmt: skip
        log.info("%d ranks on %s: %s", n, ", ".join(devices), " ".join(command))
        finished = subprocess.run(command, env=env, check=False)
    if finished.returncode:
        raise Ct25dError(f"{n}-rank run failed (exit {finished.returncode}); see the ranks' errors above")
