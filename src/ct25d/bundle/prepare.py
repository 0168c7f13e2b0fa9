"""A DICOM folder made ready for a bundle's networks: scan, convert to HU, resample, crop and window,
index. Each step is the workflow's own command (`ct25d scan`, `ingest`, `ingest-report`, `resample`,
`slices`, `splits`, `index`) called in-process with the settings the training run used, so a
bundle sees exactly the slices the workflow's networks saw; only the orchestration is new."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ct25d.cli.baselines import cmd_volumes
from ct25d.cli.ingest import cmd_ingest, cmd_ingest_report, cmd_scan
from ct25d.cli.preprocess import cmd_index, cmd_resample, cmd_slices, cmd_splits

log = logging.getLogger(__name__)
RESAMPLE_KEYS = ("in_plane_mm", "slice_mm", "interpolator")
SLICE_KEYS = ("crop", "threshold_hu", "opening_mm", "margin_mm", "size", "windows")
ROLE = "predict"


@dataclass(frozen=True)
class Prepared:
    """What the workflow's ingest and index give a role-predict dataset, in `work`."""

    dataset: str
    ingest: Path  # the dataset's folder: scan/, manifest.parquet, series_choice.csv, rejections.csv
    index: pd.DataFrame  # the slice index of the dataset (store, study_id, z, ...)
    studies: pd.DataFrame  # the study table
    skipped: pd.DataFrame  # studies without slices (study_id, reason)


def prepare(
    root: str | Path, work: str | Path, dataset: str, archive: dict[str, Any], ingest: dict[str, Any],
    preprocess: dict[str, Any], workers: int = 1,
) -> Prepared:  # fmt: skip
    """Run the workflow's preprocessing on the DICOM folder `root` as one shard of `dataset`."""
    folder = Path(work) / dataset
    scan, prefix = folder / "scan", folder / "hu" / "shard-0"
    log.info("scanning %s", root)
    cmd_scan(argparse.Namespace(root=str(root), dataset={**archive, "role": ROLE}, labels=None, override=None,
                                shards=1, settings=ingest, workers=workers, out=str(scan)))  # fmt: skip
    log.info("converting to Hounsfield units")
    cmd_ingest(argparse.Namespace(root=str(root), scan=str(scan), shard=0, settings=ingest, workers=workers,
                                  out_prefix=str(prefix)))  # fmt: skip
    cmd_ingest_report(argparse.Namespace(scan=str(scan), shards=[str(prefix)], out=str(folder)))
    resampled = folder / "resampled" / "shard-0.zarr"
    log.info("resampling, cropping and windowing")
    resample = {k: preprocess[k] for k in RESAMPLE_KEYS}
    cmd_resample(argparse.Namespace(in_store=f"{prefix}.zarr", out_store=str(resampled), settings=resample,
                                    codec=ingest))  # fmt: skip
    slices = folder / "slices" / "shard-0"
    cmd_slices(argparse.Namespace(in_store=str(resampled), out_store=f"{slices}.zarr",
                                  out_index=f"{slices}.parquet", out_rejected=f"{slices}.rejected.csv",
                                  settings={k: preprocess[k] for k in SLICE_KEYS}))  # fmt: skip
    manifest = folder / "manifest.parquet"
    splits = Path(work) / "splits.parquet"
    cmd_splits(argparse.Namespace(manifests=[(dataset, str(manifest))], roles=[(dataset, ROLE)],
                                  settings={"folds": 2, "seed": 0}, out=str(splits)))  # fmt: skip
    index = Path(work) / "index"
    cmd_index(argparse.Namespace(
        manifests=[(dataset, str(manifest))], slice_labels=[(dataset, str(folder / "slices.parquet"))],
        slice_tables=[(dataset, f"{slices}.parquet")], slice_rejections=[(dataset, f"{slices}.rejected.csv")],
        roles=[(dataset, ROLE)], sites=[], stroke_types=[], splits=str(splits),
        out_slices=str(index / "slices.parquet"), out_studies=str(index / "studies.parquet"),
        out_rejected=str(index / "rejected.csv"),
    ))  # fmt: skip
    skipped = pd.read_csv(index / "rejected.csv", dtype=str, keep_default_na=False)
    slice_index = pd.read_parquet(index / "slices.parquet")
    studies = pd.read_parquet(index / "studies.parquet")
    return Prepared(dataset, folder, slice_index, studies, skipped[["study_id", "reason"]])


def volume_store(prepared: Prepared, work: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """The 3D networks' fixed-shape volume store of the prepared dataset (`ct25d volumes`, `settings`:
    config `baselines.volume` as `volume` beside `preprocess`), as the volume index lists it."""
    store = work / prepared.dataset / "volumes" / "shard-0"
    keys = ("volume", *SLICE_KEYS)
    cmd_volumes(argparse.Namespace(
        in_store=str(work / prepared.dataset / "resampled" / "shard-0.zarr"), out_store=f"{store}.zarr",
        out_table=f"{store}.parquet", out_rejected=f"{store}.rejected.csv",
        settings={k: settings[k] for k in keys}, masks=None, salt=None,
    ))  # fmt: skip
    return pd.read_parquet(f"{store}.parquet").assign(dataset=prepared.dataset)
