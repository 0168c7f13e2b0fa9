"""Subcommands of the bundle stage: export (chosen approaches as portable bundles) and
predict-bundle (a bundle on a DICOM folder, no workflow needed)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ct25d.cli.common import add_run_inputs, json_object

log = logging.getLogger("ct25d")


def cmd_export(args: argparse.Namespace) -> None:
    from ct25d.bundle.export import export_bundles
    from ct25d.labels import RSNA_LABELS
    from ct25d.predict.ensemble import choose_approaches
    from ct25d.report.compare import load_runs

    s = args.settings
    runs = load_runs(args.stage1, args.stage2, args.baselines)
    chosen = choose_approaches(list(s.get("approaches") or ["reference"]), runs, s.get("reference"),
                               args.comparison)  # fmt: skip
    comparison = json.loads(Path(args.comparison).read_text()) if args.comparison else None
    exported = export_bundles(args.out, runs, chosen, s, comparison, list(s.get("labels") or RSNA_LABELS),
                              int(s.get("min_positives", 5)))  # fmt: skip
    for one in exported:
        log.info("bundle %s: %s", one["name"], one["description"])


def cmd_predict_bundle(args: argparse.Namespace) -> None:
    from ct25d.bundle.run import predict_bundle

    archive = {k: v for k, v in (("layout", args.layout), ("label_key", args.label_key),
                                 ("folder_pattern", args.folder_pattern)) if v is not None}  # fmt: skip
    table = predict_bundle(args.bundle, args.dicom_dir, args.out, args.dataset, archive, args.salt,
                           args.workers, args.device)  # fmt: skip
    shown = [c for c in ("study_id", "name", "prob_any", "call_any", "problem") if c in table]
    log.info("wrote %s:\n%s", args.out, table[shown].to_string(index=False))


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("export", help="the chosen approaches' fold models as portable bundles (MONAI layout)")
    add_run_inputs(p)
    p.add_argument("--comparison", default=None, help="comparison.json (the card's metrics)")
    p.add_argument(
        "--settings",
        type=json_object,
        required=True,
        help="config `bundle` with reference, labels, min_positives, ingest, preprocess and archive (JSON)",
    )
    p.add_argument("--out", required=True, help="folder results/bundles (replaced): one bundle per approach")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict-bundle", help="a bundle's fold models on a folder of DICOM files")
    p.add_argument("bundle", help="a bundle folder written by `ct25d export`")
    p.add_argument("dicom_dir", help="folder of DICOM files, one or more studies")
    p.add_argument("out", help="output folder (replaced): studies.csv, slices.parquet, one PNG per study")
    p.add_argument("--dataset", default=None, help="the name the outputs give the folder (default its name)")
    p.add_argument(
        "--layout",
        choices=["rsna", "cq500", "dicom_tree"],
        default=None,
        help="archive form (default the bundle's: the training run's role-predict dataset)",
    )
    p.add_argument(
        "--label-key",
        choices=["StudyInstanceUID", "folder"],
        default=None,
        help="dicom_tree: a study is a StudyInstanceUID or a folder matched by --folder-pattern",
    )
    p.add_argument("--folder-pattern", default=None, help="dicom_tree with --label-key folder: the regex")
    p.add_argument(
        "--salt",
        default="ct25d-bundle",
        help="key of the study pseudonyms (HMAC); the bundle does not carry the training site's",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    p.set_defaults(func=cmd_predict_bundle)
