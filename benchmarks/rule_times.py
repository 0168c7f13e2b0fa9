"""Wall time per rule of one Snakemake run, from its log: jobs, summed and longest job seconds.

Every job's start (`[timestamp]` then `rule NAME:` ... `jobid: N`) and end (`[timestamp]` then
`Finished jobid: N`) are paired; the table shows where a run's time goes, rule by rule, and the
run's own wall time (first start to last end).

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log", type=Path, help="a Snakemake log (.snakemake/log/*.snakemake.log)")
    args = parser.parse_args()
    jobs = job_times(args.log)
    if jobs.empty:
        raise SystemExit(f"{args.log}: no finished jobs")
    table = (
        jobs.groupby("rule")["seconds"]
        .agg(jobs="size", total_s="sum", longest_s="max")
        .sort_values("total_s", ascending=False)
        .reset_index()
    )
    wall = (jobs["end"].max() - jobs["start"].min()).total_seconds()
    print(table.to_markdown(index=False))
    print(f"\n{len(jobs)} jobs; wall time {wall / 60:.1f} min (first start to last end)")


if __name__ == "__main__":
    main()
