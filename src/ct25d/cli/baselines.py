"""Subcommands of the baselines: volumes (the fixed volume store), volume-index, train-baseline."""

from __future__ import annotations

import argparse
import logging

from ct25d.cli.common import add_runtime, json_object, require
from ct25d.cli.preprocess import crop_settings, named, windows_from_settings

log = logging.getLogger("ct25d")


def cmd_volumes(args: argparse.Namespace) -> None:
    from ct25d.atomic import write_csv, write_parquet
    from ct25d.provenance import stamp
    from ct25d.volumes.fixed_store import (
        FixedVolumeSettings,
        MaskSource,
        build_fixed_shard,
        choose_windows,
        volume_geometry,
    )

    s = args.settings
    volume = require(s, "volume", "baselines")
    depth, size, max_depth = volume_geometry(volume, int(require(s, "size", "preprocess")))
    settings = FixedVolumeSettings(
        depth=depth,
        size=size,
        windows=choose_windows(windows_from_settings(s), volume.get("windows")),
        crop=crop_settings(s),
        max_depth=max_depth,
    )
    masks = MaskSource(args.masks, args.salt) if args.masks else None
    meta = stamp("volumes", {**s, "masks": bool(args.masks)})
    table, rejected = build_fixed_shard(args.in_store, args.out_store, settings, meta, masks)
    write_parquet(args.out_table, table, meta)
    write_csv(args.out_rejected, rejected)


def cmd_volume_index(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.atomic import write_parquet
    from ct25d.provenance import stamp

    frames = [pd.read_parquet(path).assign(dataset=name) for name, path in args.tables]
    table = pd.concat(frames, ignore_index=True).sort_values(["dataset", "study_id"]).reset_index(drop=True)
    write_parquet(args.out, table, stamp("volume-index", {}))
    log.info("%d volumes (%d with lesion masks)", len(table), int(table["has_mask"].sum()))


def cmd_train_baseline(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.models.families import inputs_of
    from ct25d.training.baseline import split_entry, train_baseline, train_thickened
    from ct25d.training.devices import lease_device

    model, settings = split_entry(args.entry, {**args.settings, **args.runtime})
    if args.mem_mb:
        settings["mem_mb"] = args.mem_mb
    settings["num_workers"] = args.workers
    studies = pd.read_parquet(args.studies)
    with lease_device(prefer=settings.get("device", "auto")) as device:
        log.info("train-baseline %s (%s) fold %d on %s", args.label, model["name"], args.fold, device)
        if inputs_of(model["name"]) == "slices":  # a slice model: every entry key is a Stage-1 override
            stage1 = {**args.stage1, **args.runtime, "num_workers": args.workers}
            summary = train_thickened(
                pd.read_parquet(args.index),
                studies,
                args.fold,
                args.entry,
                stage1,
                settings.get("threshold", 0.5),
                args.out,
                device,
                args.label,
                args.stage1_checkpoint,
            )
        else:
            volumes = pd.read_parquet(args.volumes) if args.volumes else None
            index = pd.read_parquet(args.index) if args.index else None
            summary = train_baseline(
                studies,
                args.fold,
                model,
                settings,
                args.out,
                device,
                volumes,
                args.embeddings,
                args.stage1_checkpoint,
                args.label,
                index,
            )
    # AUC, not F1: F1 here is at the untuned threshold; `compare` tunes it on validation studies.
    log.info(
        "best epoch %s; AUC(any) %s",
        summary.get("best_epoch"),
        {k: v["auc_any"] for k, v in summary["results"].items()},
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("volumes", help="resampled HU shard -> fixed-shape windowed volumes for the 3D models")
    p.add_argument("--in-store", required=True, help="resampled HU shard store")
    p.add_argument("--out-store", required=True)
    p.add_argument("--out-table", required=True, help="parquet: study_id, has_mask, mask_note, store")
    p.add_argument("--out-rejected", required=True, help="csv: study_id, reason")
    p.add_argument(
        "--settings",
        type=json_object,
        required=True,
        help="baselines.volume as `volume` plus preprocess crop keys and windows (JSON)",
    )
    p.add_argument("--masks", help="lesion masks: zarr group of StudyInstanceUID -> (Z, Y, X)")
    p.add_argument("--salt", default="", help="ingest.pseudonym_salt (finds each mask's study)")
    p.set_defaults(func=cmd_volumes)

    p = sub.add_parser("volume-index", help="one table of every dataset's fixed volumes")
    p.add_argument("--tables", nargs="+", type=named, required=True, help="DATASET=shard table, repeated")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_volume_index)

    p = sub.add_parser(
        "train-baseline", help="train one baseline (3D, ACS, 2.5CNN, thickened 2D) on one fold"
    )
    p.add_argument("--entry", type=json_object, required=True, help="the baselines.models entry (JSON)")
    p.add_argument("--label", required=True, help="the entry's name (how the comparison names the model)")
    p.add_argument(
        "--settings",
        type=json_object,
        required=True,
        help="config `baselines` without `models` and `volume` (JSON)",
    )
    p.add_argument("--studies", required=True, help="study table from `ct25d index`")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--volumes", help="volume index (volume models)")
    p.add_argument("--embeddings", help="Stage-1 embeddings folder (2.5CNN)")
    p.add_argument("--stage1-checkpoint", help="Stage-1 best.pt (ACS or thickened 2D with init: stage1)")
    p.add_argument("--index", help="slice index (thickened 2D; volume models with supervision: slice)")
    p.add_argument(
        "--stage1", type=json_object, default={}, help="config `stage1` for the backbone (thickened 2D)"
    )
    p.add_argument(
        "--mem-mb", type=int, help="the memory the job was given (a setting that cannot fit stops)"
    )
    p.add_argument("--workers", type=int, default=0, help="data loader workers (the rule's threads)")
    add_runtime(p)
    p.set_defaults(func=cmd_train_baseline)
