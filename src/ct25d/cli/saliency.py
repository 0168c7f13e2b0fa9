"""Subcommands of where the models looked: saliency (one fold model), saliency-gallery (the report's)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ct25d.cli.common import json_object
from ct25d.cli.preprocess import named

log = logging.getLogger("ct25d")


def cmd_saliency(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from ct25d.atomic import write_parquet
    from ct25d.evaluation.pointing import PointingSettings
    from ct25d.evaluation.saliency import load_model
    from ct25d.evaluation.saliency_run import saliency_run
    from ct25d.evaluation.truth import Truth
    from ct25d.provenance import stamp
    from ct25d.report.saliency import plot_gallery

    torch.set_num_threads(args.threads)  # busy cores: one thread each beats two spinning ones
    s = PointingSettings.from_dict(args.settings)
    predictions = Path(args.predictions)
    volumes = pd.read_parquet(args.volumes) if args.volumes else None
    in_channels = 3
    if volumes is not None and len(volumes):
        from ct25d.volumes.fixed_store import volume_channels

        in_channels = volume_channels(volumes["store"].iloc[0], volumes["study_id"].iloc[0])
    loaded = load_model(args.checkpoint, in_channels)
    truth = Truth(dict(args.masks or []), args.salt)
    rows, tiles = saliency_run(
        loaded,
        pd.read_parquet(predictions / "predictions_studies.parquet"),
        pd.read_parquet(predictions / "predictions_slices.parquet"),
        pd.read_parquet(args.index, columns=["dataset", "study_id", "patient_id", "z", "store"]),
        truth,
        s,
        args.key,
        args.fold,
        volumes,
    )
    out = Path(args.out)
    meta = stamp("saliency", {**args.settings, "key": args.key, "fold": args.fold,
                              "masks": sorted(truth.sources)})  # fmt: skip
    write_parquet(out / "pointing.parquet", rows, meta)
    plot_gallery(tiles, out / "gallery.png", f"{args.key} fold {args.fold}")


def cmd_saliency_gallery(args: argparse.Namespace) -> None:
    from ct25d.report.saliency import plot_overview

    plot_overview(args.galleries or [], args.out)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("saliency", help="Grad-CAM of one fold model's positive calls and their pointing game")
    p.add_argument("--checkpoint", required=True, help="the run's best.pt (Stage 1, thickened 2D or 3D)")
    p.add_argument("--predictions", required=True,
                   help="folder of the run's predictions_studies / predictions_slices.parquet")  # fmt: skip
    p.add_argument("--index", required=True, help="slice index (index/slices.parquet)")
    p.add_argument("--volumes", help="volume index (index/volumes.parquet): a 3D net's inputs")
    p.add_argument("--masks", nargs="*", type=named, metavar="DATASET=PATH",
                   help="lesion masks of the datasets with any (synthetic: truth/masks.zarr)")  # fmt: skip
    p.add_argument("--salt", default="", help="ingest.pseudonym_salt (masks are keyed by StudyInstanceUID)")
    p.add_argument("--key", required=True, help="the approach's config name: <backbone>:head, a baseline")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--settings", type=json_object, default={}, help="config `compare.saliency` (JSON)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", required=True, help="folder: pointing.parquet, gallery.png")
    p.set_defaults(func=cmd_saliency)

    p = sub.add_parser("saliency-gallery", help="every run's saliency gallery in one picture (the report's)")
    p.add_argument("--galleries", nargs="*", type=named, metavar="NAME=PNG", help="each run's gallery.png")
    p.add_argument("--out", required=True, help="saliency.png")
    p.set_defaults(func=cmd_saliency_gallery)
