"""3D baseline throughput: training and inference volumes/s and memory, per family.

Each family runs in a fresh process on random volumes of the configured shape through the same
registry, loss and optimiser as `ct25d train-baseline`: `train` is volumes/s over `--steps` steps of
forward + backward + AdamW after one warm-up step, `infer` volumes/s in eval mode without gradients.
Memory: the trainer's own pre-flight estimate (`estimate_training_mb`, what `baselines.mem_mb` is
checked against) beside the measured peak: CUDA's `max_memory_allocated` on a GPU, the process's
peak RSS growth over the run on CPU (Linux `VmHWM`, reset after the model is built).

    .venv/bin/python benchmarks/volume_throughput.py                          # CPU demo shape, ~2 min
    python benchmarks/volume_throughput.py --depth 64 --size 256 --batch-size 4 --steps 10 \\
        --families resnet10,resnet50,densenet121,unet_dual,acs,acs_2.5d,acs_i3d       # on a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from stage1_throughput import _rss_mb

from ct25d.models.baselines import BASELINES
from ct25d.training.baseline import BaselineSettings, StudyLoss, estimate_training_mb
from ct25d.training.devices import lease_device

FAMILIES = {
    "resnet10": {"name": "resnet10", "conv1_t_stride": 2},
    "resnet18": {"name": "resnet18", "conv1_t_stride": 2},
    "resnet50": {"name": "resnet50", "conv1_t_stride": 2},
    "densenet121": {"name": "densenet121"},
    "unet_dual": {"name": "unet_dual"},
    "acs": {"name": "acs", "backbone": "resnet10t", "mode": "acs"},
    "acs_2.5d": {"name": "acs", "backbone": "resnet10t", "mode": "2.5d"},
    "acs_i3d": {"name": "acs", "backbone": "resnet10t", "mode": "i3d"},
}


def _child(family: str, shape: tuple[int, ...], batch: int, steps: int, device: str, queue: Any) -> None:
    torch.manual_seed(0)
    config = FAMILIES[family]
    model = BASELINES.from_config(config, in_channels=shape[0], num_classes=6).to(device)
    estimate = estimate_training_mb(model, shape, batch, 2 if device.startswith("cuda") else 4)
    loss_fn = StudyLoss(BaselineSettings())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 2, (batch, 6), device=device).float()
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda)
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_mb("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step() -> None:
        with autocast:
            out = model(x)
            logits, seg = out if isinstance(out, tuple) else (out, None)
        loss = loss_fn(logits, y)
        if seg is not None:
            loss = loss + seg.float().mean() * 0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train = batch * steps / (time.perf_counter() - started)
    model.eval()
    with torch.no_grad(), autocast:
        model(x)
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    infer = batch * steps / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb("VmHWM") - base
    queue.put({"family": family, "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
               "train vol/s": round(train, 2), "infer vol/s": round(infer, 2),
               "estimated MB": round(estimate), "peak MB": round(peak)})  # fmt: skip


def _result(family: str, proc: Any, queue: Any) -> dict[str, Any]:
    """The child's row, or an error row if it died without one (its traceback is printed above)."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            if not proc.is_alive():
                return {"family": family, "error": f"exit status {proc.exitcode}"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    shape = (args.channels, args.depth, args.size, args.size)
    rows = []
    with lease_device(prefer=args.device) as device:
        context = mp.get_context("spawn")
        for family in args.families.split(","):
            queue = context.Queue()
            proc = context.Process(
                target=_child, args=(family, shape, args.batch_size, args.steps, device, queue)
            )
            proc.start()
            rows.append(_result(family, proc, queue))
            proc.join()
    print(f"\nvolumes {shape}, batch {args.batch_size}, {args.steps} steps, device {device}, "
          f"{torch.get_num_threads()} CPU threads\n")  # fmt: skip
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
