"""`ct25d sweep`: the workflow again and again with one thing changed: the training fraction
(`sweep.train_fractions`, a learning curve) and the training seed (`sweep.seeds`, training variance).

Why a driver and not one DAG: every rule from `splits` on depends on the fraction, and every training
rule on the seed, so one DAG would need both in every path downstream. Instead each point is a normal
Snakemake run in the same results folder (ingest, preprocessing and the stores are made once and
reused; Snakemake reruns what the new setting changes), and its comparison is saved before the next
starts. A point whose saved comparison came from the same config is not run again, and the point
with the config's own settings (all the data, its own seed) adds nothing to the config, so a plain
`snakemake` run of the same config is that point.

The points: every seed at the largest fraction (the study and its repeats), then the smaller
fractions with the first seed (the curve), which train only the families the curve draws
(`sweep.approaches`) where it names them. The results folder holds the last point's runs afterwards;
each point's comparison is in `sweep/fraction-<f>-seed-<s>/`, and what is drawn over the points
(data_size.*, seeds.*, claims_seeds.csv, sweep.json with the source commit) in `sweep/`.
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
TRAINING = ("stage1", "stage2", "baselines")  # the sections whose `seed` a training seed sets


def _point_dir(results: Path, fraction: float, seed: int) -> Path:
    return results / "sweep" / f"fraction-{fraction:g}-seed-{seed}"


def curve_only(config: dict[str, Any], approaches: list[str]) -> dict[str, Any]:
    """The sections that make a point train only the curve's families (`sweep.approaches`, as the
    comparison names them): the Stage-2 models and baselines they name (Stage 1 always runs: every
    other family reads it), and the claims among them. Every kept entry is the config's own, so its
    rules' parameters are the full run's; the claims need every approach and are tested where all run."""
    from ct25d.report.compare import FAMILIES

    models, baselines = set(), set()
    for name in approaches:
        head, _, method = name.partition(": ")
        if method.startswith("Stage 2 "):
            models.add(method.removeprefix("Stage 2 "))
        elif head in FAMILIES.values():
            baselines.add(method)
    stage2 = config.get("stage2", {})
    kept = {k: v for k, v in stage2.get("models", {}).items() if k in models}
    bases = {k: v for k, v in config.get("baselines", {}).get("models", {}).items() if k in baselines}
    names = {*kept, *bases, "head", "cosine"}
    compare = config.get("compare", {})
    claims = [c for c in compare.get("claims", []) if c["better"] in names and c["than"] in names]
    overlay = {
        "stage2": {**stage2, "models": kept},
        "baselines": {**config.get("baselines", {}), "models": bases},
        "compare": {**compare, "claims": claims},
    }
    if compare.get("reference") not in names:
        overlay["compare"].pop("reference", None)
    return overlay


def _overlay(config: dict[str, Any], fraction: float, seed: int) -> dict[str, Any]:
    """What the point changes in the config: nothing where it is the config's own setting (a
    fraction of 1, the config's stage1 seed), so that its rules' parameters stay the plain run's. A
    smaller fraction trains only the curve's families where `sweep.approaches` names them."""
    overlay: dict[str, Any] = {}
    if fraction != 1:
        overlay["splits"] = {**config.get("splits", {}), "train_fraction": fraction}
        approaches = (config.get("sweep") or {}).get("approaches")
        if approaches:
            overlay.update(curve_only(config, approaches))
    if seed != int(config.get("stage1", {}).get("seed", 0)):
        for section in TRAINING:
            overlay[section] = {**overlay.get(section, config.get(section, {})), "seed": seed}
    return overlay


def _config_key(config: dict[str, Any], fraction: float, seed: int) -> str:
    """The run's identity: the merged config without the `sweep` section (so a sweep extended by one
    point, or run a few points at a time, reuses the points already saved) and the point."""
    workflow = {k: v for k, v in config.items() if k != "sweep"}
    blob = json.dumps([workflow, fraction, seed], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def points_of(sweep: dict[str, Any], config: dict[str, Any]) -> list[tuple[float, int]]:
    """(fraction, seed) of every run: each seed at the largest fraction, then the other fractions,
    smallest first, with the first seed."""
    fractions = sorted(float(f) for f in sweep.get("train_fractions") or [1.0])
    seeds = [int(s) for s in sweep.get("seeds") or [int(config.get("stage1", {}).get("seed", 0))]]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"sweep.train_fractions: {bad} outside (0, 1]")
    points = [(fractions[-1], s) for s in seeds] + [(f, seeds[0]) for f in fractions[:-1]]
    if len(points) < 2:
        raise ConfigError("sweep: list at least two train_fractions or two seeds (one run is `snakemake`)")
    return points


def _merged_config(paths: list[str]) -> dict[str, Any]:
    """The config files merged as Snakemake merges them (later files win, key by key)."""
    import yaml
    from snakemake.utils import update_config

    merged: dict[str, Any] = {}
    for path in paths:
        update_config(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def saved_point(config: dict[str, Any], fraction: float, seed: int) -> Path | None:
    """The folder of the point's saved comparison when it came from this config, else None."""
    folder = _point_dir(Path(config.get("results", "results")), fraction, seed)
    done = folder / "done.txt"
    if done.is_file() and done.read_text().strip() == _config_key(config, fraction, seed):
        return folder if (folder / "comparison").is_dir() else None
    return None


def run_point(
    config: dict[str, Any],
    point: tuple[float, int],
    snakemake_args: list[str],
    cores: int,
) -> Path:
    """One point end to end (`config`: the config files merged, as Snakemake merges them); returns
    the folder its comparison and training sizes were saved in."""
    import pandas as pd
    import yaml

    from ct25d.atomic import atomic_path, write_json
    from ct25d.report.sweep import training_sizes

    fraction, seed = point
    saved = saved_point(config, fraction, seed)
    if saved is not None:
        log.info("fraction %g, seed %d: saved comparison is from this config; not run again", fraction, seed)
        return saved
    results = Path(config.get("results", "results"))
    folder = _point_dir(results, fraction, seed)
    changes = _overlay(config, fraction, seed)
    with atomic_path(folder / "overlay.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(changes))
    # One config file with each changed section replaced whole: Snakemake merges config files key by
    # key, which could add a model to a section but never leave one out.
    effective = folder / "config.yaml"
    with atomic_path(effective) as tmp:
        tmp.write_text(yaml.safe_dump({**config, **changes}, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "comparison", "--cores", str(cores), "--configfile",
               str(effective), "--replace-workflow-config", *snakemake_args]  # fmt: skip
    log.info("fraction %g, seed %d: %s", fraction, seed, " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise Ct25dError(
            f"sweep: the workflow failed at train_fraction {fraction:g}, seed {seed} (log above)"
        )
    with atomic_path(folder / "comparison") as tmp:
        shutil.copytree(results / "comparison", tmp)
    folds = pd.read_parquet(results / "splits" / "folds.parquet")
    write_json(folder / "sizes.json", {"train_fraction": fraction, "seed": seed, **training_sizes(folds)})
    with atomic_path(folder / "done.txt") as tmp:
        tmp.write_text(_config_key(config, fraction, seed) + "\n")
    return folder


def source_commit() -> str:
    """The commit of the code that drew the tables (`+ uncommitted changes` when the tree differs), so
    that a README table can name what made it; "unknown" outside a git checkout."""
    import ct25d

    def git(*args: str) -> str:
        where = Path(ct25d.__file__).parent
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, check=True).stdout

    try:
        head, dirty = git("rev-parse", "HEAD").strip(), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty.strip() else "")


def cmd_sweep(args: argparse.Namespace) -> None:
    from ct25d.atomic import write_json
    from ct25d.report.seeds import write_seeds
    from ct25d.report.sweep import write_data_size

    config = _merged_config(args.configfile)
    sweep = config.get("sweep") or {}
    points = points_of(sweep, config)
    extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    if args.saved_only:
        saved = {p: saved_point(config, *p) for p in points}
        done = {p: folder for p, folder in saved.items() if folder is not None}
        missing = [p for p in points if p not in done]
        if missing:
            log.warning(
                "points (fraction, seed) %s not saved yet: %d of %d drawn", missing, len(done), len(points)
            )
        if not done:
            raise Ct25dError("sweep --saved-only: no point saved from this config yet")
    else:
        done = {p: run_point(config, p, extra, args.cores) for p in points}
    # Beside the points, not in comparison/: that folder holds whichever point ran last.
    out = Path(config.get("results", "results")) / "sweep"
    full, first = points[0][0], points[0][1]
    curve = sorted((f, folder) for (f, s), folder in done.items() if s == first)
    if len(curve) > 1:
        table = write_data_size(curve, out, sweep.get("approaches") or None)
        log.info("%d points; see %s/data_size.md and data_size.png", len(table), out)
    repeats = [(s, folder) for (f, s), folder in done.items() if f == full]
    if len(repeats) > 1:
        write_seeds(repeats, out, config.get("compare") or {})
        log.info("%d training seeds; see %s/seeds.md", len(repeats), out)
    write_json(out / "sweep.json", {"points": [{"fraction": f, "seed": s, "folder": str(folder)}
                                               for (f, s), folder in done.items()],
                                    "commit": source_commit()})  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sweep subcommand."""
    p = sub.add_parser(
        "sweep", help="the workflow at each sweep.train_fractions value and each sweep.seeds training seed"
    )
    p.add_argument("--configfile", nargs="+", required=True, help="config file(s) with a `sweep` section")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--saved-only",
        action="store_true",
        help="run nothing: draw the curve and the seeds' table from the points already saved",
    )
    p.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="after `--`: passed to every Snakemake run (e.g. -- --profile workflow/profiles/slurm)",
    )
    p.set_defaults(func=cmd_sweep)
