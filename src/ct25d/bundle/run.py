"""`ct25d predict-bundle BUNDLE DICOM_DIR OUT`: a bundle's fold models on a DICOM folder, without
Snakemake or a results folder. The preprocessing is the workflow's (`ct25d.bundle.prepare`), the
networks are the bundle's TorchScript files run by the workflow's own prediction loops (Stage 1's
`embed_rows`, Stage 2's `predict`), and the fold ensemble and the output folder are the workflow's
(`study_mean`/`slice_mean`, `write_folder`): the same DICOMs give the same `studies.csv` as
`snakemake predict`."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ct25d.atomic import atomic_path, write_json
from ct25d.bundle.layout import INFERENCE, METADATA, choice_of
from ct25d.bundle.prepare import Prepared, prepare, volume_store
from ct25d.datasets.sequences import StudySequences
from ct25d.errors import Ct25dError
from ct25d.predict.ensemble import slice_mean, study_mean
from ct25d.predict.scans import ingest_records
from ct25d.predict.write import write_folder
from ct25d.provenance import stamp
from ct25d.report.compare import Choice
from ct25d.training.baseline import BaselineSettings, volume_inputs
from ct25d.training.baseline import prediction_frames as volume_frames
from ct25d.training.embed import Encoder, embed_rows, gather_rows, shard_names, shard_rows
from ct25d.training.stage1 import Stage1Settings
from ct25d.training.stage2 import Stage2Settings, predict, prediction_frames

log = logging.getLogger(__name__)


def read_bundle(bundle: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, inference) of a bundle folder, with a clear error where it is not one."""
    root = Path(bundle)
    missing = [str(p) for p in (METADATA, INFERENCE) if not (root / p).is_file()]
    if missing:
        raise Ct25dError(
            f"{root}: not a ct25d bundle (missing {', '.join(missing)}); make one with `ct25d export`"
        )
    return json.loads((root / METADATA).read_text()), json.loads((root / INFERENCE).read_text())


def _volume_predictions(
    bundle: Path, fold: dict[str, Any], prepared: Prepared, volumes: pd.DataFrame, device: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One fold's study and slice predictions of a 3D network, by the trainer's own prediction loop."""
    net = fold["volume"]
    settings = BaselineSettings.from_dict({**net["settings"], "num_workers": 0})
    inputs = volume_inputs(prepared.studies, settings, volumes, net["supervision"], prepared.index)
    shape = [int(n) for n in net["volume_shape"]]
    if list(inputs.store_shape()) != shape:
        raise Ct25dError(f"{bundle}: volumes of shape {inputs.store_shape()}, the network takes {shape}")
    model = torch.jit.load(str(bundle / net["file"]), map_location=device)
    return volume_frames(model, inputs, settings, device)


def _fold_predictions(
    bundle: Path, fold: dict[str, Any], prepared: Prepared, labels: list[str], work: Path, device: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One Stage-2 fold's study and slice predictions (`prob_<label>`), as its workflow rules write them."""
    s1 = fold["stage1"]
    settings = Stage1Settings.from_dict({**s1["settings"], "num_workers": 0})
    encoder = Encoder(torch.jit.load(str(bundle / s1["file"]), map_location=device), int(s1["width"]),
                      int(s1["num_classes"]), list(s1["class_names"]))  # fmt: skip
    out = work / "embeddings" / f"fold{fold['fold']}"
    names = shard_names(sorted(prepared.index["store"].astype(str).unique()))
    meta = stamp("embed", {"bundle": str(bundle), "fold": fold["fold"], "tta_flip": s1["tta_flip"]})
    for store, name in names.items():
        rows = shard_rows(prepared.index, store)
        embed_rows(encoder, settings, rows, store, out / f"{name}.zarr", meta, device, bool(s1["tta_flip"]))
    rows = gather_rows(prepared.index, out, {name: store for store, name in names.items()})
    data = StudySequences(out, rows, prepared.studies, labels)
    s2 = fold["stage2"]
    # One study per batch: the traced model was checked on single studies of several lengths.
    stage2 = Stage2Settings.from_dict({**s2["settings"], "batch_size": 1})
    model = torch.jit.load(str(bundle / s2["file"]), map_location=device)
    slice_prob, study_prob, _ = predict(model, data, np.arange(len(data)), stage2, device)
    split = np.full(len(data), "predict", dtype=object)
    return prediction_frames(data, split, slice_prob, study_prob, stage2.labels)


def predict_bundle(
    bundle: str | Path, dicom_dir: str | Path, out: str | Path, dataset: str | None = None,
    archive: dict[str, Any] | None = None, salt: str = "ct25d-bundle", workers: int = 1, device: str = "cpu",
) -> pd.DataFrame:  # fmt: skip
    """Predict every study under `dicom_dir` into `out` (replaced as a whole); returns studies.csv."""
    root = Path(bundle)
    metadata, inference = read_bundle(root)
    if inference["kind"] not in ("stage2", "volume"):
        raise Ct25dError(f"{root}: bundles of kind {inference['kind']!r} are not supported by this version")
    if not Path(dicom_dir).is_dir():
        raise Ct25dError(f"{dicom_dir}: no such folder")
    labels = list(inference["labels"])
    name = dataset or Path(dicom_dir).resolve().name
    form = {**inference["archive"], **(archive or {})}
    ingest = {**inference["ingest"], "pseudonym_salt": salt}
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="ct25d-bundle-") as scratch:
        work = Path(scratch)
        prepared = prepare(dicom_dir, work, name, form, ingest, inference["preprocess"], workers)
        volumes = (
            volume_store(prepared, work, {**inference["preprocess"], "volume": inference["volume"]})
            if inference["kind"] == "volume"
            else None
        )
        folds: list[tuple[pd.DataFrame, pd.DataFrame, dict[str, Choice]]] = []
        for fold in inference["folds"]:
            log.info("fold %d", fold["fold"])
            studies, slices = (
                _fold_predictions(root, fold, prepared, labels, work, device)
                if volumes is None
                else _volume_predictions(root, fold, prepared, volumes, device)
            )
            choices = {n: choice_of(r) for n, r in fold["choices"].items()}
            folds.append((studies, slices, choices))
        meta = stamp("predict-bundle", {"bundle": metadata["name"], "approach": inference["approach"],
                                        "dataset": name, "archive": form})  # fmt: skip
        records = ingest_records(prepared.ingest, prepared.skipped)
        table = write_folder(
            tmp, inference["approach"], study_mean([(s, c) for s, _, c in folds]),
            slice_mean([(sl, c) for _, sl, c in folds]), records, prepared.index, labels, name,
            int(inference.get("top_slices", 4)), meta,
        )  # fmt: skip
        for report in ("series_choice.csv", "rejections.csv", "ingest_summary.json"):
            shutil.copy2(prepared.ingest / report, tmp / report)
        write_json(tmp / "settings.json", {**meta, "bundle_version": metadata["version"], **table})
    return pd.read_csv(Path(out) / "studies.csv")
