"""Subcommand of the predict stage: predict (the fold models of the chosen approaches on an
unlabelled dataset)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ct25d.cli.common import add_run_inputs, json_object

log = logging.getLogger("ct25d")


def cmd_predict(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from ct25d.labels import RSNA_LABELS
    from ct25d.predict.ensemble import CHOSEN, choose_approaches
    from ct25d.predict.scans import ingest_records
    from ct25d.predict.write import write_predictions
    from ct25d.report.compare import load_runs

    s = args.settings
    ingest = Path(args.ingest)
    runs = load_runs(args.stage1, args.stage2, args.baselines)
    names = list(s.get("approaches") or CHOSEN)
    chosen = choose_approaches(names, runs, s.get("reference"), args.comparison)
    log.info("predicting %s with: %s", args.dataset, "; ".join(f"{c.approach} ({c.why})" for c in chosen))
    records = ingest_records(ingest, _skipped(args.skipped, args.dataset))
    index = pd.read_parquet(args.index, filters=[("dataset", "==", args.dataset)])
    volumes = None
    if args.volumes:
        volumes = pd.read_parquet(args.volumes, filters=[("dataset", "==", args.dataset)])
    torch.set_num_threads(args.threads)  # the saliency maps, on the CPU
    table = write_predictions(
        args.out, args.dataset, runs, chosen, list(s.get("labels") or RSNA_LABELS), records, index,
        int(s.get("top_slices", 4)), int(s.get("min_positives", 5)), s, volumes, not args.no_saliency,
    )  # fmt: skip
    log.info("wrote %s:\n%s", args.out, table.to_string(index=False))


def _skipped(path: str, dataset: str) -> Any:
    """The dataset's studies that `ct25d slices` skipped (index rejected.csv: dataset, study_id, reason)."""
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table[table["dataset"] == dataset][["study_id", "reason"]]


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser(
        "predict", help="the fold models of the chosen approaches on an unlabelled (role predict) dataset"
    )
    p.add_argument("--dataset", required=True, help="the role-predict dataset's name")
    add_run_inputs(p)
    p.add_argument("--comparison", default=None, help="comparison.json (needed for `best`)")
    p.add_argument("--ingest", required=True, help="the dataset's ingest folder (results/<dataset>)")
    p.add_argument("--index", required=True, help="index/slices.parquet (slice positions and stores)")
    p.add_argument("--skipped", required=True, help="index/rejected.csv (studies without slices)")
    p.add_argument(
        "--settings",
        type=json_object,
        default={},
        help="config `predict` with the comparison's reference, labels and min_positives (JSON)",
    )
    p.add_argument("--volumes", help="volume index (index/volumes.parquet): a 3D net's saliency maps")
    p.add_argument("--no-saliency", action="store_true",
                   help="no Grad-CAM over the positive calls' top slices in their PNGs")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads (the saliency maps)")
    p.add_argument("--out", required=True, help="folder results/predictions/<dataset> (replaced)")
    p.set_defaults(func=cmd_predict)
