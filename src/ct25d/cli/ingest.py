"""Subcommands of the ingest stage: synth, scan, ingest, ingest-report."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ct25d.cli.common import json_object, require
from ct25d.dicom.series import GeometryRules
from ct25d.errors import ConfigError, Ct25dError

log = logging.getLogger("ct25d")


def cmd_synth(args: argparse.Namespace) -> None:
    from ct25d.synth.cohort import generate_cohort

    summary = generate_cohort(args.out, args.layout, args.dataset, args.synthetic, workers=args.workers)
    log.info(
        "wrote %d studies, %d files (%d broken studies) to %s",
        summary.n_studies,
        summary.n_files,
        summary.n_broken,
        summary.out_dir,
    )


def geometry_rules(settings: dict) -> GeometryRules:
    """The series geometry rules from config `ingest`."""
    try:
        return GeometryRules(
            spacing_tolerance=float(require(settings, "spacing_tolerance", "ingest")),
            max_tilt_deg=float(require(settings, "max_tilt_deg", "ingest")),
            tilt=str(require(settings, "tilt", "ingest")),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def cmd_scan(args: argparse.Namespace) -> None:
    from ct25d.atomic import write_csv, write_json, write_parquet
    from ct25d.dicom.labelling import LabelSource
    from ct25d.dicom.scan import NothingToConvert, ScanSettings, scan_archive
    from ct25d.provenance import stamp

    s, d = args.settings, args.dataset
    settings = ScanSettings(
        preferred_thickness_mm=float(require(s, "preferred_thickness_mm", "ingest")),
        exclude_series=str(require(s, "exclude_series", "ingest")),
        pseudonym_salt=str(require(s, "pseudonym_salt", "ingest")),
        geometry=geometry_rules(s),
        accept_series=tuple(require(s, "accept_series", "ingest")),
        min_label_match=float(require(s, "min_label_match", "ingest")),
    )
    source = LabelSource(
        layout=str(require(d, "layout", "datasets.<name>")),
        path=Path(args.labels) if args.labels not in (None, "-") else None,
        role=str(require(d, "role", "datasets.<name>")),
        key=str(d.get("label_key", "StudyInstanceUID")),
        folder_pattern=str(d.get("folder_pattern", LabelSource.folder_pattern)),
    )
    out = Path(args.out)
    try:
        result = scan_archive(args.root, source, args.shards, settings, args.workers, args.override)
    except NothingToConvert as exc:
        report = out / "rejected_files.csv"
        write_csv(report, exc.rejected)
        raise Ct25dError(f"{exc}. Each file's reason is in the log above and in {report}") from exc
    meta = stamp("scan", {"shards": args.shards, "dataset": d, **s})
    write_parquet(out / "files.parquet", result.files, meta)
    write_parquet(out / "series.parquet", result.series, meta)
    write_parquet(out / "studies.parquet", result.studies, meta)
    write_csv(out / "rejected_files.csv", result.rejected)
    write_json(out / "label_match.json", result.label_match)
    write_json(out / "settings.json", meta)
    log.info(
        "scanned %d files (%d rejected), %d series, %d studies",
        len(result.files) + len(result.rejected),
        len(result.rejected),
        len(result.series),
        len(result.studies),
    )


def cmd_ingest(args: argparse.Namespace) -> None:
    import pandas as pd

    from ct25d.atomic import write_csv, write_parquet
    from ct25d.provenance import stamp
    from ct25d.volumes.ingest import ingest_shard
    from ct25d.volumes.store import HUCodec

    s = args.settings
    scan = Path(args.scan)
    studies = pd.read_parquet(scan / "studies.parquet")
    studies = studies[studies["shard"] == args.shard]
    files = pd.read_parquet(scan / "files.parquet")
    series = pd.read_parquet(scan / "series.parquet")
    # Same tolerances the scan used to rank the series (a change to them reruns the scan first).
    rules = geometry_rules(json.loads((scan / "settings.json").read_text())["settings"])
    meta = stamp("ingest", {"shard": args.shard, **s})
    prefix = Path(args.out_prefix)
    volumes, slices, rejections = ingest_shard(
        args.root,
        files[files["study_id"].isin(studies["study_id"])],
        series,
        studies,
        f"{prefix}.zarr",
        meta,
        rules,
        HUCodec.from_settings(s),
        args.workers,
    )
    write_parquet(f"{prefix}.volumes.parquet", volumes, meta)
    write_parquet(f"{prefix}.slices.parquet", slices, meta)
    write_csv(f"{prefix}.rejections.csv", rejections)
    log.info(
        "shard %d: %d studies converted, %d rejected",
        args.shard,
        len(volumes),
        int((rejections["level"] == "study").sum()),
    )


def cmd_ingest_report(args: argparse.Namespace) -> None:
    from ct25d.atomic import write_csv, write_json, write_parquet
    from ct25d.provenance import stamp
    from ct25d.volumes.report import gather

    report = gather(args.scan, args.shards)
    meta = stamp("ingest-report", {"shards": len(args.shards)})
    out = Path(args.out)
    write_parquet(out / "manifest.parquet", report["manifest"], meta)
    write_parquet(out / "slices.parquet", report["slices"], meta)
    write_parquet(out / "file_outcomes.parquet", report["file_outcomes"], meta)
    write_csv(out / "rejections.csv", report["rejections"])
    write_csv(out / "series_choice.csv", report["series_choice"])
    write_json(out / "ingest_summary.json", {**meta, "counts": report["counts"]})
    log.info("%s", json.dumps(report["counts"]))


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""

    p = sub.add_parser("synth", help="generate a synthetic head-CT cohort as real DICOM in an archive layout")
    p.add_argument("--layout", choices=["rsna", "cq500", "dicom_tree"], required=True)
    p.add_argument("--out", required=True, help="folder to create (replaced atomically)")
    p.add_argument("--dataset", type=json_object, required=True, help="datasets.<name>.synthetic (JSON)")
    p.add_argument("--synthetic", type=json_object, required=True, help="config `synthetic` (JSON)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("scan", help="scan a DICOM archive's headers into file/series/study tables")
    p.add_argument("--root", required=True)
    p.add_argument(
        "--dataset",
        type=json_object,
        required=True,
        help="{layout, role[, label_key, folder_pattern]} of config `datasets.<name>` (JSON)",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="stage_2_train.csv (rsna), reads.csv (cq500), a study CSV (dicom_tree); - or none: role predict",
    )
    p.add_argument("--override", default=None, help="CSV study,series: the series to use for those studies")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--settings", type=json_object, required=True, help="config `ingest` (JSON)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("ingest", help="convert one shard of studies to int16 HU volumes in zarr")
    p.add_argument("--root", required=True)
    p.add_argument("--scan", required=True, help="folder written by `ct25d scan`")
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--settings", type=json_object, required=True, help="config `ingest` (JSON)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--out-prefix", required=True, help="writes PREFIX.zarr, .volumes/.slices.parquet, .rejections.csv"
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ingest-report", help="gather shards into a manifest and reconcile the counts")
    p.add_argument("--scan", required=True)
    p.add_argument("--shards", nargs="+", required=True, help="shard output prefixes")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_ingest_report)
