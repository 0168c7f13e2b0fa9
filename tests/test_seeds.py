"""Training seeds in every verdict: the bootstrap over patients and seeds together."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ct25d.evaluation.scoring import over_seeds, seed_draws
from ct25d.report.compare import INTERNAL, Resampler, claims_table
from ct25d.report.seeds import seed_table

N = 300


def _scored(rng: np.random.Generator, y: np.ndarray, noise: float) -> pd.DataFrame:
    return pd.DataFrame({"set": INTERNAL, "dataset": "rsna", "study_id": [f"s{i:03d}" for i in range(N)],
                         "patient_id": [f"p{i // 2:03d}" for i in range(N)], "any": y,
                         "s_any": 2 * y + rng.normal(0, noise, N), "t_any": 1.0})  # fmt: skip


def _seeds(noises: list[tuple[float, float]]) -> list[dict[str, pd.DataFrame]]:
    """One predictions dict per training seed: approaches A and B with these noise levels."""
    rng = np.random.default_rng(7)
    y = (np.arange(N) % 2).astype(float)
    return [{"A": _scored(rng, y, a), "B": _scored(rng, y, b)} for a, b in noises]


CLAIM = [{"claim": "A beats B", "better": "a", "than": "b", "metric": "auc"}]
KEYS = {"a": "A", "b": "B"}


def test_one_seed_gives_back_its_own_replicates() -> None:
    replicates = np.random.default_rng(0).normal(size=(1, 500))
    joint = over_seeds([0.3], replicates, seed_draws(500, 1, 0))
    assert joint.value == 0.3 and np.array_equal(joint.replicates, replicates[0])


def test_a_claim_that_reverses_in_another_training_run_is_not_supported_over_the_seeds() -> None:
    """Seed 0 alone supports A > B clearly; seed 1 reverses it. The mean over both seeds is still
    positive, but resampling the seeds puts a quarter of the replicates on seed 1 alone: the
    verdict over the seeds must not be "supported", and each seed's own D is listed."""
    runs = _seeds([(1.0, 3.0), (2.5, 1.2)])
    one = claims_table(CLAIM, KEYS, runs[:1], Resampler(1000, 0))
    assert one.iloc[0]["verdict"] == "supported"
    both = claims_table(CLAIM, KEYS, runs, Resampler(1000, 0))
    row = both.iloc[0]
    assert row["verdict"].startswith("not supported"), row
    first, second = (float(v) for v in row["per seed"].split(", "))
    assert first > 0 > second and row["difference"].value > 0


def test_a_claim_that_holds_in_every_training_run_stays_supported() -> None:
    both = claims_table(CLAIM, KEYS, _seeds([(1.0, 3.0), (1.1, 2.8)]), Resampler(1000, 0))
    assert both.iloc[0]["verdict"] == "supported"


def test_seed_table_gives_each_seed_its_spread_and_a_wider_interval_when_seeds_disagree() -> None:
    agree = seed_table(_seeds([(1.0, 3.0)] * 3), Resampler(1000, 0)).set_index("approach")
    spread = [(0.5, 3.0), (1.0, 3.0), (3.0, 3.0)]
    differ = seed_table(_seeds(spread), Resampler(1000, 0)).set_index("approach")
    assert differ.loc["A", "auc SD"] > 3 * agree.loc["A", "auc SD"]
    assert differ.loc["A", "auc"].width > agree.loc["A", "auc"].width
    assert len(agree.loc["A", "auc per seed"].split(", ")) == 3


def test_a_curve_point_trains_only_the_curve_families_with_their_own_settings() -> None:
    """Below the full fraction a sweep point trains the families `sweep.approaches` names (Stage 1
    always), each with the config's own entry, and keeps the claims among them only."""
    from ct25d.cli.sweep import _overlay

    config = {
        "splits": {"folds": 3},
        "stage1": {"seed": 0},
        "stage2": {"epochs": 4, "models": {"bilstm": {"name": "bilstm"}, "mamba2": {"name": "mamba2"}}},
        "baselines": {"epochs": 2, "models": {"r3d": {"name": "resnet10"}, "cnn25": {"name": "cnn25"}}},
        "compare": {"reference": "bilstm", "claims": [
            {"better": "bilstm", "than": "head"}, {"better": "bilstm", "than": "r3d"},
            {"better": "mamba2", "than": "bilstm"}, {"better": "cnn25", "than": "r3d"},
        ]},
        "sweep": {"approaches": ["2D resnet10t: thresholded head", "2.5D: Stage 2 bilstm", "3D: r3d"]},
    }  # fmt: skip
    assert _overlay(config, 1.0, 0) == {}  # the full run is the plain run: everything trains
    curve = _overlay(config, 0.5, 0)
    assert curve["splits"] == {"folds": 3, "train_fraction": 0.5}
    assert curve["stage2"] == {"epochs": 4, "models": {"bilstm": {"name": "bilstm"}}}
    assert curve["baselines"] == {"epochs": 2, "models": {"r3d": {"name": "resnet10"}}}
    assert curve["compare"] == {"reference": "bilstm", "claims": config["compare"]["claims"][:2]}
    seeded = _overlay(config, 0.5, 3)  # another seed on top keeps the reduction
    assert seeded["stage2"]["models"] == {"bilstm": {"name": "bilstm"}} and seeded["stage2"]["seed"] == 3
    assert "sweep" not in curve and _overlay({**config, "sweep": {}}, 0.5, 0).keys() == {"splits"}
