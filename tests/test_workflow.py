"""Real Snakemake runs of the DAG on a tiny synthetic cohort: it completes, a second run does
nothing, and a setting change reruns only the rules that read it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = yaml.safe_load("""
results: results
datasets:
  rsna: {layout: rsna, role: train, shards: 2, synthetic: {n_studies: 10, seed: 1, site: A}}
  cq500: {layout: cq500, role: external, shards: 1, synthetic: {n_studies: 3, seed: 2, site: B}}
  hospital:
    layout: dicom_tree
    role: external
    label_key: folder
    folder_pattern: "^(?P<study>[^/]+/[^/]+)/"
    stroke_type: from_labels
    synthetic: {n_studies: 3, seed: 3, site: C}
  hospital_new:  # the same archive again, unlabelled: its predictions must equal hospital's external scores
    layout: dicom_tree
    role: predict
    label_key: folder
    folder_pattern: "^(?P<study>[^/]+/[^/]+)/"
    synthetic: {n_studies: 3, seed: 3, site: C}
synthetic:
  sites:
    A: {noise_hu: 4.0, fov_mm: 230.0, matrix: 48, thickness_mm: 5.0}
    B: {noise_hu: 9.0, fov_mm: 250.0, matrix: 48, thickness_mm: 5.0}
    C: {noise_hu: 6.0, fov_mm: 240.0, matrix: 48, thickness_mm: 5.0}
  broken_studies: 1
preprocess: {in_plane_mm: null, size: 32}
splits: {folds: 2}
qc: {per_dataset: 1}
stage1: {backbones: [resnet10t], image_size: 32, epochs: 1, batch_size: 16, tta_flip: false}
stage2: {models: {bilstm: {name: bilstm, hidden: 16}}, epochs: 2}
baselines:
  volume: {max_depth: 32}
  epochs: 1
  batch_size: 2
  models:
    r3d: {name: resnet10, conv1_t_stride: 2, supervision: slice, pooling: max, crop_depth: 8}
    acs: {name: acs, init: stage1}
    cnn25: {name: cnn25, slices: 8, hidden: 16}
    thick: {name: thick2d, k: 3, image_size: 32}
predict: {approaches: [reference, best, r3d, cnn25]}
bundle: {approaches: [reference, r3d]}
""")
STROKE_WINDOW = {"name": "stroke", "center": 35, "width": 40}
SUBDURAL_WINDOW = {"name": "subdural", "center": 75, "width": 215}
WIDE_WINDOW = {"name": "wide", "center": 150, "width": 500}
UPSTREAM = [
    "synth_cohort", "scan", "ingest_shard", "ingest_report", "resample_shard", "slice_shard", "splits",
    "index", "qc", "train_slices", "embed_shard", "embed", "eval_stage1", "train_sequence",
]  # fmt: skip


def snakemake(workdir: Path, config: dict, *args: str, targets: tuple[str, ...] = ("all",)) -> str:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "2",
           "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def planned_rules(output: str) -> set[str]:
    """Rule names in the job-stats table of a dry run."""
    return set(re.findall(r"^(\w+)\s+\d+\s*$", output, flags=re.M)) - {"total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    snakemake(workdir, TINY)
    return workdir


@pytest.mark.workflow
def test_first_run_produces_the_ingest_artifacts(workdir: Path) -> None:
    for dataset in ("rsna", "cq500", "hospital"):
        out = workdir / "results" / dataset
        for name in ("manifest.parquet", "slices.parquet", "rejections.csv", "series_choice.csv",
                     "file_outcomes.parquet", "ingest_summary.json"):  # fmt: skip
            assert (out / name).is_file(), f"{dataset}/{name}"
        counts = json.loads((out / "ingest_summary.json").read_text())["counts"]
        assert counts["studies_found"] == counts["studies_converted"] + counts["studies_rejected"] > 0
        assert (workdir / "results" / "logs" / "scan" / f"{dataset}.log").stat().st_size > 0
    assert len(list((workdir / "results" / "rsna" / "hu").glob("shard-*.zarr"))) == 2
    # Temporary names never survive a successful run.
    assert not list((workdir / "results").rglob(".*.tmp-*"))


@pytest.mark.workflow
def test_second_run_has_nothing_to_do(workdir: Path) -> None:
    assert "Nothing to be done" in snakemake(workdir, TINY, "-n")


@pytest.mark.workflow
def test_a_lost_embedding_shard_is_redone_alone(workdir: Path) -> None:
    embeddings = workdir / "results" / "stage1" / "resnet10t" / "fold0" / "embeddings"
    shards = sorted(embeddings.glob("*-shard-*.zarr"))
    assert [p.name for p in shards] == ["cq500-shard-0.zarr", "hospital-shard-0.zarr",
                                        "hospital_new-shard-0.zarr", "rsna-shard-0.zarr",
                                        "rsna-shard-1.zarr"]  # fmt: skip
    # As a run killed during that shard's job leaves it: Snakemake removed the job's output, and the
    # gathering job never ran.
    moved, rows = workdir / "lost.zarr", embeddings / "rows.parquet"
    kept, stat = rows.read_bytes(), rows.stat()
    shards[2].rename(moved)
    rows.unlink()
    try:
        plan = snakemake(workdir, TINY, "-n", "--quiet", "rules", targets=(str(rows.relative_to(workdir)),))
        assert re.search(r"^embed_shard\s+1\s*$", plan, flags=re.M)  # that shard only, then what reads it
        assert "embed" in planned_rules(plan) and "train_slices" not in planned_rules(plan)
    finally:  # as it was, times included: the later tests plan against an up-to-date run
        rows.write_bytes(kept)
        os.utime(rows, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        moved.rename(shards[2])


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("section", "key", "value", "first"),
    [
        ("ingest", "compression_level", 5, "ingest_shard"),
        ("ingest", "spacing_tolerance", 0.2, "scan"),
        ("ingest", "tilt", "keep", "scan"),
        ("stage1", "tta_flip", True, "embed_shard"),
        ("preprocess", "in_plane_mm", 6.0, "resample_shard"),
        ("preprocess", "windows", [STROKE_WINDOW, SUBDURAL_WINDOW, WIDE_WINDOW], "slice_shard"),
        ("splits", "seed", 1, "splits"),
        ("stage1", "lr", 0.002, "train_slices"),
        ("stage2", "lr", 0.002, "train_sequence"),
        ("baselines", "lr", 0.002, "train_baseline"),
        ("baselines", "volume", {"max_depth": 40}, "volume_shard"),
    ],
)
def test_a_setting_reruns_its_rule_and_nothing_upstream(workdir: Path, section, key, value, first) -> None:
    changed = json.loads(json.dumps(TINY))
    changed.setdefault(section, {})[key] = value
    planned = planned_rules(snakemake(workdir, changed, "-n", "--quiet", "rules"))
    assert first in planned
    upstream = UPSTREAM[: UPSTREAM.index(first)] if first in UPSTREAM else UPSTREAM
    assert not planned & set(upstream), f"{section}.{key} reruns {sorted(planned & set(upstream))}"
    assert {"compare", "all"} <= planned


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("stage1", "device", "cpu"),
        ("stage1", "eval_batch_size", 7),
        ("stage1", "checkpoint_every_steps", 3),
        ("stage1", "embed_batch_size", 5),
        ("stage1", "gpus", 2),
        ("stage2", "device", "cpu"),
        ("baselines", "device", "cpu"),
        ("baselines", "mem_mb", 6000),
    ],
)
def test_runtime_settings_rerun_nothing(workdir: Path, section, key, value) -> None:
    changed = json.loads(json.dumps(TINY))
    changed.setdefault(section, {})[key] = value
    assert "Nothing to be done" in snakemake(workdir, changed, "-n")


@pytest.mark.workflow
def test_dataset_order_reruns_nothing(workdir: Path) -> None:
    changed = json.loads(json.dumps(TINY))
    changed["datasets"] = dict(reversed(list(changed["datasets"].items())))
    assert list(changed["datasets"]) != list(TINY["datasets"])
    assert "Nothing to be done" in snakemake(workdir, changed, "-n")


@pytest.mark.workflow
def test_preprocess_outputs(workdir: Path) -> None:
    index = pd.read_parquet(workdir / "results" / "index" / "slices.parquet")
    studies = pd.read_parquet(workdir / "results" / "index" / "studies.parquet")
    assert set(index["dataset"]) == {"rsna", "cq500", "hospital", "hospital_new"}
    assert (studies.query("role == 'external'")["fold"] == -1).all()
    hospital = studies.query("dataset == 'hospital'")  # stroke class from labels.csv's stroke_type
    assert hospital["label"].notna().all() and hospital["stroke_type"].notna().all()
    assert len(list((workdir / "results" / "qc" / "montages").glob("*.png"))) == 4
    assert (workdir / "results" / "qc" / "summary.png").stat().st_size > 10_000


@pytest.mark.workflow
def test_stage_outputs(workdir: Path) -> None:
    results = workdir / "results"
    assert (results / "stage1" / "resnet10t" / "fold0" / "eval" / "stage1_eval.json").is_file()
    assert (results / "stage2" / "bilstm" / "resnet10t" / "fold0" / "predictions_studies.parquet").is_file()
    for baseline in ("r3d", "acs", "cnn25", "thick"):
        assert (results / "baselines" / baseline / "fold0" / "predictions_studies.parquet").is_file()
    assert (results / "baselines" / "r3d" / "fold0" / "benchmark.tsv").is_file()
    # supervision: slice scores the slice store's own slices; every run records what it learned
    r3d_slices = pd.read_parquet(results / "baselines" / "r3d" / "fold0" / "predictions_slices.parquet")
    assert not r3d_slices.empty and r3d_slices["slice_id"].notna().all()
    r3d = json.loads((results / "baselines" / "r3d" / "fold0" / "metrics.json").read_text())
    assert r3d["supervision"] == "slice" and "train_auc_any_last" in r3d and "before_training" in r3d
    table = pd.read_csv(results / "comparison" / "comparison.csv")
    assert len(table) == 7  # Stage-1 head, Stage-1 cosine, Stage-2 bilstm, 4 baselines
    assert set(table.loc[table["stage"] == "baseline", "approach"]) == {
        "3D: r3d", "3D: acs", "2.5D stacked embeddings: cnn25", "2D thickened: thick"}  # fmt: skip
    assert {"volume F1 (cq500)", "volume F1 (hospital)"} <= set(table.columns)  # each external set apart


@pytest.mark.workflow
def test_predict_scores_the_unlabelled_copy_as_the_external_archive(workdir: Path) -> None:
    """`snakemake predict` on the tiny cohort: per chosen approach studies.csv, slices.parquet and a PNG
    per study; the unlabelled set never enters the folds, the training or the comparison; and since
    it is the hospital archive again, each study's probability is the one the comparison's external
    path gives the same DICOMs."""
    from ct25d.report.compare import load_runs, scored_predictions

    results = workdir / "results"
    shutil.rmtree(results / "predictions")
    output = snakemake(workdir, TINY, "--quiet", "rules", targets=("predict",))
    assert planned_rules(output) == {"predict_dataset", "predict"}, output[-2000:]
    out = results / "predictions" / "hospital_new"
    chosen = pd.read_csv(out / "approaches.csv")
    # the reference (bi-LSTM); `best` falls back to it (no internal AUC with 2 positives); two baselines
    assert chosen["folder"].tolist() == ["resnet10t-bilstm", "r3d", "cnn25"]
    assert "the reference" in chosen.loc[0, "why"] and (chosen["studies"] == 3).all()
    index = pd.read_parquet(results / "index" / "slices.parquet").query("dataset == 'hospital_new'")
    for folder in chosen["folder"]:
        studies = pd.read_csv(out / folder / "studies.csv")
        assert len(studies) == 3 and studies["problem"].isna().all()  # empty: every study predicted
        assert studies["prob_any"].between(0, 1).all() and studies["call_any"].isin([0, 1]).all()
        assert studies["series"].str.startswith(tuple(studies["name"])).all()  # <patient>/<study>/<series>
        assert {"tilt_corrected", "gaps", "files_rejected", "flags"} <= set(studies.columns)
        slices = pd.read_parquet(out / folder / "slices.parquet")
        assert len(slices) == len(index) and set(slices["slice_id"]) == set(index["slice_id"])
        assert {p.stem for p in (out / folder).glob("*.png")} == set(studies["study_id"])
        # per study: every slice (Stage 2), the volume's 32 (r3d: max_depth), none (cnn25: whole volumes)
        scored = slices.groupby("study_id")["prob_any"].count()
        kept = {"resnet10t-bilstm": 10**6, "r3d": 32, "cnn25": 0}[folder]
        expected = index.groupby("study_id").size().clip(upper=kept)
        pd.testing.assert_series_equal(scored, expected, check_names=False)
    # never in the folds, the training or the scores
    folds = pd.read_parquet(results / "splits" / "folds.parquet").query("dataset == 'hospital_new'")
    assert len(folds) == 3 and (folds["fold"] == -1).all() and (folds["inner_for"] == -1).all()
    long = pd.read_csv(results / "comparison" / "comparison_long.csv")
    assert set(long["set"]) == {"internal (OOF)", "cq500", "hospital"}
    assert not any(
        "hospital_new" in c for c in pd.read_csv(results / "comparison" / "comparison.csv").columns
    )
    run = pd.read_parquet(
        results / "stage2" / "bilstm" / "resnet10t" / "fold0" / "predictions_studies.parquet"
    )
    assert set(run.loc[run["dataset"] == "hospital_new", "split"]) == {"predict"}
    assert run.loc[run["dataset"] == "hospital_new", "any"].isna().all()  # unknown, not 0
    # the same DICOMs, registered as external and as predict: the same probabilities
    stage2 = [("resnet10t:bilstm", results / "stage2" / "bilstm" / "resnet10t" / "fold0" / "metrics.json")]
    baselines = [results / "baselines" / b / "fold0" / "metrics.json" for b in ("r3d", "cnn25")]
    external, _ = scored_predictions(load_runs([], stage2, baselines), ["any"])
    for folder, approach in zip(chosen["folder"], chosen["approach"], strict=True):
        mine = pd.read_csv(out / folder / "studies.csv").set_index("study_id")["prob_any"]
        theirs = external[approach].query("set == 'hospital'").set_index("study_id")["p_any"]
        assert sorted(mine.index) == sorted(theirs.index)
        np.testing.assert_allclose(mine.loc[theirs.index], theirs, atol=1e-6, err_msg=folder)
    log = (results / "logs" / "predict" / "hospital_new.log").read_text()
    assert "predicting hospital_new with" in log


@pytest.mark.parametrize(("folder", "networks"), [("resnet10t-bilstm", {"stage1.ts", "stage2.ts"}),
                                                  ("r3d", {"volume.ts"})])  # fmt: skip
def test_a_bundle_predicts_as_the_workflow_without_the_workflow(
    workdir: Path, tmp_path: Path, folder: str, networks: set[str]
) -> None:
    """`all` writes the bundles of the reference and a 3D net (MONAI layout, TorchScript per fold, a
    model card); `ct25d predict-bundle`, run elsewhere on the unlabelled archive's DICOM folder with only
    the bundle, gives the probabilities, thresholds and calls `snakemake predict` gave the same studies
    (to 1e-5)."""
    results = workdir / "results"
    bundle = results / "bundles" / folder
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert {"version", "monai_version", "pytorch_version", "network_data_format", "task"} <= set(metadata)
    assert [f["fold"] for f in metadata["ct25d"]["folds"]] == [0]
    assert metadata["ct25d"]["metrics"], "the comparison's scores travel with the model"
    assert {p.name for p in (bundle / "models" / "fold0").iterdir()} == networks
    inference = (bundle / "configs" / "inference.json").read_text()
    assert "pseudonym_salt" not in inference
    assert "## How it was chosen and scored" in (bundle / "docs" / "README.md").read_text()
    # elsewhere: a copy of the bundle, no results folder, no Snakemake
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    out = tmp_path / "predicted"
    archive = results / "synthetic" / "hospital_new" / "archive"
    # the run's own pseudonym key (which the bundle does not carry), so that the study ids match
    salt = json.loads((results / "hospital_new" / "scan" / "settings.json").read_text())["settings"]
    proc = subprocess.run(
        [sys.executable, "-m", "ct25d", "predict-bundle", str(copy), str(archive), str(out),
         "--dataset", "hospital_new", "--salt", salt["pseudonym_salt"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    workflow = results / "predictions" / "hospital_new" / folder
    mine = pd.read_csv(out / "studies.csv").set_index("study_id")
    theirs = pd.read_csv(workflow / "studies.csv").set_index("study_id")
    assert sorted(mine.index) == sorted(theirs.index) and len(mine) == 3
    for column in ("prob_any", "threshold_any", "prob_epidural"):
        np.testing.assert_allclose(mine.loc[theirs.index, column], theirs[column], atol=1e-5, err_msg=column)
    assert (mine.loc[theirs.index, "call_any"] == theirs["call_any"]).all()
    assert (mine.loc[theirs.index, "series"] == theirs["series"]).all()
    slices = pd.read_parquet(out / "slices.parquet").set_index("slice_id")
    expected = pd.read_parquet(workflow / "slices.parquet").set_index("slice_id")
    assert sorted(slices.index) == sorted(expected.index)
    np.testing.assert_allclose(slices.loc[expected.index, "prob_any"], expected["prob_any"], atol=1e-5)
    assert {p.stem for p in out.glob("*.png")} == set(mine.index)
    assert (out / "series_choice.csv").is_file() and (out / "rejections.csv").is_file()
    # a folder that is not a bundle is named, not a traceback
    bad = subprocess.run([sys.executable, "-m", "ct25d", "predict-bundle", str(tmp_path), str(tmp_path), str(
        tmp_path / "x")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "not a ct25d bundle" in bad.stderr


@pytest.mark.workflow
def test_the_comparison_scores_where_the_image_models_looked(workdir: Path) -> None:
    """Stage 1, the thickened 2D and the 3D nets point at the synthetic truth: the table's pointing-game
    columns hold a number for them, or "too few calls (n k)" below `compare.min_positives` (the tiny
    cohort's one fold model scores fewer than 5), or say why not, and n/a for the models that read
    no image; the galleries reach the report. Turned off, no saliency job is planned and only the
    comparison reruns."""
    results = workdir / "results"
    table = pd.read_csv(results / "comparison" / "comparison.csv", keep_default_na=False)
    table = table.set_index("approach")
    columns = ["pointing game (OOF)", "pointing game (cq500)", "pointing game (hospital)"]
    assert set(columns) <= set(table.columns)
    image = ["2D resnet10t: thresholded head", "2D thickened: thick", "3D: r3d", "3D: acs"]
    number = r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(n \d+, chance \d\.\d{2}\)$"
    few = r"^too few calls \(n [1-4]\)$"  # scored, but fewer than min_positives (5): no number
    cells = table.loc[image, columns]
    assert cells["pointing game (OOF)"].str.match(f"{number}|{few}").any(), cells
    assert not (cells == "n/a").any().any(), cells
    assert (table.drop(index=image)[columns] == "n/a").all().all()  # Stage 2, cosine, cnn25: no image
    # Which positive calls a 1-epoch net makes is chance: each 3D net's calls are scored, and at least
    # one of the two 3D nets (z-kept r3d, ACS from Stage 1) points at a drawn lesion.
    pointing = [pd.read_parquet(results / "saliency" / "baselines" / net / "fold0" / "pointing.parquet")
                for net in ("r3d", "acs")]  # fmt: skip
    assert any(calls["pointed"].any() for calls in pointing)
    for calls in pointing:
        assert calls["hit"].dropna().isin([0.0, 1.0]).all()
        assert (calls.loc[calls["hit"].notna(), "truth"] == 1).all()  # true positives only
    assert (results / "comparison" / "saliency.png").stat().st_size > 10_000
    off = json.loads(json.dumps(TINY))
    off["compare"] = {"saliency": {"enabled": False}}
    planned = planned_rules(snakemake(workdir, off, "-n", "--quiet", "rules"))
    assert "compare" in planned and not {"saliency_stage1", "saliency_baseline", "saliency_gallery"} & planned


@pytest.mark.workflow
def test_two_backbones_give_each_stage2_model_one_row_per_backbone(tmp_path: Path) -> None:
    """Two Stage-1 backbones: Stage 2 trains on each, and the comparison keeps one row per backbone's
    Stage-2 approach (they once merged into one, every study twice), which claims name by
    `<backbone>:<model>`; the reference defaults to the first backbone's first Stage-2 model."""
    config = json.loads(json.dumps(TINY))
    backbones = ["resnet10t", "mobilenetv3_small_050"]
    config["stage1"]["backbones"] = backbones
    config["baselines"]["models"] = {}
    config["predict"] = {"approaches": ["reference"]}  # TINY's also names baselines this run lacks
    config["bundle"] = {"approaches": ["reference"]}
    claim = {"claim": "the backbone matters little", "better": f"{backbones[1]}:bilstm",
             "than": "resnet10t:bilstm", "kind": "equivalence", "margin": 0.5}  # fmt: skip
    # min_positives 1: the tiny cohort's 3 positives still get a p (tested end to end, not judged)
    config["compare"] = {"bootstrap": 200, "min_positives": 1, "claims": [claim]}
    plan = snakemake(tmp_path, config, "-n", "--quiet", "rules")
    for rule in ("train_slices", "train_sequence"):  # 2 backbones x fold 0 (the default folds)
        assert re.search(rf"^{rule}\s+2\s*$", plan, flags=re.M), plan
    assert "train_baseline" not in planned_rules(plan)
    snakemake(tmp_path, config)
    table = pd.read_csv(tmp_path / "results" / "comparison" / "comparison.csv").set_index("approach")
    stage2 = [f"2.5D {b}: Stage 2 bilstm" for b in backbones]
    assert sorted(table.index[table["stage"] == "stage2"]) == sorted(stage2)
    assert len(table) == 6 and table.index.is_unique  # and each backbone's head and cosine rules
    delta = table["ΔAUC vs ref (OOF)"]  # against resnet10t's bi-LSTM, the reference
    assert pd.notna(delta[stage2[1]]) and pd.isna(delta[stage2[0]])
    long = pd.read_csv(tmp_path / "results" / "comparison" / "comparison_long.csv")
    assert (long.groupby("approach")["set"].count() == 3).all()  # OOF, cq500, hospital: once each
    claims = pd.read_csv(tmp_path / "results" / "comparison" / "claims.csv")
    primary = claims[claims["role"] == "primary"].iloc[0]
    assert (primary["better"], primary["than"]) == (stage2[1], stage2[0])
    assert primary["kind"] == "equivalence" and primary["set"] == "internal (OOF)"
    assert 0 < primary["p"] <= primary["p (Holm)"] <= 1  # one primary claim: Holm leaves its p as it is
    assert primary["verdict"].startswith(("supported", "not supported"))


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("section", "value", "named"),
    [
        ("ingest", {"spacing_tolerence": 0.1}, "spacing_tolerence"),
        ("stage1", {"monitor": "val_lsos"}, "stage1.monitor: 'val_lsos'"),
        ("stage1", {"backbones": ["resnet10"]}, "stage1.backbones: 'resnet10' is not a timm model"),
        (
            "stage2",
            {"models": {"bilstm": {"name": "bilstm", "hiden": 16}}},
            "unexpected keyword argument 'hiden'",
        ),
        (
            "baselines",
            {"models": {"x": {"name": "acs", "mode": "3d"}}},
            "baselines.models.x: ConfigError: acs mode",
        ),
        (
            "baselines",
            {"volume": {"depth": 8, "size": 32}, "models": {"x": {"name": "acs"}}},
            "baselines.models.x: RuntimeError: input image (T: 1 H: 4 W: 4) smaller than kernel size",
        ),
    ],
)
def test_bad_config_value_is_named_before_any_job(tmp_path: Path, section, value, named) -> None:
    bad = json.loads(json.dumps(TINY))
    bad[section] = value
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    cmd = [sys.executable, "-m", "snakemake", "all", "-n", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_real_archive_config_plans_the_whole_dag(cohorts, tmp_path: Path) -> None:
    """config/datasets/real.yaml, pointed at archives in the real layouts, validates alone
    (--replace-workflow-config) and plans every stage without generating anything."""
    real = yaml.safe_load((ROOT / "config" / "datasets" / "real.yaml").read_text())
    real["datasets"]["rsna"].update(root=str(cohorts["rsna"] / "stage_2_train"),
                                    labels=str(cohorts["rsna"] / "stage_2_train.csv"))  # fmt: skip
    real["datasets"]["cq500"].update(root=str(cohorts["cq500"]), labels=str(cohorts["cq500"] / "reads.csv"))
    output = snakemake(tmp_path, real, "-n", "--quiet", "rules", "--replace-workflow-config")
    planned = planned_rules(output)
    assert "synth_cohort" not in planned
    assert {
        "scan",
        "ingest_shard",
        "train_slices",
        "train_sequence",
        "volume_shard",
        "train_baseline",
        "compare",
    } <= planned


@pytest.mark.workflow
def test_report_opens_in_headless_chromium(workdir: Path) -> None:
    """`snakemake all --report` builds the HTML report; Chromium loads it without a script error and
    its app renders the result categories, the comparison among them."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    report = workdir / "results" / "report.html"
    snakemake(workdir, TINY, "--report", str(report))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
           "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not errors, errors
    for category in ("Comparison", "Baselines", "Stage 1", "Preprocessing"):
        assert f"<span>{category}</span>" in proc.stdout  # rendered by the report's app, not just data


@pytest.mark.workflow
def test_study_config_plans_every_family_on_every_fold(tmp_path: Path) -> None:
    """config/study.yaml (the harder cohort, all folds) validates alone and plans the whole comparison."""
    study = yaml.safe_load((ROOT / "config" / "study.yaml").read_text())
    assert study["synthetic"]["difficulty"] == "clinical" and study["synthetic"]["mimics"]
    output = snakemake(tmp_path, study, "-n", "--quiet", "rules", "--replace-workflow-config")
    planned = planned_rules(output)
    assert {"synth_cohort", "train_slices", "train_sequence", "train_baseline", "compare"} <= planned
    runs = re.search(r"^train_baseline\s+(\d+)\s*$", output, flags=re.M)
    assert runs and int(runs.group(1)) == len(study["baselines"]["models"]) * len(study["stage1"]["folds"])


@pytest.mark.workflow
def test_rules_find_ct25d_without_an_activated_venv(tmp_path: Path) -> None:
    """`.venv/bin/snakemake` with a PATH that lacks the venv (no `activate`): the first rules still
    run, because the workflow puts the interpreter's own bin folder first."""
    snakemake_bin = Path(sys.executable).parent / "snakemake"
    if not snakemake_bin.is_file():
        pytest.skip(f"no snakemake script beside {sys.executable}")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    bare = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != snakemake_bin.parent)
    target = "results/rsna/scan/files.parquet"
    cmd = [str(snakemake_bin), target, "--cores", "1", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PATH": bare}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / target).is_file()


@pytest.mark.workflow
def test_sweep_runs_each_fraction_and_seed_and_draws_the_curve_and_the_seeds(tmp_path: Path) -> None:
    """`ct25d sweep` on the tiny cohort, two training fractions and two training seeds (three runs):
    the plain run is the first point (nothing added to the config), each point's comparison is saved
    with its training sizes (smaller at the smaller fraction, the scored studies the same), the seed
    changes the trained models but not the studies, the curve and the seeds' table and claims are
    written, and a second call runs nothing again."""
    config = json.loads(json.dumps(TINY))
    config["baselines"]["models"] = {"r3d": TINY["baselines"]["models"]["r3d"]}
    config["predict"] = {"approaches": ["reference", "r3d"]}
    config["sweep"] = {"train_fractions": [0.6, 1.0], "seeds": [0, 1]}
    claim = {"claim": "Stage 2 beats the head", "better": "bilstm", "than": "head", "metric": "auc"}
    config["compare"] = {"bootstrap": 200, "min_positives": 1, "claims": [claim]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "ct25d", "sweep", "--configfile", "sweep.yaml", "--cores", "2",
           "--", "--snakefile", str(ROOT / "Snakefile")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = tmp_path / "results" / "sweep"
    points = {(0.6, 0): "fraction-0.6-seed-0", (1.0, 0): "fraction-1-seed-0", (1.0, 1): "fraction-1-seed-1"}
    assert yaml.safe_load((sweep / points[1.0, 0] / "overlay.yaml").read_text()) == {}
    sizes = {p: json.loads((sweep / folder / "sizes.json").read_text()) for p, folder in points.items()}
    assert sizes[0.6, 0]["studies_mean"] < sizes[1.0, 0]["studies_mean"] == sizes[1.0, 1]["studies_mean"]
    assert sizes[0.6, 0]["scored_internal"] == sizes[1.0, 0]["scored_internal"]
    scores = {s: pd.read_parquet(sweep / points[1.0, s] / "comparison" / "scores.parquet") for s in (0, 1)}
    keys = ["approach", "set", "dataset", "study_id"]
    assert scores[0][keys].equals(scores[1][keys])
    assert not np.allclose(scores[0]["s_any"], scores[1]["s_any"])  # the seed reached the training
    table = pd.read_csv(sweep / "data_size.csv")
    assert {"2D resnet10t: thresholded head", "2.5D: Stage 2 bilstm", "3D: r3d"} <= set(table["approach"])
    assert set(table["fraction"]) == {0.6, 1.0}
    assert (sweep / "data_size.png").stat().st_size > 10_000
    seeds = pd.read_csv(sweep / "seeds.csv")
    assert set(seeds["approach"]) == set(scores[0]["approach"])
    assert seeds["auc per seed"].str.count(",").eq(1).all()
    claims = pd.read_csv(sweep / "claims_seeds.csv")
    assert claims["per seed"].str.count(",").eq(1).all() and claims["verdict"].notna().all()
    assert json.loads((sweep / "sweep.json").read_text())["commit"]
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and again.stderr.count("not run again") == 3, again.stderr[-2000:]
    drawn = subprocess.run([*cmd[:6], "--saved-only"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert drawn.returncode == 0 and "snakemake" not in drawn.stderr.lower(), drawn.stderr[-2000:]
