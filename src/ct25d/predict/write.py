"""`results/predictions/<dataset>/`: per chosen approach a folder with `studies.csv` (per study each
label's calibrated probability from the fold ensemble, the call at the inner-split threshold, the
series used and what ingest flagged), `slices.parquet` (per slice position, each label's
probability) and one PNG per study (a positive call's with the Grad-CAM of its approach's image
networks over its top slices, `ct25d.predict.saliency`); beside them `approaches.csv` (which approach
each folder holds and why) and `settings.json`."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from ct25d.atomic import atomic_path, write_csv, write_json, write_parquet
from ct25d.predict.ensemble import Chosen, calls, slice_ensemble, study_ensemble
from ct25d.predict.figure import shown_slices, study_figure
from ct25d.predict.saliency import ApproachSaliency, Saliency
from ct25d.report.compare import Run

log = logging.getLogger(__name__)
SLICE_KEYS = ["dataset", "study_id", "z", "slice_id", "position_mm"]


def study_table(
    records: pd.DataFrame, studies: pd.DataFrame, labels: list[str], dataset: str
) -> pd.DataFrame:
    """`records` (every scanned study, `ct25d.predict.scans`) with the approach's calls in front; a
    study the approach did not score says why in `problem`."""
    predicted = calls(studies, labels).drop(columns="dataset")
    table = records.merge(predicted, on="study_id", how="left").assign(dataset=dataset)
    scored = [c for c in predicted if c != "study_id"]
    missing = table[scored[0]].isna() & (table["problem"] == "") if scored else table["problem"] == ""
    table.loc[missing, "problem"] = "not scored by this approach (e.g. not in its volume store)"
    front = ["dataset", "study_id", "name", *scored]
    return table[front + [c for c in records if c not in front]]


def slice_table(index: pd.DataFrame, slices: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Every slice position of the dataset's predicted studies with each label's probability (NaN
    where the approach scores whole volumes or left the slice out)."""
    probs = slices.rename(columns={f"p_{n}": f"prob_{n}" for n in labels})
    table = index[SLICE_KEYS].merge(probs, on=["dataset", "study_id", "z"], how="left")
    for name in labels:
        if f"prob_{name}" not in table:
            table[f"prob_{name}"] = float("nan")
    return table[[*SLICE_KEYS, *(f"prob_{n}" for n in labels)]]


def _title(row: pd.Series, approach: str) -> str:
    name = f"{row['name']} ({row['study_id']})" if row["name"] else row["study_id"]
    p, t = row.get("prob_any", math.nan), row.get("threshold_any", math.nan)
    call = {1: "positive", 0: "negative"}.get(row.get("call_any"), "no call")
    return f"{row['dataset']} / {name}\n{approach}: P(any) {p:.2f}, {call} (threshold {t:.2f})"


def write_approach(
    out: Path, runs: list[Run], chosen: Chosen, dataset: str, labels: list[str], records: pd.DataFrame,
    index: pd.DataFrame, top: int, min_positives: int, meta: dict[str, Any],
    volumes: pd.DataFrame | None = None, saliency: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One approach's folder; returns its row of approaches.csv. `saliency`: the Grad-CAM of its fold
    networks over each positive call's top slices (`volumes`: the volume index, for a 3D net)."""
    mine = [run for run in runs if run.approach == chosen.approach]
    studies = study_ensemble(mine, dataset, labels, min_positives)
    slices = slice_ensemble(mine, dataset, labels, min_positives)
    maps = ApproachSaliency.of_runs(mine, index, volumes) if saliency else None
    row = write_folder(out / chosen.folder, chosen.approach, studies, slices, records, index, labels, dataset,
                       top, meta, maps)  # fmt: skip
    return {"folder": chosen.folder, "approach": chosen.approach, "why": chosen.why,
            "folds": ", ".join(str(r.fold) for r in sorted(mine, key=lambda r: r.fold)), **row}  # fmt: skip


def _positive(row: pd.Series) -> bool:
    call = row.get("call_any")
    return bool(pd.notna(call) and int(call) == 1)


def write_folder(
    folder: Path, approach: str, studies: pd.DataFrame, slices: pd.DataFrame, records: pd.DataFrame,
    index: pd.DataFrame, labels: list[str], dataset: str, top: int, meta: dict[str, Any],
    saliency: Saliency | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`studies.csv`, `slices.parquet` and the PNGs of one approach's fold ensemble (`studies`: per
    study `s_`/`t_`/`p_` columns, `slices`: per slice `p_`), the workflow's and a bundle's alike;
    returns the counts. `saliency` draws a map over each positive call's top slices (None: none; a
    bundle's TorchScript networks take no hooks)."""
    studies = study_table(records, studies, labels, dataset)
    slices = slice_table(index, slices, labels)
    folder.mkdir(parents=True)
    write_csv(folder / "studies.csv", studies)
    write_parquet(folder / "slices.parquet", slices, {**meta, "approach": approach})
    stores = index.drop_duplicates("study_id").set_index("study_id")["store"]
    pictured = studies[studies["study_id"].isin(slices["study_id"])]
    mapped, seconds = 0, 0.0
    for _, row in tqdm(pictured.iterrows(), total=len(pictured), desc=f"{folder.name} PNGs", mininterval=2.0):
        part = slices[slices["study_id"] == row["study_id"]]
        p, t = row.get("prob_any", math.nan), row.get("threshold_any", math.nan)
        png = folder / f"{row['study_id']}.png"
        overlay = None
        if saliency is not None and _positive(row):
            start = time.perf_counter()
            overlay = saliency(str(row["study_id"]), shown_slices(part, top))
            if overlay.maps:
                mapped, seconds = mapped + 1, seconds + time.perf_counter() - start
        study_figure(part, stores[row["study_id"]], _title(row, approach), p, t, top, png, overlay)
    if mapped:
        log.info("%s: saliency of %d positive calls in %.1f s (%.2f s per study)", approach, mapped, seconds,
                 seconds / mapped)  # fmt: skip
    called = studies["call_any"] if "call_any" in studies else pd.Series(dtype="Int8")
    log.info("%s: %d studies, %d called positive for any, %d without a prediction", approach,
             len(studies), int(called.fillna(0).sum()), int((studies["problem"] != "").sum()))  # fmt: skip
    return {"studies": len(studies), "positive_any": int(called.fillna(0).sum())}


def write_predictions(
    out_dir: str | Path, dataset: str, runs: list[Run], chosen: list[Chosen], labels: list[str],
    records: pd.DataFrame, index: pd.DataFrame, top: int, min_positives: int, settings: dict[str, Any],
    volumes: pd.DataFrame | None = None, saliency: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """The dataset's prediction folder, replaced as a whole (a killed job leaves the old one).
    `saliency`: Grad-CAM over the positive calls' top slices (`volumes`: the volume index, for 3D nets)."""
    from ct25d.provenance import stamp

    meta = stamp("predict", {**settings, "dataset": dataset, "approaches": [c.approach for c in chosen]})
    index = index[index["dataset"] == dataset]
    if volumes is not None:
        volumes = volumes[volumes["dataset"] == dataset]
    rows = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for one in chosen:
            row = write_approach(tmp, runs, one, dataset, labels, records, index, top, min_positives, meta,
                                 volumes, saliency)  # fmt: skip
            rows.append(row)
        table = pd.DataFrame(rows)
        write_csv(tmp / "approaches.csv", table)
        used = [str(run.folder) for run in runs if run.approach in set(table["approach"])]
        write_json(tmp / "settings.json", {**meta, "runs": used})
    return table
