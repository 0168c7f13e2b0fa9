"""Where things lie in a bundle, and what it records of each fold: one place, read by the export and
by the prediction, so the two cannot drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ct25d.evaluation.scoring import Temperature
from ct25d.report.compare import Choice

METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
CARD = Path("docs") / "README.md"


def network_path(fold: int, part: str) -> Path:
    """`models/fold<k>/<part>.ts`: one TorchScript file per network and fold."""
    return Path("models") / f"fold{fold}" / f"{part}.ts"


def choice_record(choice: Choice) -> dict[str, Any]:
    """A fold's inner-split choices for one label, as JSON (on the raw logit scale)."""
    return {
        "temperature": choice.temperature.value,
        "temperature_flag": choice.temperature.flag,
        "threshold_f1": choice.threshold,
        "threshold_at_specificity": list(choice.at_specificity),
    }


def choice_of(record: dict[str, Any]) -> Choice:
    """`choice_record` read back."""
    return Choice(
        Temperature(float(record["temperature"]), str(record["temperature_flag"])),
        float(record["threshold_f1"]),
        tuple(float(t) for t in record["threshold_at_specificity"]),
    )
