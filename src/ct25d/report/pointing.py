"""The comparison table's `pointing game` cells, from each saliency run's `pointing.parquet`.

One cell per approach and set: the share of its sampled true-positive calls whose saliency peak cell
holds lesion (`ct25d.evaluation.pointing`), pooled over the fold models (an external study scored by
several fold models counts once per model, and the bootstrap over patients draws its calls together),
with the number of calls and the chance rate beside it; or why there is no number: fewer scored calls
than `compare.min_positives` (the AUC's rule: a share of 4 misses is no result, and its bootstrap
interval would be [0, 0]), the set has no lesion masks (real data) or the approach made no
true-positive call there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ct25d.evaluation.pointing import hit_fraction
from ct25d.evaluation.scoring import Interval
from ct25d.evaluation.truth import NO_MASKS

METRIC = "pointing_game"  # its name among comparison.json's intervals


def header(min_calls: int) -> str:
    """What the comparison's notes say of the pointing-game columns."""
    return (
        "Pointing game: per set, the share of sampled true-positive calls of `any` (the first by study id "
        "of each fold model, at its inner threshold) whose Grad-CAM peak cell (last convolutional stage) "
        "holds lesion in the truth mask, with a 95% bootstrap interval over patients, n calls, and `chance`, "
        f"the share of head cells holding lesion (a random pointer's rate); none below {min_calls} scored "
        "calls; slice and 3D models only. "
    )


@dataclass(frozen=True)
class PointingScore:
    """One cell: the share of hits with its interval (NaN with a note where there is no number), the
    number of scored calls and their mean chance rate."""

    interval: Interval
    n: int = 0
    chance: float = math.nan

    def text(self) -> str:
        if math.isnan(self.interval.value):
            return self.interval.note
        return f"{self.interval.text()} (n {self.n}, chance {self.chance:.2f})"


def no_score(why: str) -> PointingScore:
    """A cell with no calls to score, saying why."""
    return PointingScore(Interval(math.nan, math.nan, math.nan, why))


def too_few_calls(n: int, min_calls: int) -> Interval | None:
    """A placeholder interval where fewer than `min_calls` calls were scored (the AUC's `too_few`)."""
    if n >= min_calls:
        return None
    return Interval(math.nan, math.nan, math.nan, f"too few calls (n {n})")


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


def pointing_scores(
    calls: pd.DataFrame, replicates: int, seed: int, min_calls: int = 5
) -> dict[tuple[str, str], PointingScore]:
    """{(approach, set): score} for every approach and set that has saliency runs. Like an AUC, a
    share needs `min_calls` scored calls (`compare.min_positives`) before it is a number: below it
    the cell says how few there were, with no value or interval."""
    scores = {}
    for (approach, name), part in calls.groupby(["approach", "set"]):
        true = part[part["truth"] == 1]
        scored = true[true["hit"].notna()]
        n = len(scored)
        if n == 0:
            if not len(true):
                scores[approach, name] = no_score("no true-positive call")
            elif (true["note"] == NO_MASKS).all():
                scores[approach, name] = no_score("no masks")
            else:
                scores[approach, name] = no_score("no true-positive call with a mask")
            continue
        chance = float(scored["chance"].mean())
        interval = too_few_calls(n, min_calls) or hit_fraction(
            scored["hit"].to_numpy(), scored["patient_id"].to_numpy(), replicates, seed
        )
        scores[approach, name] = PointingScore(interval, n, chance)
    return scores


def pointing_cells(scores: dict[tuple[str, str], PointingScore]) -> dict[tuple[str, str], str]:
    """{(approach, set): cell text} of the scores."""
    return {where: score.text() for where, score in scores.items()}


def pointing_records(scores: dict[tuple[str, str], PointingScore]) -> list[dict[str, Any]]:
    """The scores as comparison.json's interval records (metric `pointing_game`; value, low and high
    None where there is no number, `note` says why), with `n` scored calls and `chance`."""

    def number(x: float) -> float | None:
        return None if math.isnan(x) else x

    records = []
    for (approach, name), s in sorted(scores.items()):
        records.append({"approach": approach, "set": name, "metric": METRIC,
                        "value": number(s.interval.value), "low": number(s.interval.low),
                        "high": number(s.interval.high), "note": s.interval.note,
                        "n": s.n, "chance": number(s.chance)})  # fmt: skip
    return records


def missing_cells(
    scores: dict[tuple[str, str], PointingScore], approaches: Sequence[str], sets: Sequence[str]
) -> None:
    """An approach with saliency runs but no positive call on a set says so (in place)."""
    looked = {approach for approach, _ in scores}
    for approach in looked & set(approaches):
        for name in sets:
            scores.setdefault((approach, name), no_score("no positive call"))
