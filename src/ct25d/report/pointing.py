"""The comparison table's `pointing game` cells, from each saliency run's `pointing.parquet`.

One cell per approach and set: the share of its sampled true-positive calls whose saliency peak cell
holds lesion (`ct25d.evaluation.pointing`), pooled over the fold models (an external study scored by
several fold models counts once per model, and the bootstrap over patients draws its calls together),
with the number of calls and the chance rate beside it; or why there is no number: the set has no
lesion masks (real data) or the approach made no true-positive call there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ct25d.evaluation.pointing import hit_fraction
from ct25d.evaluation.truth import NO_MASKS

HEADER = (
    "Pointing game: per set, the share of sampled true-positive calls of `any` (the first by study id "
    "of each fold model, at its inner threshold) whose Grad-CAM peak cell (last convolutional stage) "
    "holds lesion in the truth mask, with a 95% bootstrap interval over patients, n calls, and `chance`, "
    "the share of head cells holding lesion (a random pointer's rate); slice and 3D models only. "
)


def read_pointing(paths: Sequence[str | Path], keys: dict[str, str], internal: str) -> pd.DataFrame:
    """Every run's calls with `approach` (from `keys`: config name -> approach, `run_keys`) and `set`
    (`internal` for the outer folds, else the dataset); runs of approaches not compared are dropped."""
    frames = [pd.read_parquet(path) for path in paths]
    calls = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key", "split"])
    calls = calls[calls["key"].isin(keys)]
    return calls.assign(
        approach=calls["key"].map(keys),
        set=calls["dataset"].where(calls["split"] != "validation", internal),
    )


def pointing_cells(calls: pd.DataFrame, replicates: int, seed: int) -> dict[tuple[str, str], str]:
    """{(approach, set): cell text} for every approach and set that has saliency runs. A share is
    defined from one call on (unlike an AUC): a few calls give a number whose n and interval say
    how little it weighs."""
    cells = {}
    for (approach, name), part in calls.groupby(["approach", "set"]):
        true = part[part["truth"] == 1]
        scored = true[true["hit"].notna()]
        if len(scored) == 0:
            if not len(true):
                cells[approach, name] = "no true-positive call"
            elif (true["note"] == NO_MASKS).all():
                cells[approach, name] = "no masks"
            else:
                cells[approach, name] = "no true-positive call with a mask"
            continue
        n = len(scored)
        interval = hit_fraction(scored["hit"].to_numpy(), scored["patient_id"].to_numpy(), replicates, seed)
        chance = scored["chance"].mean()
        cells[approach, name] = f"{interval.text()} (n {n}, chance {chance:.2f})"
    return cells


def missing_cells(cells: dict[tuple[str, str], str], approaches: Sequence[str], sets: Sequence[str]) -> None:
    """An approach with saliency runs but no positive call on a set says so (in place)."""
    looked = {approach for approach, _ in cells}
    for approach in looked & set(approaches):
        for name in sets:
            cells.setdefault((approach, name), "no positive call")
