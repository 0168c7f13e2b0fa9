"""Per-study prediction time from a DICOM folder to `studies.csv` with `ct25d predict-bundle` (issue 22
part 4): the whole command in a fresh process (scan, HU, resampling, slices, every fold's networks,
the ensemble, the PNGs), its start-up (importing torch, timm, MONAI) timed apart, and its peak RSS.

    .venv/bin/python benchmarks/predict_bundle.py [--bundle results/bundles/resnet10t-bilstm]
        [--dicom results/synthetic/hospital_new/archive] [--repeats 3] [--device cpu]

The defaults are what `make demo` leaves. Target (CPU, 2 cores): under 10 s per 30-slice study.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default=str(ROOT / "results" / "bundles" / "resnet10t-bilstm"))
    parser.add_argument("--dicom", default=str(ROOT / "results" / "synthetic" / "hospital_new" / "archive"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    startup = min(timed([sys.executable, "-c", "import ct25d.bundle.run"]) for _ in range(args.repeats))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out"
        for repeat in range(args.repeats):
            total = timed([sys.executable, "-m", "ct25d", "predict-bundle", args.bundle, args.dicom, str(out),
                           "--device", args.device])  # fmt: skip
            studies = pd.read_csv(out / "studies.csv")
            slices = pd.read_parquet(out / "slices.parquet")
            n, per = len(studies), slices.groupby("study_id").size()
            work = total - startup
            rows.append({
                "repeat": repeat, "studies": n, "slices per study (median)": float(per.median()),
                "total s": round(total, 2), "start-up s": round(startup, 2),
                "s per study": round(work / n, 2), "s per 30-slice study": round(work / per.sum() * 30, 2),
            })  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    table = pd.DataFrame(rows)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"bundle {Path(args.bundle).name}, device {args.device}, {os.cpu_count()} CPUs, "
          f"torch threads {threads}, peak RSS {peak:.0f} MB")  # fmt: skip
    print(table.to_markdown(index=False))
    print(f"\nbest: {table['s per 30-slice study'].min():.2f} s per 30-slice study (target < 10 s on CPU)")


if __name__ == "__main__":
    main()
