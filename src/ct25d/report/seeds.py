"""Training variance in every verdict (`sweep.seeds`): the same config, folds and scored studies,
trained with several seeds. Per approach and set, each seed's AUC and F1 of `any`, their mean and
spread, and an interval from one bootstrap over patients and seeds together; and every claim tested
on the seeds' mean difference with the same bootstrap (`claims_table` with one predictions dict per
seed). A verdict then has to hold across training runs: a bootstrap over one run's studies leaves
out the variance of training itself, which can be as large as the effects claimed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ct25d.atomic import atomic_path, write_csv, write_json
from ct25d.errors import Ct25dError
from ct25d.evaluation.scoring import over_seeds, seed_draws, weighted_auc, weighted_f1
from ct25d.provenance import stamp
from ct25d.report.compare import (
    Resampler,
    aligned,
    cell_text,
    claims_markdown,
    claims_table,
    claims_text,
    too_few,
)


def load_scores(folders: list[Path]) -> tuple[list[dict[str, pd.DataFrame]], dict[str, str]]:
    """Each saved run's `comparison/scores.parquet` as {approach: scored studies}, and the config
    names of the approaches (as `run_keys` gives them); every run must have scored the same approaches."""
    runs, keys = [], {}
    for folder in folders:
        path = folder / "comparison" / "scores.parquet"
        if not path.is_file():
            raise Ct25dError(f"seeds: {path} is missing (a comparison from an older ct25d?); rerun that seed")
        table = pd.read_parquet(path)
        keys.update(dict(zip(table["key"], table["approach"], strict=True)))
        runs.append(
            {a: part.drop(columns=["approach", "key"]) for a, part in table.groupby("approach", sort=False)}
        )
    first = set(runs[0])
    for folder, run in zip(folders, runs, strict=True):
        if set(run) != first:
            raise Ct25dError(f"seeds: {folder} scored {sorted(set(run) ^ first)} unlike the first seed")
    return runs, keys


def _seed_text(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def seed_table(
    predictions: list[dict[str, pd.DataFrame]], resampler: Resampler, min_positives: int = 5
) -> pd.DataFrame:
    """Per approach and set: AUC and F1 of `any` (each study at its own fold's threshold) per seed,
    their standard deviation across seeds, and the seeds' mean with the interval of the bootstrap
    over patients and seeds together (the same replicates as the claims)."""
    draws = seed_draws(resampler.replicates, len(predictions), resampler.seed)
    rows = []
    for approach, first in predictions[0].items():
        for name in sorted(first["set"].unique()):
            order = aligned(first, name)
            parts = [aligned(scored[approach], name, order) for scored in predictions]
            y = order["any"].to_numpy(float)
            weights = resampler.weights(order, ["any"])
            few = too_few(y, min_positives)
            row: dict[str, Any] = {"approach": approach, "set": name, "n": len(y), "n_pos": int(y.sum())}
            for metric, statistic, data in (
                ("auc", weighted_auc, [p["s_any"].to_numpy(float) for p in parts]),
                ("f1", weighted_f1, [(p["s_any"] > p["t_any"]).to_numpy() for p in parts]),
            ):
                values = [float(statistic(y, d, np.ones(len(y)))[0]) for d in data]
                replicates = np.stack([statistic(y, d, weights) for d in data])
                row[metric] = few or over_seeds(values, replicates, draws).interval()
                row[f"{metric} per seed"] = _seed_text(values)
                row[f"{metric} SD"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def write_seeds(points: list[tuple[int, Path]], out_dir: Path, compare: dict[str, Any]) -> pd.DataFrame:
    """seeds.csv / seeds.md (the table and the claims over the seeds), claims_seeds.csv and seeds.json
    in `out_dir`, from each seed's saved comparison (`points`: (seed, folder)); `compare`: the
    config's compare section (bootstrap, seed, min_positives, alpha, claims)."""
    seeds = [s for s, _ in points]
    predictions, keys = load_scores([folder for _, folder in points])
    replicates, seed = int(compare.get("bootstrap", 2000)), int(compare.get("seed", 0))
    min_positives, alpha = int(compare.get("min_positives", 5)), float(compare.get("alpha", 0.05))
    resampler = Resampler(replicates, seed)
    table = seed_table(predictions, resampler, min_positives)
    text = table.map(cell_text)
    write_csv(out_dir / "seeds.csv", text)
    claims = claims_table(
        list(compare.get("claims") or []), keys, predictions, resampler, min_positives, alpha
    )
    write_csv(out_dir / "claims_seeds.csv", claims_text(claims))
    intro = (
        f"Training seeds {', '.join(map(str, seeds))}: the same folds, cohort and scored studies, each "
        f"approach trained once per seed (Stage 1, Stage 2 and the baselines reseeded together). "
        f"`auc` / `f1`: the mean over seeds with a 95% interval from {replicates} replicates that resample "
        f"patients (stratified by class, as the comparison) and the seeds together; `per seed`: each "
        f"seed's own value; `SD`: their standard deviation. With {len(seeds)} seeds the seed part of the "
        f"interval is rough (a bootstrap of {len(seeds)} values is {len(seeds) - 1}/{len(seeds)} as wide "
        f"as their spread): read `per seed` beside it."
    )
    with atomic_path(out_dir / "seeds.md") as tmp:
        tmp.write_text(
            f"{intro}\n\n{text.to_markdown(index=False)}\n\n# Claims over the seeds\n\n"
            f"D is the mean over the seeds of better minus than; its replicates resample patients and "
            f"seeds together, so a claim is supported only where it holds across training runs.\n\n"
            + claims_markdown(claims, replicates, seed, alpha)
        )
    write_json(out_dir / "seeds.json", {**stamp("seeds", {"compare": compare}), "seeds": seeds,
                                        "runs": [str(folder) for _, folder in points]})  # fmt: skip
    return table
