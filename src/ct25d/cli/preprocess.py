"""Subcommands of the preprocessing stage: resample, slices, splits, index, qc.

Each is a thin wrapper: explicit input and output paths (what a Snakemake rule declares) and one
`--settings` JSON object holding exactly the config keys whose change must rerun that step.
Per-dataset inputs are given as `NAME=VALUE` pairs.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from ct25d.cli.common import json_object, named, require
from ct25d.errors import ConfigError

log = logging.getLogger("ct25d")


def _one_per_name(pairs: list[tuple[str, str]] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs or []:
        if name in out:
            raise ConfigError(f"{flag}: dataset {name!r} given twice")
        out[name] = value
    return out


def crop_settings(settings: dict[str, Any]) -> Any:
    """`CropSettings` from config `preprocess`, or None when `crop` is false."""
    from ct25d.volumes.crop import CropSettings

    if not require(settings, "crop", "preprocess"):
        return None
    return CropSettings(
        threshold_hu=float(require(settings, "threshold_hu", "preprocess")),
        opening_mm=float(require(settings, "opening_mm", "preprocess")),
        margin_mm=float(require(settings, "margin_mm", "preprocess")),
    )


def windows_from_settings(settings: dict[str, Any]) -> list[Any]:
    """The three windows of config `preprocess.windows` (the slice store holds 3 channels)."""
    from ct25d.slices.store import CHANNELS
    from ct25d.slices.window import Window

    raw = require(settings, "windows", "preprocess")
    if not isinstance(raw, list) or len(raw) != CHANNELS:
        raise ConfigError(f"preprocess.windows: expected a list of {CHANNELS} windows, got {raw!r}")
    return [Window.from_config(w, where=f"preprocess.windows[{i}]") for i, w in enumerate(raw)]


def cmd_resample(args: argparse.Namespace) -> None:
    from ct25d.provenance import stamp
    from ct25d.volumes.resample import resample_shard
    from ct25d.volumes.store import HUCodec

    s = args.settings
    meta = stamp("resample", s)
    codec = HUCodec.from_settings(args.codec)
    table = resample_shard(args.in_store, args.out_store, s, meta, codec)
    log.info("resampled %d studies into %s", len(table), args.out_store)


def cmd_slices(args: argparse.Namespace) -> None:
    from ct25d.atomic import write_csv, write_parquet
    from ct25d.provenance import stamp
    from ct25d.slices.build import build_slice_shard

    s = args.settings
    crop, windows = crop_settings(s), windows_from_settings(s)
    size = int(require(s, "size", "preprocess"))
    if size < 8:
        raise ConfigError(f"preprocess.size: must be >= 8 pixels, got {size}")
    meta = stamp("slices", s)
    table, rejected = build_slice_shard(args.in_store, args.out_store, crop, size, windows, meta)
    write_parquet(args.out_index, table, meta)
    write_csv(args.out_rejected, rejected)


def cmd_splits(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.atomic import write_parquet
    from ct25d.datasets.splits import assign_folds
    from ct25d.provenance import stamp

    s = args.settings
    manifests, roles = _one_per_name(args.manifests, "--manifests"), _one_per_name(args.roles, "--roles")
    if set(manifests) != set(roles):
        raise ConfigError(
            f"--manifests {sorted(manifests)} and --roles {sorted(roles)} name different datasets"
        )
    frames = [
        pd.read_parquet(path, columns=["study_id", "patient_id", "any"]).assign(
            dataset=name, role=roles[name]
        )
        for name, path in sorted(manifests.items())
    ]
    folds = assign_folds(
        pd.concat(frames, ignore_index=True),
        int(require(s, "folds", "splits")),
        int(require(s, "seed", "splits")),
        float(s.get("train_fraction", 1.0)),
    )
    meta = stamp("splits", {**s, "roles": roles})
    write_parquet(args.out, folds, meta)
    log.info("folds: %s", folds["fold"].value_counts().sort_index().to_dict())
    inner = folds["inner_for"].value_counts().sort_index().to_dict()
    log.info("inner_for (-2: left out by splits.train_fraction): %s", inner)


def _read_rejected(paths: list[str]) -> Any:
    """The studies `ct25d slices` skipped (study_id, reason) in the given shard CSVs."""
    import pandas as pd

    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["study_id", "reason"])


def cmd_index(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.atomic import write_csv, write_parquet
    from ct25d.datasets.index import DatasetTables, build_index, read_slice_tables, verify_stores
    from ct25d.datasets.stroke import add_stroke_labels
    from ct25d.provenance import stamp

    manifests = _one_per_name(args.manifests, "--manifests")
    labels = _one_per_name(args.slice_labels, "--slice-labels")
    roles = _one_per_name(args.roles, "--roles")
    sites = _one_per_name(args.sites, "--sites")
    tables: dict[str, list[str]] = defaultdict(list)
    for name, path in args.slice_tables:
        tables[name].append(path)
    skipped: dict[str, list[str]] = defaultdict(list)
    for name, path in args.slice_rejections:
        skipped[name].append(path)
    names = sorted(manifests)
    for flag, given in (("--slice-labels", labels), ("--roles", roles), ("--slice-tables", tables)):
        if sorted(given) != names:
            raise ConfigError(f"{flag} names {sorted(given)}, --manifests names {names}")
    datasets = []
    for name in names:
        slice_table = read_slice_tables(tables[name])
        verify_stores(slice_table)
        datasets.append(
            DatasetTables(
                name=name,
                role=roles[name],
                site=sites.get(name, name),
                manifest=pd.read_parquet(manifests[name]),
                slice_labels=pd.read_parquet(labels[name]),
                slice_tables=slice_table,
                rejected=_read_rejected(skipped.get(name, [])),
            )
        )
    slice_index, studies = build_index(datasets, pd.read_parquet(args.splits))
    stroke_types = _one_per_name(args.stroke_types, "--stroke-types")
    slice_index, studies = (
        add_stroke_labels(slice_index, stroke_types),
        add_stroke_labels(studies, stroke_types),
    )
    meta = stamp(
        "index", {"roles": roles, "sites": {n: sites.get(n, n) for n in names}, "stroke_types": stroke_types}
    )
    rejected = pd.concat([d.rejected.assign(dataset=d.name) for d in datasets], ignore_index=True)
    write_csv(args.out_rejected, rejected[["dataset", "study_id", "reason"]])
    write_parquet(args.out_slices, slice_index, meta)
    write_parquet(args.out_studies, studies, meta)
    log.info("index: %d slices, %d studies in %d datasets", len(slice_index), len(studies), len(names))


def cmd_qc(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.atomic import write_json
    from ct25d.provenance import stamp
    from ct25d.report.qc import write_qc

    s = args.settings
    out = write_qc(
        pd.read_parquet(args.slice_index),
        pd.read_parquet(args.studies),
        args.out,
        int(require(s, "per_dataset", "qc")),
        int(require(s, "seed", "qc")),
    )
    write_json(Path(args.out) / "settings.json", stamp("qc", s))
    log.info("qc: %d montages and a summary in %s", len(out["montages"]), args.out)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""

    p = sub.add_parser("resample", help="resample one HU shard store to the configured voxel spacing")
    p.add_argument("--in-store", required=True, help="HU shard store (zarr) written by `ct25d ingest`")
    p.add_argument("--out-store", required=True, help="HU shard store to create (replaced atomically)")
    p.add_argument(
        "--settings",
        type=json_object,
        required=True,
        help="{in_plane_mm, slice_mm, interpolator} from config `preprocess` (JSON)",
    )
    p.add_argument(
        "--codec",
        type=json_object,
        required=True,
        help="{chunk_slices, compressor, compression_level} from config `ingest` (JSON)",
    )
    p.set_defaults(func=cmd_resample)

    p = sub.add_parser("slices", help="crop, fit and window one HU shard into a slice store")
    p.add_argument("--in-store", required=True, help="resampled HU shard store (zarr)")
    p.add_argument("--out-store", required=True, help="slice store (zarr) to create")
    p.add_argument("--out-index", required=True, help="parquet: one row per slice (study_id, z, store)")
    p.add_argument("--out-rejected", required=True, help="CSV: studies that could not be prepared, and why")
    p.add_argument(
        "--settings",
        type=json_object,
        required=True,
        help="{crop, threshold_hu, opening_mm, margin_mm, size, windows} from `preprocess` (JSON)",
    )
    p.set_defaults(func=cmd_slices)

    p = sub.add_parser("splits", help="patient-level folds for training datasets; external get fold -1")
    p.add_argument(
        "--manifests",
        type=named,
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="each dataset's manifest.parquet",
    )
    p.add_argument(
        "--roles",
        type=named,
        nargs="+",
        required=True,
        metavar="NAME=ROLE",
        help="each dataset's role: train or external",
    )
    p.add_argument("--settings", type=json_object, required=True, help="{folds, seed} from config `splits`")
    p.add_argument("--out", required=True, help="splits parquet to write")
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("index", help="assemble the slice index and study table every training stage reads")
    p.add_argument("--manifests", type=named, nargs="+", required=True, metavar="NAME=PATH")
    p.add_argument(
        "--slice-labels",
        type=named,
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="each dataset's ingest slices.parquet",
    )
    p.add_argument(
        "--slice-tables",
        type=named,
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="per-shard tables from `ct25d slices --out-index` (one pair per shard)",
    )
    p.add_argument(
        "--slice-rejections",
        type=named,
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="per-shard CSVs from `ct25d slices --out-rejected` (studies skipped there)",
    )
    p.add_argument("--roles", type=named, nargs="+", required=True, metavar="NAME=ROLE")
    p.add_argument(
        "--sites",
        type=named,
        nargs="*",
        default=[],
        metavar="NAME=SITE",
        help="acquisition site per dataset (default: the dataset name)",
    )
    p.add_argument(
        "--stroke-types",
        type=named,
        nargs="*",
        default=[],
        metavar="NAME=RULE",
        help="stroke-class rule per dataset: from_any (default), control, hemorrhagic or ischemic",
    )
    p.add_argument("--splits", required=True, help="parquet from `ct25d splits`")
    p.add_argument("--out-slices", required=True, help="slice index parquet to write")
    p.add_argument("--out-studies", required=True, help="study table parquet to write")
    p.add_argument("--out-rejected", required=True, help="CSV: studies left out of the index, and why")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("qc", help="QC montages of sampled studies and a dataset summary (CSV + PNG)")
    p.add_argument("--slice-index", required=True)
    p.add_argument("--studies", required=True, help="study table from `ct25d index`")
    p.add_argument("--settings", type=json_object, required=True, help="{per_dataset, seed} from config `qc`")
    p.add_argument("--out", required=True, help="folder: montages/*.png, summary.csv, summary.png")
    p.set_defaults(func=cmd_qc)
