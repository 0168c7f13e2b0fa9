"""The length check tells a score that reads the bleed from one that reads how many slices a study has."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ct25d.report.length import length_check, within_length_auc


def _set(name: str, n: int, longer_positive: bool, rng: np.random.Generator) -> pd.DataFrame:
    y = rng.integers(0, 2, n).astype(float)
    # length goes with the label (the other way round in the other set), the bleed signal is separate
    shift = np.where(y == 1, 2, -2) * (1 if longer_positive else -1)
    n_slices = np.clip(np.round(32 + shift + rng.normal(0, 1.5, n)), 28, 36)  # 9 counts, as head CT has
    ids = [f"{name}-{i}" for i in range(n)]
    return pd.DataFrame({"set": name, "dataset": name, "study_id": ids, "any": y, "n_slices": n_slices,
                         "bleed": y + rng.normal(0, 0.7, n)})  # fmt: skip


def test_a_length_shortcut_is_chance_within_length_and_flips_between_sets() -> None:
    rng = np.random.default_rng(0)
    data = pd.concat([_set("internal (OOF)", 600, False, rng), _set("hospital", 600, True, rng)])
    studies = data[["dataset", "study_id", "n_slices"]]
    predictions = {
        "length": data.assign(s_any=-data["n_slices"]),  # reads the slice count and nothing else
        "bleed": data.assign(s_any=data["bleed"]),
    }
    table = length_check(predictions, studies).set_index(["approach", "set"])
    shortcut, honest = table.loc["length"], table.loc["bleed"]
    assert shortcut.loc["internal (OOF)", "auc"] > 0.75 and shortcut.loc["hospital", "auc"] < 0.25
    assert shortcut.loc["hospital", "auc within length"] == 0.5  # length explains it all
    assert shortcut.loc["hospital", "rank r (score, length)"] < -0.99
    for name in ("internal (OOF)", "hospital"):
        assert honest.loc[name, "auc"] > 0.8 and honest.loc[name, "auc within length"] > 0.75
    assert table.loc[("bleed", "hospital"), "auc of length alone"] > 0.75


def test_within_length_auc_skips_strata_with_one_class() -> None:
    y = np.array([0, 0, 0, 0, 1, 0, 1, 0, 1])
    n = np.array([10, 10, 10, 20, 20, 20, 30, 30, 30])
    s = np.array([0, 0, 0, 0, 1, 0, 1, 0, 1], dtype=float)
    assert within_length_auc(y, s, n) == 1.0  # the first stratum has no positive: left out, not 0.5
    assert np.isnan(within_length_auc(np.zeros(9), s, n))
