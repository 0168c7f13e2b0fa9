"""Subcommands of Stage 2 and the comparison: train-sequence, compare."""

from __future__ import annotations

import argparse
import json
import logging

from ct25d.cli.common import add_run_inputs, add_runtime, json_object, named

log = logging.getLogger("ct25d")


def cmd_train_sequence(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.training.devices import lease_device
    from ct25d.training.stage2 import Stage2Settings, train_stage2

    settings = Stage2Settings.from_dict({**args.settings, **args.runtime})
    studies = pd.read_parquet(args.studies)
    with lease_device(prefer=settings.device) as device:
        log.info("train-sequence %s fold %d on %s", args.model.get("name"), args.fold, device)
        summary = train_stage2(args.embeddings, studies, args.fold, args.model, settings, args.out, device)
    log.info("%s", json.dumps(summary["results"], indent=1))


def cmd_compare(args: argparse.Namespace) -> None:
    from ct25d.report.compare import write_comparison

    s = args.settings
    table = write_comparison(
        args.stage1,
        args.stage2,
        args.out,
        args.baselines,
        s.get("labels"),
        s.get("reference"),
        int(s.get("bootstrap", 1000)),
        int(s.get("seed", 0)),
        dict(args.readers or []),
        s.get("salt", ""),
        s.get("claims"),
        int(s.get("min_positives", 5)),
        args.patients,
        float(s.get("alpha", 0.05)),
        args.pointing,
        args.studies,
    )
    log.info("%d approaches compared; see %s/comparison.md", len(table), args.out)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser(
        "train-sequence", help="train a Stage-2 sequence model on Stage-1 embeddings of one fold"
    )
    p.add_argument("--embeddings", required=True, help="folder written by `ct25d embed`")
    p.add_argument("--studies", required=True, help="study table from `ct25d index`")
    p.add_argument("--fold", type=int, required=True, help="validation fold (the Stage-1 run's fold)")
    p.add_argument("--model", type=json_object, required=True, help="{name, **kwargs} of a registered model")
    p.add_argument(
        "--settings", type=json_object, required=True, help="config `stage2` without `models` (JSON)"
    )
    p.add_argument("--out", required=True, help="folder: best.pt, metrics.*, predictions_*.parquet, curves")
    add_runtime(p)
    p.set_defaults(func=cmd_train_sequence)

    p = sub.add_parser(
        "compare", help="one table of every model's slice and volume F1 (validation, external)"
    )
    add_run_inputs(p)
    p.add_argument("--readers", nargs="*", type=named, default=[],
                   help="DATASET=reads.csv of CQ500-layout sets: kappa with each reader")  # fmt: skip
    p.add_argument(
        "--settings",
        type=json_object,
        default={},
        help="config `compare`: reference approach, bootstrap replicates, seed (JSON)",
    )
    p.add_argument("--patients", help="splits/folds.parquet: each study's patient, the bootstrap's cluster")
    p.add_argument("--studies", default=None, help="index/studies.parquet: slice counts for length_check")
    p.add_argument("--pointing", nargs="*", default=None,
                   help="each saliency run's pointing.parquet (absent: no pointing game)")  # fmt: skip
    p.add_argument("--out", required=True, help="folder: comparison.csv, comparison.md, comparison.png")
    p.set_defaults(func=cmd_compare)
