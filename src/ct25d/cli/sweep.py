"""`ct25d sweep`: a learning curve, the workflow once per `sweep.train_fractions` value.

Why a driver and not one DAG: every rule from `splits` on depends on the fraction, so one DAG would
need the fraction in every path downstream. Instead each fraction is a normal Snakemake run in the
same results folder (ingest, preprocessing and the stores are made once and reused; Snakemake reruns
what the new `splits.train_fraction` changes), and its comparison is saved before the next starts.
A fraction whose saved comparison came from the same config is not run again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ct25d.errors import ConfigError, Ct25dError

log = logging.getLogger(__name__)


def _fraction_dir(results: Path, fraction: float) -> Path:
    return results / "sweep" / f"fraction-{fraction:g}"


def _config_key(config: dict[str, Any], fraction: float) -> str:
    """The run's identity: the merged config without the `sweep` section (so a sweep extended by one
    fraction, or run a few fractions at a time, reuses the fractions already saved) and the fraction."""
    workflow = {k: v for k, v in config.items() if k != "sweep"}
    return hashlib.sha256(json.dumps([workflow, fraction], sort_keys=True, default=str).encode()).hexdigest()


def _merged_config(paths: list[str]) -> dict[str, Any]:
    """The config files merged as Snakemake merges them (later files win, key by key)."""
    import yaml
    from snakemake.utils import update_config

    merged: dict[str, Any] = {}
    for path in paths:
        update_config(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def saved_fraction(config: dict[str, Any], fraction: float) -> Path | None:
    """The folder of `fraction`'s saved comparison when it came from this config, else None."""
    folder = _fraction_dir(Path(config.get("results", "results")), fraction)
    done = folder / "done.txt"
    if done.is_file() and done.read_text().strip() == _config_key(config, fraction):
        return folder if (folder / "comparison").is_dir() else None
    return None


def run_fraction(
    configfiles: list[str], config: dict[str, Any], fraction: float, snakemake_args: list[str], cores: int
) -> Path:
    """One fraction end to end (`config`: the files merged); returns the folder its comparison and
    training sizes were saved in."""
    import pandas as pd
    import yaml

    from ct25d.atomic import atomic_path, write_json
    from ct25d.report.sweep import training_sizes

    saved = saved_fraction(config, fraction)
    if saved is not None:
        log.info("fraction %g: saved comparison is from this config; not run again", fraction)
        return saved
    results = Path(config.get("results", "results"))
    folder = _fraction_dir(results, fraction)
    overlay = folder / "overlay.yaml"
    with atomic_path(overlay) as tmp:
        tmp.write_text(yaml.safe_dump({"splits": {**config.get("splits", {}), "train_fraction": fraction}}))
    command = [sys.executable, "-m", "snakemake", "comparison", "--cores", str(cores), "--configfile",
               *configfiles, str(overlay), "--replace-workflow-config", *snakemake_args]  # fmt: skip
    log.info("fraction %g: %s", fraction, " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise Ct25dError(f"sweep: the workflow failed at train_fraction {fraction:g} (its log is above)")
    with atomic_path(folder / "comparison") as tmp:
        shutil.copytree(results / "comparison", tmp)
    folds = pd.read_parquet(results / "splits" / "folds.parquet")
    write_json(folder / "sizes.json", {"train_fraction": fraction, **training_sizes(folds)})
    with atomic_path(folder / "done.txt") as tmp:
        tmp.write_text(_config_key(config, fraction) + "\n")
    return folder


def cmd_sweep(args: argparse.Namespace) -> None:
    from ct25d.report.sweep import write_data_size

    config = _merged_config(args.configfile)
    sweep = config.get("sweep") or {}
    fractions = sorted(float(f) for f in sweep.get("train_fractions", []))
    if len(fractions) < 2:
        raise ConfigError(f"sweep.train_fractions: {args.configfile} must list at least two fractions")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"sweep.train_fractions: {bad} outside (0, 1]")
    extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    if args.saved_only:
        found = {f: saved_fraction(config, f) for f in fractions}
        points = [(f, folder) for f, folder in found.items() if folder is not None]
        missing = [f for f, folder in found.items() if folder is None]
        if missing:
            log.warning("fractions %s not saved yet: %d of %d drawn", missing, len(points), len(found))
        if not points:
            raise Ct25dError("sweep --saved-only: no fraction saved from this config yet")
    else:
        points = [(f, run_fraction(args.configfile, config, f, extra, args.cores)) for f in fractions]
    out = Path(config.get("results", "results")) / "comparison"
    table = write_data_size(points, out, sweep.get("approaches") or None)
    log.info("%d points; see %s/data_size.md and data_size.png", len(table), out)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sweep subcommand."""
    p = sub.add_parser("sweep", help="learning curve: the workflow at each sweep.train_fractions value")
    p.add_argument("--configfile", nargs="+", required=True, help="config file(s) with a `sweep` section")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--saved-only",
        action="store_true",
        help="run nothing: draw the curve from the fractions already saved (e.g. while the rest runs)",
    )
    p.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="after `--`: passed to every Snakemake run (e.g. -- --profile workflow/profiles/slurm)",
    )
    p.set_defaults(func=cmd_sweep)
