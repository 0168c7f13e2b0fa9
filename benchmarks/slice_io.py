"""Random single-slice read speed, disk use and file count: our zarr slice store (one shard file per
study, each slice one byte-range read) vs `.npy` and PNG per slice.

Stage 1 reads hundreds of thousands of slices in random order, so per-slice read cost decides
whether the GPU waits. Slices are synthetic windowed head CT (smooth tissue ellipse, skull ring,
scanner-like noise, air outside): random bytes would not compress and would flatter `.npy`.

    .venv/bin/python benchmarks/slice_io.py [--studies 20 --slices 30 --size 256 --levels -1 1 3]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from ct25d.slices import DEFAULT_ZSTD_LEVEL, SliceReader, SliceStoreWriter, apply_windows


def synthetic_hu(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """A head-CT-like int16 HU volume (Z, size, size)."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    hu = np.full((slices, size, size), -1000, dtype=np.float32)
    for z in range(slices):
        shrink = 1 - 0.5 * (z / max(slices - 1, 1) - 0.5) ** 2 + rng.uniform(-0.03, 0.03)
        r = np.sqrt((xx / (0.72 * shrink)) ** 2 + (yy / (0.85 * shrink)) ** 2)
        brain = r < 0.92
        grey_white = 32 + 6 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy + rng.uniform(0, 6))
        hu[z][brain] = grey_white[brain]
        hu[z][(r >= 0.92) & (r < 1.0)] = 900  # skull
        hu[z][(r >= 1.0) & (r < 1.06)] = 20  # scalp
        if rng.random() < 0.3:  # a bleed
            cx, cy = rng.uniform(-0.3, 0.3, 2)
            hu[z][((xx - cx) ** 2 + (yy - cy) ** 2 < 0.01) & brain] = 65
        body = r < 1.06
        hu[z][body] += rng.normal(0, 4, int(body.sum())).astype(np.float32)  # quantum noise, ~4 HU
    return np.rint(hu).astype(np.int16)


def synthetic_study(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """A head-CT-like HU volume, windowed to (Z, 3, size, size) uint8."""
    return apply_windows(synthetic_hu(rng, slices, size))


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def file_count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())


def time_reads(read: Callable[[str, int], np.ndarray], keys: list[tuple[str, int]], repeats: int) -> float:
    """Slices/s over `keys` in random order, best of `repeats` passes after a warming pass."""
    for study_id, z in keys:
        read(study_id, z)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for study_id, z in keys:
            read(study_id, z)
        best = min(best, time.perf_counter() - start)
    return len(keys) / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=30, help="slices per study")
    parser.add_argument("--size", type=int, default=256, help="slice height and width")
    parser.add_argument(
        "--levels", type=int, nargs="+", default=[DEFAULT_ZSTD_LEVEL, 1, 3], help="zstd levels to compare"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):  # one core, as one DataLoader worker has
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = np.random.default_rng(args.seed)
    studies = {f"study{i:03d}": synthetic_study(rng, args.slices, args.size) for i in range(args.studies)}
    keys = [(s, z) for s, v in studies.items() for z in range(v.shape[0])]
    random.Random(args.seed).shuffle(keys)
    n = len(keys)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        npy_dir, png_dir = root / "npy", root / "png"
        npy_dir.mkdir()
        png_dir.mkdir()
        for study_id, volume in studies.items():
            for z, image in enumerate(volume):
                np.save(npy_dir / f"{study_id}_{z:04d}.npy", image)
                Image.fromarray(image.transpose(1, 2, 0)).save(png_dir / f"{study_id}_{z:04d}.png")

        rows: list[tuple[str, float, float, int]] = []
        for level in args.levels:
            path = root / f"zstd{level}.zarr"
            with SliceStoreWriter(path, {"benchmark": "slice_io"}, level=level) as writer:
                for study_id, volume in studies.items():
                    writer.write_study(study_id, volume, {})
            reader = SliceReader(path)
            assert all(np.array_equal(reader.read(s, z), studies[s][z]) for s, z in keys)
            group = zarr.open_group(path, mode="r")
            arrays = {s: group[s] for s in studies}
            size, files = disk_bytes(path) / n, file_count(path)
            fast = time_reads(reader.read, keys, args.repeats)
            rows.append((f"zarr store, fast path (zstd {level})", fast, size, files))
            naive = time_reads(lambda s, z, arrays=arrays: arrays[s][z], keys, 1)
            rows.append((f"zarr store, `array[z]` (zstd {level})", naive, size, files))

        def read_npy(study_id: str, z: int) -> np.ndarray:
            return np.load(npy_dir / f"{study_id}_{z:04d}.npy")

        def read_png(study_id: str, z: int) -> np.ndarray:
            with Image.open(png_dir / f"{study_id}_{z:04d}.png") as image:
                return np.asarray(image).transpose(2, 0, 1)

        for name, read, folder in (("one `.npy` per slice", read_npy, npy_dir),
                                   ("one PNG per slice (Pillow)", read_png, png_dir)):  # fmt: skip
            rows.append(
                (name, time_reads(read, keys, args.repeats), disk_bytes(folder) / n, file_count(folder))
            )

    raw = 3 * args.size * args.size
    png_rate = rows[-1][1]
    print(
        f"{args.studies} studies x {args.slices} slices, 3x{args.size}x{args.size} uint8 "
        f"({raw:,} B raw), random order, one core, warm cache\n"
    )
    print("| layout | slices/s | x PNG | bytes/slice | x raw | files |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, size, files in rows:
        print(
            f"| {name} | {rate:,.0f} | {rate / png_rate:.1f} | {size:,.0f} | {size / raw:.2f} | {files:,} |"
        )


if __name__ == "__main__":
    main()
