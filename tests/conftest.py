"""Shared fixtures: a tiny synthetic cohort per layout, written once per test session as real DICOM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def tiny_synthetic() -> dict:
    """The demo's `synthetic` block at 64 px with every header quirk frequent."""
    synthetic = copy.deepcopy(demo_config()["synthetic"])
    for site in synthetic["sites"].values():
        site["matrix"] = 64
        site.pop("thin_thickness_mm", None)
    synthetic.update(compressed_fraction=0.4, wrapped_fraction=0.3, tilt_fraction=0.2, broken_studies=6)
    return synthetic


@pytest.fixture(scope="session")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{layout: cohort folder} for an RSNA-style and a CQ500-style tiny cohort."""
    from ct25d.synth.cohort import generate_cohort

    base = tmp_path_factory.mktemp("synthetic")
    out = {}
    for layout, n, seed, site in (("rsna", 14, 7, "A"), ("cq500", 8, 8, "B")):
        out[layout] = base / layout
        generate_cohort(out[layout], layout, {"n_studies": n, "seed": seed, "site": site}, tiny_synthetic(),
                        workers=2, progress=False)  # fmt: skip
    return out
