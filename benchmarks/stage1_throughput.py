"""Stage 1 throughput: training and embedding slices/s, loader starvation, and embedding memory.

Reads a real slice store of synthetic head CT (built here, `slice_io.synthetic_study`) through the
same dataset, loader, model and loss code as `ct25d train-slices` / `ct25d embed`.

- train: slices/s over `--train-steps` steps after `--warmup-steps`, the share of step time spent
  blocked on the next batch (`wait`; high = the loader starves the device) vs computing, the rate
  the loader must reach to keep up (slices per second of compute alone), and on a GPU its mean
  utilisation (NVML, sampled every step). Each run is repeated over `--deterministic on,off`,
  `--augment-on loader,device` and `--compile off,on` as asked.
- embed: slices/s of `extract_embeddings` (process start-up excluded, loader start-up included),
  and the embedding process's RSS before and at its peak during the call (Linux `VmHWM`, reset
  first), for two dataset sizes, each in a fresh process: equal peaks show memory does not grow
  with the dataset (loader workers are separate processes, holding only prefetched batches).

    .venv/bin/python benchmarks/stage1_throughput.py                       # CPU demo, < 2 min
    .venv/bin/python benchmarks/stage1_throughput.py --backbone resnet10t,resnet18 --image-size 96,128 \
        --no-embed                                                             # compare candidates
    python benchmarks/stage1_throughput.py --backbone resnext101_32x8d --image-size 256 \\
        --batch-size 64 --workers 12 --train-steps 40 --embed-sizes 4000 16000        # on a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ct25d.datasets.slice_dataset import Augment, EpochBatchSampler, SliceDataset, multilabel_targets
from ct25d.labels import RSNA_LABELS
from ct25d.slices import SliceStoreWriter
from ct25d.training.checkpoint import save_checkpoint
from ct25d.training.devices import lease_device
from ct25d.training.seed import deterministic_kernels
from ct25d.training.stage1 import Stage1Settings, Task, build_model, make_loader

sys.path.insert(0, str(Path(__file__).parent))
from slice_io import synthetic_study


def build_store(root: Path, n_slices: int, size: int, per_study: int = 32) -> pd.DataFrame:
    """A slice store holding `n_slices` slices and its index (labels random: speed only)."""
    rng = np.random.default_rng(0)
    store, rows = root / f"bench_{n_slices}.zarr", []
    with SliceStoreWriter(store, {"benchmark": True}) as writer:
        for s in range(int(np.ceil(n_slices / per_study))):
            depth = min(per_study, n_slices - s * per_study)
            writer.write_study(f"s{s:05d}", synthetic_study(rng, depth, size), {})
            for z in range(depth):
                labels = dict(zip(RSNA_LABELS, rng.integers(0, 2, 6).tolist(), strict=True))
                rows.append({"dataset": "bench", "role": "train", "study_id": f"s{s:05d}", "z": z,
                             "store": str(store), "fold": s % 5, **labels})  # fmt: skip
    return pd.DataFrame(rows)


def gpu_utilisation(device: str) -> float | None:
    """The GPU's current utilisation (%), None where NVML cannot tell (no GPU, no pynvml)."""
    if not device.startswith("cuda"):
        return None
    try:
        return float(torch.cuda.utilization(torch.device(device)))
    except Exception:  # torch raises whatever pynvml raises when NVML is missing
        return None


def bench_train(
    index: pd.DataFrame, s: Stage1Settings, device: str, steps: int, warmup: int
) -> dict[str, Any]:
    """Slices/s, loader-wait share, the loader rate needed and GPU use of training steps (the same
    step as `train_stage1`, augmentation where `s.augment_on` puts it)."""
    cuda = device.startswith("cuda")
    on_device = s.augment_on == "device" or (s.augment_on == "auto" and cuda)
    task = Task(s, index)
    augment = Augment()
    data = SliceDataset(index, multilabel_targets(index, RSNA_LABELS), s.image_size,
                        None if on_device else augment, s.seed, normalize=not on_device)  # fmt: skip
    sampler = EpochBatchSampler(len(index), s.batch_size, s.seed, num_samples=(steps + warmup) * s.batch_size)
    loader = make_loader(data, s, device, batch_sampler=sampler)
    model = build_model(s, task.num_outputs).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if s.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr)
    model.train()
    wait = compute = 0.0
    busy: list[float] = []
    it = iter(loader)
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        images, targets, rows = next(it)
        images = images.to(device, non_blocking=True)
        if on_device:
            images = data.normalize(augment.batch(images, Augment.draws(s.seed, 0, rows)))
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        t1 = time.perf_counter()
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda and s.amp):
            logits, _ = forward(images)
        loss = task.loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if step >= warmup:
            wait, compute = wait + t1 - t0, compute + t2 - t1
            if (use := gpu_utilisation(device)) is not None:
                busy.append(use)
    slices = steps * s.batch_size
    return {"train_slices_s": slices / (wait + compute), "wait_share": wait / (wait + compute),
            "loader_needed_s": slices / compute, "gpu_use": np.mean(busy) if busy else None}  # fmt: skip


def _rss_mb(field: str) -> float:
    """A `/proc/self/status` memory field (VmRSS: now, VmHWM: peak) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _embed_child(
    index: pd.DataFrame, checkpoint: str, out: str, device: str, s: Stage1Settings, queue: Any
) -> None:
    from ct25d.training.embed import extract_embeddings

    torch.zeros(1, device=device)  # CUDA context before the baseline
    base = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    extract_embeddings(index, checkpoint, out, device, s.tta_flip, s.embed_batch_size, s.num_workers)
    seconds = time.perf_counter() - start
    queue.put({"embed_slices_s": len(index) / seconds, "base_mb": base,
               "peak_mb": _rss_mb("VmHWM")})  # fmt: skip


def bench_embed(index: pd.DataFrame, s: Stage1Settings, device: str, root: Path) -> dict[str, Any]:
    """Embedding slices/s and peak RSS of a fresh process embedding `index`."""
    checkpoint = root / "bench.pt"
    if not checkpoint.exists():
        model = build_model(s, len(RSNA_LABELS))
        payload = {"model": model.state_dict(), "settings": s.to_dict()}
        save_checkpoint(checkpoint, {**payload, "num_classes": 6, "class_names": list(RSNA_LABELS)})
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    out = root / f"emb_{len(index)}"
    proc = ctx.Process(target=_embed_child, args=(index, str(checkpoint), str(out), device, s, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet10t", help="comma-separated timm names")
    parser.add_argument("--image-size", default="128", help="comma-separated sizes")
    parser.add_argument(
        "--store-size", type=int, default=256, help="slice size in the store (resized on read)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--embed-sizes", type=int, nargs=2, default=[300, 1200], help="two dataset sizes")
    parser.add_argument("--tta", action="store_true", help="flip TTA while embedding (halves the speed)")
    parser.add_argument("--no-embed", action="store_true")
    parser.add_argument("--device", default="auto", help="auto | cpu")
    parser.add_argument("--deterministic", default="on", help="on,off: stage1.deterministic")
    parser.add_argument("--augment-on", default="auto", help="comma-separated: auto, loader, device")
    parser.add_argument("--compile", default="off", help="off,on: torch.compile the training step")
    args = parser.parse_args()

    combos = list(product(args.backbone.split(","), [int(v) for v in args.image_size.split(",")],
                          args.deterministic.split(","), args.augment_on.split(","),
                          args.compile.split(",")))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, lease_device(prefer=args.device) as device:
        root = Path(tmp)
        largest = max(args.embed_sizes) if not args.no_embed else 0
        train_n = max(largest, (args.train_steps + args.warmup_steps) * args.batch_size)
        t0 = time.perf_counter()
        index = build_store(root, train_n, args.store_size)
        print(f"built a {len(index)}-slice store at {args.store_size} px in {time.perf_counter() - t0:.1f} s")
        print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
              f"workers {args.workers}\n")  # fmt: skip
        print("| backbone | px | deterministic | augment on | compile | train slices/s | loader wait "
              "| loader must reach (slices/s) | GPU use | embed slices/s | embed rows | RSS before MB "
              "| peak RSS MB |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n, (backbone, size, det, aug, comp) in enumerate(combos):
            s = Stage1Settings(
                backbone=backbone, image_size=size, batch_size=args.batch_size, num_workers=args.workers,
                tta_flip=args.tta, embed_batch_size=2 * args.batch_size, augment_on=aug,
                compile=comp == "on", deterministic=det == "on",
            )  # fmt: skip
            with deterministic_kernels(s.deterministic):
                t = bench_train(index, s, device, args.train_steps, args.warmup_steps)
            use = "n/a" if t["gpu_use"] is None else f"{t['gpu_use']:.0f} %"
            head = (f"| {backbone} | {size} | {det} | {aug} | {comp} | {t['train_slices_s']:.1f} "
                    f"| {100 * t['wait_share']:.0f} % | {t['loader_needed_s']:.0f} | {use} |")  # fmt: skip
            if args.no_embed or n:
                print(f"{head} | | | | |", flush=True)
                continue
            for rows in sorted(args.embed_sizes):
                e = bench_embed(index.iloc[:rows], s, device, root)
                mem = f"{e['base_mb']:.0f} | {e['peak_mb']:.0f}"
                print(f"{head} {e['embed_slices_s']:.1f} | {rows} | {mem} |", flush=True)


if __name__ == "__main__":
    main()
