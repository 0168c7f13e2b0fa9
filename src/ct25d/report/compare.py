"""The comparison table of the main seed: every approach's slice and volume F1 side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ct25d.atomic import atomic_path, write_csv

VALIDATION = {"slice": "slice F1 (val)", "volume": "volume F1 (val)", "volume/auc": "volume AUC (val)"}


def column(split: str, dataset: str, level: str, metric: str = "F1") -> str | None:
    """The table column of one result: validation pooled over the training datasets, each external
    dataset on its own (pooling two external sets would hide how each one fares)."""
    if split == "inner":  # where choices were made: never reported as a score
        return None
    if split == "validation":
        return VALIDATION.get(level if metric == "F1" else f"{level}/auc")
    return f"{level} {metric} ({dataset})" if level == "volume" else None


def _rows(summary: dict[str, Any], label: str, stage: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method in a summary's `results` (keys `split/dataset/level/method`)."""
    by_method: dict[str, dict[str, Any]] = {}
    for key, value in summary["results"].items():
        split, dataset, level, method = key.split("/")
        row = by_method.setdefault(method, {"approach": label.format(method=method), "stage": stage,
                                            "fold": summary.get("fold"), **settings})  # fmt: skip
        for metric, field in (("F1", "f1_any"), ("AUC", "auc_any")):
            name = column(split, dataset, level, metric)
            if name:
                row[name] = value[field]
        row.setdefault("datasets", set()).add(dataset)
    return list(by_method.values())


# How the table names a baseline by what it reads.
FAMILIES = {"volume": "3D", "embeddings": "2.5D stacked embeddings", "slices": "2D thickened"}


def comparison_table(
    stage1: list[str | Path], stage2: list[str | Path], baselines: list[str | Path] = ()
) -> pd.DataFrame:
    """F1/AUC of `any` per approach: Stage-1 head and cosine rules, every Stage-2 model, every baseline."""
    rows: list[dict[str, Any]] = []
    for path in stage1:
        summary = json.loads(Path(path).read_text())
        backbone = summary["settings"]["backbone"]
        names = {"head": "2D {backbone}: thresholded head", "cosine": "2D {backbone}: cosine to class means"}
        for row in _rows(summary, "{method}", "stage1", {"backbone": backbone}):
            row["approach"] = names[row["approach"]].format(backbone=backbone)
            rows.append(row)
    for path in stage2:
        summary = json.loads(Path(path).read_text())
        rows += _rows(summary, "2.5D: Stage 2 {method}", "stage2", {})
    for path in baselines:
        summary = json.loads(Path(path).read_text())
        family = FAMILIES[summary["inputs"]]
        extra = {"parameters": summary["parameters"], "s/epoch": round(summary["seconds_per_epoch"], 1)}
        rows += _rows(summary, f"{family}: {{method}}", "baseline", extra)
    table = pd.DataFrame(rows)
    table["datasets"] = table["datasets"].map(lambda d: ", ".join(sorted(d)))
    if "parameters" in table:
        table["parameters"] = table["parameters"].astype("Int64")
    external = sorted(c for c in table if c.startswith("volume ") and c not in VALIDATION.values())
    ordered = [
        "approach",
        "stage",
        "fold",
        *[c for c in VALIDATION.values() if c in table],
        *external,
        *[c for c in ("parameters", "s/epoch") if c in table],
        "datasets",
    ]
    return table[ordered].round(3)


def write_comparison(stage1: list[str | Path], stage2: list[str | Path], out_dir: str | Path,
                     baselines: list[str | Path] = ()) -> pd.DataFrame:  # fmt: skip
    """comparison.csv, comparison.md (the seed's table) and comparison.png (a bar chart)."""
    out = Path(out_dir)
    table = comparison_table(stage1, stage2, baselines)
    write_csv(out / "comparison.csv", table)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(table.to_markdown(index=False) + "\n")
    _plot(table, out / "comparison.png")
    return table


def _plot(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    metrics = [c for c in table if " F1 (" in c]
    fig = Figure(figsize=(10, 0.5 * len(table) + 1.5))
    ax = fig.subplots()
    height = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        ys = [i + k * height for i in range(len(table))]
        ax.barh(ys, table[metric].fillna(0), height=height, label=metric)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(table))], table["approach"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 of 'any hemorrhage'")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("2D vs 2.5D vs 3D: Stage-1 rules, Stage-2 sequence models, baselines")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
