"""Time and peak memory of the whole comparison (`write_comparison`: tables, claims, findings, kappas
with the CQ500 readers, figures) at RSNA scale: 25k studies (internal in patient-level folds, two
external sets, one with CQ500 readers' calls), 750k slice predictions, 20 approaches.

Synthetic run folders are written in the format every trainer writes (`predictions_studies.parquet`
with the inner, validation and external splits, `predictions_slices.parquet`, `metrics.json`) and
read back by `load_runs`, once, under `benchmarks/out/compare_scale/<size>/`; the comparison runs
in a fresh process so that its peak RSS (`ru_maxrss`) is its own, not the generator's.

    .venv/bin/python benchmarks/compare_scale.py [--small] [--replicates 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ct25d.dicom.headers import pseudonym
from ct25d.evaluation.predictions import prediction_frame
from ct25d.labels import RSNA_LABELS, SUBTYPES

ROOT = Path(__file__).resolve().parents[1]
SALT = "bench"
# Study-level prevalence of each subtype (roughly RSNA's); `any` is their OR.
PREVALENCE = {"epidural": 0.01, "intraparenchymal": 0.06, "intraventricular": 0.04,
              "subarachnoid": 0.06, "subdural": 0.07}  # fmt: skip
SIZES = {
    "full": {"studies": 25_000, "slices": 750_000, "approaches": 20, "slice_approaches": 4, "folds": 5},
    "small": {"studies": 1_200, "slices": 24_000, "approaches": 4, "slice_approaches": 2, "folds": 3},
}


def cohort(studies: int, r: np.random.Generator) -> pd.DataFrame:
    """Studies with their patient, set and labels: 84% internal (`rsna`), 2% `cq500`, 14% `hospital`;
    1-3 studies per patient; CQ500 ids are the pseudonyms `reader_kappas` derives from reads.csv."""
    per_patient = r.choice([1, 1, 1, 2, 3], size=studies)
    patient = np.repeat(np.arange(studies), per_patient)[:studies]
    dataset = np.where(patient < 0.84 * patient.max(), "rsna", "hospital").astype(object)
    dataset[(patient >= 0.84 * patient.max()) & (patient < 0.86 * patient.max())] = "cq500"
    ids = [f"st-{i:06d}" for i in range(studies)]
    cq = np.flatnonzero(dataset == "cq500")
    for k, i in enumerate(cq):
        ids[i] = pseudonym(f"CQ500CT{k} CQ500CT{k}", SALT, "st-")
    frame = pd.DataFrame({"dataset": dataset, "study_id": ids, "patient_id": [f"p{p}" for p in patient]})
    for name, rate in PREVALENCE.items():
        frame[name] = (r.random(studies) < rate).astype(float)
    frame["any"] = frame[list(SUBTYPES)].max(axis=1)
    return frame


def write_runs(out: Path, size: dict[str, int], seed: int = 0) -> list[tuple[str, Path]]:
    """Every approach's run folders (one per fold), its slice predictions for the first
    `slice_approaches`; patients.parquet and the CQ500 reads.csv beside them."""
    r = np.random.default_rng(seed)
    studies = cohort(size["studies"], r)
    folds = size["folds"]
    internal = studies["dataset"] == "rsna"
    patient_fold = {p: i % folds for i, p in enumerate(r.permutation(studies["patient_id"].unique()))}
    studies["fold"] = np.where(internal, studies["patient_id"].map(patient_fold), -1)
    per_study = size["slices"] // size["studies"]
    truth = studies[list(RSNA_LABELS)].to_numpy()
    runs = []
    for a in range(size["approaches"]):
        quality = 0.5 + 1.5 * a / max(size["approaches"] - 1, 1)  # AUC from ~0.6 to ~0.9
        for fold in range(folds):
            folder = out / f"m{a}" / f"fold{fold}"
            inner_fold = (fold + 1) % folds  # the inner split: patients of another fold
            split = np.select(
                [studies["fold"] == fold, studies["fold"] == inner_fold, ~internal],
                ["validation", "inner", "external"],
                "train",
            )
            keep = split != "train"
            logits = quality * truth[keep] + r.normal(0, 1, truth[keep].shape) - 1
            keys = studies.loc[keep, ["dataset", "study_id"]].assign(split=split[keep])
            folder.mkdir(parents=True, exist_ok=True)
            frame = prediction_frame(keys, 1 / (1 + np.exp(-logits)), truth[keep], RSNA_LABELS)
            frame.to_parquet(folder / "predictions_studies.parquet")
            slices = pd.DataFrame({"dataset": [], "study_id": [], "z": [], "slice_id": []})
            slice_truth = slice_logits = np.zeros((0, len(RSNA_LABELS)))
            if a < size["slice_approaches"]:
                z = np.tile(np.arange(per_study), keep.sum())
                slices = pd.DataFrame(
                    {
                        "dataset": np.repeat(keys["dataset"].to_numpy(), per_study),
                        "study_id": np.repeat(keys["study_id"].to_numpy(), per_study),
                        "z": z,
                    }
                )
                slices["slice_id"] = slices["study_id"] + "-" + slices["z"].astype(str)
                lesion = (z >= per_study // 3) & (z < per_study // 2)  # a positive study's bleeding slices
                slice_truth = np.repeat(truth[keep], per_study, axis=0) * lesion[:, None]
                slice_logits = quality * slice_truth + r.normal(0, 1, slice_truth.shape) - 2
            prediction_frame(slices, 1 / (1 + np.exp(-slice_logits)), slice_truth, RSNA_LABELS).to_parquet(
                folder / "predictions_slices.parquet"
            )
            (folder / "metrics.json").write_text(
                json.dumps({"fold": fold, "results": {f"validation/rsna/volume/m{a}": {}}, "parameters": 10})
            )
            runs.append((f"r10:m{a}", folder / "metrics.json"))
    studies[["dataset", "study_id", "patient_id"]].to_parquet(out / "patients.parquet")
    cq = studies[studies["dataset"] == "cq500"]
    reads = pd.DataFrame({"name": [f"CQ500-CT-{k}" for k in range(len(cq))]})
    for reader, flip in (
        ("R1", 0.05),
        ("R2", 0.08),
        ("R3", 0.1),
    ):  # each reader disagrees with the truth a little
        reads[f"{reader}:ICH"] = np.abs(cq["any"].to_numpy() - (r.random(len(cq)) < flip)).astype(int)
    reads.to_csv(out / "reads.csv", index=False)
    (out / "runs.json").write_text(json.dumps([[name, str(path)] for name, path in runs]))
    return runs


def measure(out: Path, replicates: int) -> dict[str, float]:
    """Run the comparison in this process: its wall and CPU seconds (CPU is what a loaded machine does
    not inflate), peak RSS (GB) and the slice rows it read."""
    from ct25d.report.compare import write_comparison

    runs = [(name, Path(path)) for name, path in json.loads((out / "runs.json").read_text())]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before, cpu_before = usage.ru_maxrss / 2**20, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    claims = [{"claim": "last beats first", "better": runs[-1][0], "than": runs[0][0]}]
    write_comparison(
        [],
        runs,
        out / "comparison",
        replicates=replicates,
        readers={"cq500": out / "reads.csv"},
        salt=SALT,
        claims=claims,
        patients=out / "patients.parquet",
        reference=runs[0][0],
    )
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 2**20
    slice_rows = sum(
        pq.read_metadata(path.parent / "predictions_slices.parquet").num_rows for _, path in runs
    )
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    return {"seconds": seconds, "cpu": cpu, "peak_gb": peak, "import_gb": before, "slice_rows": slice_rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--small", action="store_true", help="a quick smoke run (1,200 studies, 4 approaches)"
    )
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (config default)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's folder
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.replicates)))
        return
    name = "small" if args.small else "full"
    size = SIZES[name]
    out = ROOT / "benchmarks" / "out" / "compare_scale" / name
    if not (out / "runs.json").is_file():
        write_runs(out, size)
    command = [sys.executable, __file__, "--measure", str(out), "--replicates", str(args.replicates)]
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        sys.exit(f"the comparison failed:\n{child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        "| studies | slices | approaches x folds | slice rows read | replicates | write_comparison s "
        "| CPU s | peak RSS GB | RSS after imports GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {size['studies']:,} | {size['slices']:,} | {size['approaches']} x {size['folds']} "
        f"| {result['slice_rows']:,} ({size['slice_approaches']} approaches) | {args.replicates} "
        f"| {result['seconds']:.1f} | {result['cpu']:.1f} | {result['peak_gb']:.2f} "
        f"| {result['import_gb']:.2f} |"
    )


if __name__ == "__main__":
    main()
