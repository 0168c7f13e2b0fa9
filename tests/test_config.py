"""The shipped config validates; a wrong key or value is refused with a message naming it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "config" / "schema.yaml")


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_demo_config_is_valid_and_defaults_fill(config: dict) -> None:
    del config["ingest"]["chunk_slices"]
    validate(config, SCHEMA)
    assert config["ingest"]["chunk_slices"] == 64


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c["ingest"].update(spacing_tolerence=0.1), "spacing_tolerence"),
        (lambda c: c["ingest"].update(spacing_tolerance=-1), "spacing_tolerance"),
        (lambda c: c["datasets"]["rsna"].update(layout="nifti"), "nifti"),
        (lambda c: c["datasets"]["rsna"].update(shards=0), "shards"),
        (lambda c: c["datasets"]["cq500"].update(root="/data/cq500"), "cq500"),
    ],
)
def test_bad_key_or_value_is_named(config: dict, edit, named: str) -> None:
    bad = copy.deepcopy(config)
    edit(bad)
    with pytest.raises(WorkflowError, match=named):
        validate(bad, SCHEMA)


def test_a_predict_dataset_needs_no_labels(config: dict) -> None:
    """The demo predicts an unlabelled copy of its hospital archive; a real archive of role predict is a
    root alone, and the `predict` block defaults to the comparison's reference and best approach."""
    assert config["datasets"]["hospital_new"]["role"] == "predict"
    assert config["datasets"]["hospital_new"]["synthetic"] == config["datasets"]["hospital"]["synthetic"]
    real = copy.deepcopy(config)
    del real["predict"]
    real["datasets"]["hospital_new"] = {"layout": "dicom_tree", "role": "predict", "root": "/data/new"}
    validate(real, SCHEMA)
    assert real["predict"]["approaches"] == ["reference", "best"]
    both = copy.deepcopy(config)
    both["datasets"]["hospital_new"]["root"] = "/data/new"  # a root beside a synthetic cohort
    with pytest.raises(WorkflowError, match="hospital_new"):
        validate(both, SCHEMA)
