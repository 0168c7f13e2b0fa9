"""Subcommands of Stage 1: train-slices, embed, eval-stage1.

`train-slices` and `embed` hold a device lease (`lease_device`) for their whole run, so concurrent
GPU jobs never share a device; `train-slices --gpus N` leases N and starts N DDP ranks.
All take the config block `stage1` as `--settings` JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ct25d.cli.common import add_runtime, json_object
from ct25d.cli.preprocess import named

log = logging.getLogger("ct25d")


def run_settings(args: argparse.Namespace) -> dict:
    """`--settings` with `--runtime` (keys that change how a job runs, never what it writes) and
    `--workers` (a rule's `threads`, so the loader uses the cores the scheduler granted) on top."""
    settings = {**args.settings, **args.runtime}
    return settings if args.workers is None else {**settings, "num_workers": args.workers}


def cmd_train_slices(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.training.devices import lease_device
    from ct25d.training.distributed import Ranks, launch
    from ct25d.training.stage1 import Stage1Settings, train_stage1

    settings = Stage1Settings.from_dict(run_settings(args))
    ranks = Ranks.from_env()
    if args.gpus > 1 and ranks.world == 1:  # start the ranks; each runs this command again
        launch(args.gpus, settings.device, args.argv)
        return
    index = pd.read_parquet(args.index)
    if ranks.world > 1:  # a rank started by `launch`: its device was leased there
        workers = max(1, settings.num_workers // ranks.world) if settings.num_workers else 0
        settings = dataclasses.replace(settings, num_workers=workers)
        device = "cpu" if settings.device == "cpu" else ranks.device()
        ranks.start(device)
        try:
            result = train_stage1(index, args.fold, settings, args.out, device, ranks=ranks)
        finally:
            ranks.stop()
    else:
        with lease_device(prefer=settings.device) as device:
            log.info("train-slices fold %d on %s", args.fold, device)
            result = train_stage1(index, args.fold, settings, args.out, device)
    log.info("best checkpoint %s after %d epochs", result.best, len(result.history))


def cmd_embed(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.training.devices import lease_device
    from ct25d.training.embed import embed_shard, extract_embeddings
    from ct25d.training.stage1 import Stage1Settings

    settings = Stage1Settings.from_dict(run_settings(args))
    index = pd.read_parquet(args.index)
    options = dict(tta_flip=settings.tta_flip, batch_size=settings.embed_batch_size,
                   num_workers=settings.num_workers)  # fmt: skip
    with lease_device(prefer=settings.device) as device:
        if args.store:
            log.info("embed the slices of %s on %s", args.store, device)
            embed_shard(index, args.store, args.checkpoint, args.out, device, **options)
        else:
            log.info("embed %d slices on %s", len(index), device)
            extract_embeddings(index, args.checkpoint, args.out, device, **options)


def cmd_embed_gather(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.training.embed import gather_rows

    rows = gather_rows(pd.read_parquet(args.index), args.out, dict(args.shards))
    log.info("%d slices in %d shards", len(rows), len(args.shards))


def cmd_eval_stage1(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.atomic import write_csv, write_json, write_npz
    from ct25d.evaluation.predictions import write_outputs
    from ct25d.evaluation.stage1 import evaluate_stage1
    from ct25d.evaluation.tables import summarise
    from ct25d.provenance import stamp
    from ct25d.training.stage1 import Stage1Settings

    settings = Stage1Settings.from_dict(args.settings)
    index, studies = pd.read_parquet(args.index), pd.read_parquet(args.studies)
    table, means, predictions = evaluate_stage1(
        index, studies, args.embeddings, args.fold, settings.threshold
    )
    out = Path(args.out)
    for method, (study_frame, slice_frame) in predictions.items():  # what the comparison scores
        meta = {**stamp("eval-stage1", settings.to_dict()), "fold": args.fold}
        labels = [c for c in study_frame if f"prob_{c}" in study_frame]
        write_outputs(
            out / method,
            study_frame,
            slice_frame,
            labels,
            method,
            args.fold,
            meta,
            settings.threshold,
            {"inputs": "slices", "backbone": settings.backbone},
        )
    write_csv(out / "stage1_eval.csv", table)
    write_json(
        out / "stage1_eval.json", {**stamp("eval-stage1", settings.to_dict()), **summarise(table, args.fold)}
    )
    write_npz(out / "class_means.npz", **means)
    for key, value in summarise(table, args.fold)["results"].items():
        log.info("%s: F1(any) %s, AUC(any) %s", key, value["f1_any"], value["auc_any"])


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""

    p = sub.add_parser("train-slices", help="train the Stage-1 slice classifier on one fold (resumable)")
    p.add_argument("--index", required=True, help="slice index parquet")
    p.add_argument("--fold", type=int, required=True, help="validation fold; the other folds train")
    p.add_argument("--settings", type=json_object, required=True, help="config `stage1` (JSON)")
    p.add_argument(
        "--out", required=True, help="run folder: last.pt, best.pt, metrics.csv, learning_curve.png"
    )
    p.add_argument("--workers", type=int, default=None, help="data loader workers (default: settings)")
    p.add_argument(
        "--gpus", type=int, default=1, help="train on this many devices of the node (DDP via torchrun)"
    )
    add_runtime(p)
    p.set_defaults(func=cmd_train_slices)

    p = sub.add_parser(
        "embed", help="Stage-1 embeddings and logits of every slice in the index (or one store)"
    )
    p.add_argument("--index", required=True, help="slice index parquet")
    p.add_argument("--checkpoint", required=True, help="best.pt written by train-slices")
    p.add_argument("--settings", type=json_object, required=True, help="config `stage1` (JSON)")
    p.add_argument("--store", help="embed only this slice store; --out is then its <name>.zarr")
    p.add_argument("--out", required=True, help="folder: <shard>.zarr per slice store, rows.parquet")
    p.add_argument("--workers", type=int, default=None, help="data loader workers (default: settings)")
    add_runtime(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("embed-gather", help="rows.parquet of an embeddings folder from its shards")
    p.add_argument("--index", required=True, help="slice index parquet")
    p.add_argument(
        "--shards", type=named, nargs="+", required=True, help="NAME=STORE: <out>/NAME.zarr embeds STORE"
    )
    p.add_argument("--out", required=True, help="the embeddings folder")
    p.set_defaults(func=cmd_embed_gather)

    p = sub.add_parser("eval-stage1", help="head vs cosine-to-class-mean F1/AUC, slice and volume level")
    p.add_argument("--index", required=True, help="slice index parquet")
    p.add_argument("--studies", required=True, help="study table parquet (study-level labels)")
    p.add_argument("--embeddings", required=True, help="folder written by embed")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--settings", type=json_object, required=True, help="config `stage1` (JSON)")
    p.add_argument("--out", required=True, help="folder: stage1_eval.json, stage1_eval.csv, class_means.npz")
    p.set_defaults(func=cmd_eval_stage1)
