"""Seconds of a no-op `snakemake all -n` (everything up to date): what every invocation pays before
any job, on a workstation and on a cluster's login node. Run after `make demo`.

Two rows: with the config check's cached verdict (the normal case) and without it (the first plan
after a model setting or the code changed: torch, timm and MONAI are imported and every model is
built once). Best of `--repeats`.

    .venv/bin/python benchmarks/dry_run.py [--configfile config/config.yaml --repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".snakemake" / "ct25d"


def dry_run(configfile: str) -> tuple[float, str]:
    command = [sys.executable, "-m", "snakemake", "all", "-n", "--configfile", configfile]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for label, clear in (("config check cached", False), ("config check not cached", True)):
        best, nothing = float("inf"), True
        for _ in range(args.repeats):
            if clear:
                shutil.rmtree(CACHE, ignore_errors=True)
            seconds, output = dry_run(args.configfile)
            best, nothing = min(best, seconds), nothing and "Nothing to be done" in output
        rows.append((label, best, nothing))
    dry_run(args.configfile)  # leave the verdict cached
    print(f"| `snakemake all -n` ({args.configfile}) | best of {args.repeats}, s | nothing to do |")
    print("|---|---|---|")
    for label, seconds, nothing in rows:
        print(f"| {label} | {seconds:.2f} | {'yes' if nothing else 'no: run the workflow first'} |")


if __name__ == "__main__":
    main()
