"""What the schema cannot check is checked when the DAG is built: every problem, each naming its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from ct25d.config_check import check_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, str(ROOT / "config" / "schema.yaml"))
    return config


def test_the_demo_config_has_no_problem(config: dict) -> None:
    assert check_config(config) == []


def real_dataset(tmp_path: Path, layout: str, header: str) -> dict:
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "labels.csv").write_text(header + "\n")
    return {
        "layout": layout,
        "role": "train",
        "shards": 1,
        "root": str(tmp_path / "root"),
        "labels": str(tmp_path / "labels.csv"),
        "stroke_type": "from_any",
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c, t: c["stage1"].update(monitor="val_lsos"), "stage1.monitor: 'val_lsos' is not one of"),
        (
            lambda c, t: c["stage1"].update(backbones=["resnet10"]),
            "stage1.backbones: 'resnet10' is not a timm model",
        ),
        (
            lambda c, t: c["stage1"].update(backbones=["resnet18.no_such_tag"], pretrained=True),
            "timm has no pretrained tag 'no_such_tag' for resnet18",
        ),
        (
            lambda c, t: c["stage1"].update(pretrained=str(t / "none.safetensors")),
            "stage1.pretrained: weights file",
        ),
        (lambda c, t: c["stage1"].update(labels=["any", "hemorrhage"]), "stage1.labels: ['hemorrhage']"),
        (
            lambda c, t: c["stage2"]["models"]["bilstm"].update(hiden=64),
            "stage2.models.bilstm: TypeError: BiLSTM.__init__() got an unexpected keyword argument 'hiden'",
        ),
        (
            lambda c, t: c["stage2"]["models"]["bigru_dilated"].update(kernel_size=4),
            "stage2.models.bigru_dilated: ValueError: kernel_size must be odd",
        ),
        (
            lambda c, t: c["stage2"]["models"]["transformer"].update(in_dim=8),
            "stage2.models.transformer: ['in_dim']",
        ),
        (
            lambda c, t: c["compare"]["claims"].append({"claim": "x", "better": "bilstm", "than": "lstm3d"}),
            "compare.claims[3].than: 'lstm3d' is not an approach of this config",
        ),
        (
            lambda c, t: c["compare"]["claims"][0].update(kind="equivalence", margin=0),
            "compare.claims[0]: compare.claims: '(a) 2.5D Stage 2 beats the 2D thresholded head': kind "
            "equivalence needs margin > 0",
        ),
        (
            lambda c, t: c["compare"]["claims"][0].update(primary="elsewhere"),
            "compare.claims[0].primary: 'elsewhere' is not a scored set "
            "(['internal (OOF)', 'cq500', 'hospital'])",
        ),
        (  # two backbones: a Stage-2 model or head alone names two approaches
            lambda c, t: c["stage1"].update(backbones=["resnet10t", "resnet14t"]),
            "compare.claims[0].better: 'bilstm' is not an approach of this config",
        ),
        (
            lambda c, t: c["compare"].update(reference="lstm3d"),
            "compare.reference: 'lstm3d' is not an approach",
        ),
        (lambda c, t: c["stage1"].update(gpus=4, batch_size=2), "stage1.batch_size: 2 is less than"),
        (
            lambda c, t: c["ingest"].update(exclude_series="(unclosed"),
            "ingest.exclude_series: not a valid regular",
        ),
        (lambda c, t: c["datasets"]["hospital"].update(folder_pattern="^[^/]+/"), "needs a group"),
        (
            lambda c, t: c["datasets"]["cq500"].update(stroke_type="from_labels"),
            "from_labels needs layout dicom_tree",
        ),
        (
            lambda c, t: c["datasets"].update(rsna={**c["datasets"]["rsna"], "role": "external"}),
            "no dataset has role: train",
        ),
        (
            lambda c, t: c["datasets"].update(
                rsna={
                    "layout": "rsna",
                    "role": "train",
                    "shards": 1,
                    "root": "/no/such",
                    "labels": "/no/labels.csv",
                    "stroke_type": "from_any",
                }
            ),
            "datasets.rsna.root: /no/such is not a folder",
        ),
        (
            lambda c, t: c["datasets"].update(rsna=real_dataset(t, "rsna", "image,label")),
            "datasets.rsna.labels: ",
        ),
        (
            lambda c, t: c["datasets"].update(
                cq500={**real_dataset(t, "cq500", "name,Category"), "role": "external"}
            ),
            "lacks column(s) ['R1:ICH'",
        ),
        (
            lambda c, t: c["datasets"].update(
                hospital={
                    **real_dataset(t, "dicom_tree", "study,any"),
                    "role": "external",
                    "stroke_type": "from_labels",
                }
            ),
            "datasets.hospital.stroke_type: from_labels, but",
        ),
        (
            lambda c, t: c["datasets"].update(
                new={**real_dataset(t, "dicom_tree", "study,any"), "role": "predict"}
            ),
            "datasets.new.labels: role predict reads no labels",
        ),
        (
            lambda c, t: c["datasets"].update(
                hospital={k: v for k, v in real_dataset(t, "dicom_tree", "").items() if k != "labels"}
                | {"role": "external"}
            ),
            "datasets.hospital.labels: role external needs a label file",
        ),
        (
            lambda c, t: c["datasets"]["hospital_new"].update(stroke_type="ischemic"),
            "datasets.hospital_new.stroke_type: ischemic labels every study, but role predict",
        ),
        (
            lambda c, t: c["predict"].update(approaches=["best", "lstm3d"]),
            "predict.approaches: 'lstm3d' is not reference or best nor an approach of this config",
        ),
        (
            lambda c, t: c["bundle"].update(approaches=["reference", "cnn25"]),
            "bundle.approaches: 'cnn25' cannot be bundled: bundles hold Stage-2 approaches and 3D nets",
        ),
        (
            lambda c, t: c["bundle"].update(approaches=["head"]),
            "bundle.approaches: 'head' cannot be bundled",
        ),
        (  # an unlabelled set is never scored, so no claim can rest on it
            lambda c, t: c["compare"]["claims"][0].update(primary="hospital_new"),
            "compare.claims[0].primary: 'hospital_new' is not a scored set",
        ),
    ],
)
def test_each_problem_is_named(config: dict, tmp_path: Path, edit, message: str) -> None:
    bad = copy.deepcopy(config)
    edit(bad, tmp_path)
    problems = check_config(bad)
    assert any(message in p for p in problems), problems


def test_claims_name_each_backbones_runs(config: dict) -> None:
    """With two backbones every claim and the reference name their backbone, and then nothing is wrong."""
    config["stage1"]["backbones"] = ["resnet10t", "resnet14t"]
    config["compare"]["reference"] = "resnet10t:bilstm"
    for claim in config["compare"]["claims"]:
        claim.update({side: f"resnet14t:{claim[side]}" for side in ("better", "than") if claim[side] in
                      ("bilstm", "head", "cosine")})  # fmt: skip
    assert check_config(config) == []


def test_every_problem_is_listed_at_once(config: dict) -> None:
    config["stage1"]["monitor"] = "val_lsos"
    config["stage2"]["models"]["bilstm"]["hiden"] = 1
    assert len(check_config(config)) == 2


def test_a_cached_verdict_is_keyed_by_the_model_settings(config: dict, tmp_path: Path) -> None:
    """A passing model check is remembered (the next plan skips torch); a changed model setting has
    another key, so its problem is still found; dataset settings (checked every time) do not enter
    the key."""
    from ct25d.config_check import library_key

    assert check_config(config, tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == [f"config-check-{library_key(config)}.ok"]
    assert check_config(config, tmp_path) == []
    bad = copy.deepcopy(config)
    bad["stage2"]["models"]["bilstm"]["hiden"] = 8
    assert library_key(bad) != library_key(config)
    problems = check_config(bad, tmp_path)
    assert any("stage2.models.bilstm" in p for p in problems), problems
    assert len(list(tmp_path.iterdir())) == 1  # a failing verdict is never cached
    moved = copy.deepcopy(config)
    moved["datasets"]["rsna"]["shards"] = 7
    assert library_key(moved) == library_key(config)
