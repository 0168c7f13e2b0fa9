"""Time per rule of a Snakemake run: jobs, summed and longest job seconds.

From a results folder, the rules' own `benchmark:` files (seconds and peak RSS of each job, as
Snakemake measured them; training rules split by model entry). From a Snakemake log, each job's
start (`[timestamp]` then `rule NAME:` ... `jobid: N`) and end (`[timestamp]` then `Finished
jobid: N`) are paired, which adds the run's own wall time (first start to last end).

    .venv/bin/python benchmarks/rule_times.py results-study
    .venv/bin/python benchmarks/rule_times.py .snakemake/log/<run>.snakemake.log
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

import pandas as pd

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


def job_times(log: Path) -> pd.DataFrame:
    """One row per finished job: rule, start, end, seconds."""
    now: datetime | None = None
    rule: str | None = None
    starts: dict[int, tuple[str, datetime]] = {}
    rows = []
    for line in log.read_text().splitlines():
        if m := STAMP.match(line):
            now = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule and now:
            starts[int(m.group(1))] = (rule, now)
            rule = None
        elif (m := FINISHED.match(line)) and now and int(m.group(1)) in starts:
            name, start = starts.pop(int(m.group(1)))
            rows.append({"rule": name, "start": start, "end": now, "seconds": (now - start).total_seconds()})
    return pd.DataFrame(rows, columns=["rule", "start", "end", "seconds"])


def benchmark_times(results: Path) -> pd.DataFrame:
    """One row per job from its `benchmark:` file: rule (training rules with their model), seconds,
    peak RSS (MB)."""
    sources = [
        ("benchmarks/*/*.tsv", lambda p: p.parent.name),
        ("stage1/*/fold*/benchmark.tsv", lambda p: f"train_slices[{p.parent.parent.name}]"),
        ("stage2/*/*/fold*/benchmark.tsv", lambda p: f"train_sequence[{p.parent.parent.parent.name}]"),
        ("baselines/*/fold*/benchmark.tsv", lambda p: f"train_baseline[{p.parent.parent.name}]"),
    ]
    rows = []
    for pattern, rule in sources:
        for path in sorted(results.glob(pattern)):
            last = pd.read_csv(path, sep="\t").iloc[-1]
            rows.append({"rule": rule(path), "seconds": float(last["s"]), "peak_mb": float(last["max_rss"])})
    return pd.DataFrame(rows, columns=["rule", "seconds", "peak_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source", type=Path, help="a results folder, or a Snakemake log (.snakemake/log/*.snakemake.log)"
    )
    args = parser.parse_args()
    jobs = benchmark_times(args.source) if args.source.is_dir() else job_times(args.source)
    if jobs.empty:
        raise SystemExit(f"{args.source}: no finished jobs")
    agg = {"jobs": ("seconds", "size"), "total_s": ("seconds", "sum"), "longest_s": ("seconds", "max")}
    if "peak_mb" in jobs:
        agg["peak_mb"] = ("peak_mb", "max")
    table = jobs.groupby("rule").agg(**agg).sort_values("total_s", ascending=False).reset_index()
    print(table.round(0).to_markdown(index=False))
    summary = f"\n{len(jobs)} jobs; {jobs['seconds'].sum() / 60:.1f} job-minutes"
    if "end" in jobs:
        summary += f"; wall time {(jobs['end'].max() - jobs['start'].min()).total_seconds() / 60:.1f} min"
    print(summary)


if __name__ == "__main__":
    main()
